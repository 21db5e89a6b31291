/* test_protocol.c: the duel.v1 parser (gateway/protocol.c): every error code it produces,
 * duplicate keys, unknown fields, wrong types, invalid UTF-8, oversize frames, and the server
 * frames' encoding. */
#include "test_helpers.h"

#include <jansson.h>

#include "protocol.h"

static const protocol_limits LIMITS = {16384, 4000};
static const char ID[] = "0123456789abcdef0123456789abcdef";

static protocol_error_code parse(const char *s, protocol_msg *m) {
    char detail[256];
    protocol_error_code rc = protocol_parse(s, strlen(s), &LIMITS, m, detail, sizeof detail);
    if (rc != PROTOCOL_OK) assert_true(strlen(detail) > 0);
    return rc;
}

static void expect(const char *s, protocol_error_code code) {
    protocol_msg m;
    protocol_error_code rc = parse(s, &m);
    if (rc != code)
        fail_msg("%s: expected %s, got %s", s, protocol_error_name(code), protocol_error_name(rc));
    protocol_msg_clear(&m);
}

static void test_valid_messages(void **state) {
    (void)state;
    protocol_msg m;
    assert_int_equal(parse("{\"type\":\"hello\"}", &m), PROTOCOL_OK);
    assert_int_equal(m.type, PROTOCOL_MSG_HELLO);
    assert_false(m.has_conversation);
    protocol_msg_clear(&m);
    assert_int_equal(parse("{\"type\":\"hello\",\"conversation\":null}", &m), PROTOCOL_OK);
    assert_false(m.has_conversation);
    protocol_msg_clear(&m);
    char buf[128];
    snprintf(buf, sizeof buf, "{\"conversation\":\"%s\",\"type\":\"hello\"}", ID);
    assert_int_equal(parse(buf, &m), PROTOCOL_OK);
    assert_true(m.has_conversation);
    assert_string_equal(m.conversation, ID);
    assert_false(m.has_client);
    protocol_msg_clear(&m);
    /* the page's stable client id (the A/B router's key) */
    snprintf(buf, sizeof buf, "{\"type\":\"hello\",\"client\":\"%s\"}", ID);
    assert_int_equal(parse(buf, &m), PROTOCOL_OK);
    assert_true(m.has_client);
    assert_string_equal(m.client, ID);
    protocol_msg_clear(&m);
    expect("{\"type\":\"hello\",\"client\":\"XYZ\"}", PROTOCOL_E_BAD_VALUE);
    expect("{\"type\":\"hello\",\"client\":7}", PROTOCOL_E_WRONG_TYPE);

    assert_int_equal(parse("{\"type\":\"ask\",\"text\":\"caf\\u00e9 \xe2\x98\x95\"}", &m),
                     PROTOCOL_OK);
    assert_int_equal(m.type, PROTOCOL_MSG_ASK);
    assert_string_equal(m.text, "caf\xc3\xa9 \xe2\x98\x95");
    assert_int_equal(m.text_len, strlen("caf\xc3\xa9 \xe2\x98\x95"));
    protocol_msg_clear(&m);

    const char *choices[] = {"a", "b", "tie", "both_bad"};
    for (int c = 0; c < 4; c++) {
        snprintf(buf, sizeof buf, "{\"type\":\"vote\",\"duel\":\"%s\",\"choice\":\"%s\"}", ID,
                 choices[c]);
        assert_int_equal(parse(buf, &m), PROTOCOL_OK);
        assert_int_equal(m.type, PROTOCOL_MSG_VOTE);
        assert_int_equal((int)m.choice, c);
        assert_string_equal(m.duel, ID);
        assert_string_equal(vote_choice_name(m.choice), choices[c]);
        protocol_msg_clear(&m);
    }
    assert_int_equal(parse(" {\"type\" : \"cancel\"}\n", &m), PROTOCOL_OK);
    assert_int_equal(m.type, PROTOCOL_MSG_CANCEL);
    protocol_msg_clear(&m);
}

static void test_syntax_errors(void **state) {
    (void)state;
    expect("", PROTOCOL_E_BAD_JSON);
    expect("{", PROTOCOL_E_BAD_JSON);
    expect("{\"type\":\"hello\"} x", PROTOCOL_E_BAD_JSON);
    expect("{\"type\":'hello'}", PROTOCOL_E_BAD_JSON);
    expect("{\"type\":\"a\\u0000b\"}", PROTOCOL_E_BAD_JSON); /* NUL inside a string */
    expect("[1,2]", PROTOCOL_E_NOT_OBJECT);
    expect("\"hello\"", PROTOCOL_E_NOT_OBJECT);
    expect("42", PROTOCOL_E_NOT_OBJECT);
    expect("null", PROTOCOL_E_NOT_OBJECT);
    expect("{\"type\":\"ask\",\"text\":\"a\",\"text\":\"b\"}", PROTOCOL_E_DUPLICATE_KEY);
    expect("{\"type\":\"hello\",\"type\":\"hello\"}", PROTOCOL_E_DUPLICATE_KEY);
    /* Duplicates in nested objects are rejected too. */
    expect("{\"type\":\"hello\",\"conversation\":{\"x\":1,\"x\":2}}", PROTOCOL_E_DUPLICATE_KEY);
}

static void test_utf8_and_size(void **state) {
    (void)state;
    protocol_msg m;
    char detail[256];
    const char overlong[] = "{\"type\":\"ask\",\"text\":\"\xc0\xaf\"}";
    assert_int_equal(protocol_parse(overlong, sizeof overlong - 1, &LIMITS, &m, detail,
                                    sizeof detail),
                     PROTOCOL_E_BAD_UTF8);
    assert_non_null(strstr(detail, "byte 22"));
    const char surrogate[] = "{\"type\":\"ask\",\"text\":\"\xed\xa0\x80\"}";
    assert_int_equal(protocol_parse(surrogate, sizeof surrogate - 1, &LIMITS, &m, NULL, 0),
                     PROTOCOL_E_BAD_UTF8);
    const char truncated[] = "{\"type\":\"ask\",\"text\":\"\xe2\x98\"}";
    assert_int_equal(protocol_parse(truncated, sizeof truncated - 1, &LIMITS, &m, NULL, 0),
                     PROTOCOL_E_BAD_UTF8);
    const char bad_key[] = "{\"typ\xff\":\"ask\"}";
    assert_int_equal(protocol_parse(bad_key, sizeof bad_key - 1, &LIMITS, &m, NULL, 0),
                     PROTOCOL_E_BAD_UTF8);
    /* Escaped lone surrogates are invalid JSON text for jansson. */
    expect("{\"type\":\"ask\",\"text\":\"\\ud800\"}", PROTOCOL_E_BAD_JSON);

    /* Oversize: one byte over the frame limit. */
    size_t n = LIMITS.max_frame_bytes + 1;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, ' ', n);
    memcpy(big, "{\"type\":\"hello\"}", 16);
    big[n] = '\0';
    assert_int_equal(protocol_parse(big, n, &LIMITS, &m, detail, sizeof detail),
                     PROTOCOL_E_TOO_LARGE);
    assert_non_null(strstr(detail, "16384"));
    /* Exactly at the limit is fine. */
    assert_int_equal(protocol_parse(big, n - 1, &LIMITS, &m, NULL, 0), PROTOCOL_OK);
    protocol_msg_clear(&m);
    free(big);

    /* Ask text over max_ask_bytes (but frame under the limit). */
    char *ask = malloc(5000);
    assert_non_null(ask);
    int k = snprintf(ask, 5000, "{\"type\":\"ask\",\"text\":\"");
    memset(ask + k, 'x', 4001);
    strcpy(ask + k + 4001, "\"}");
    expect(ask, PROTOCOL_E_TEXT_TOO_LONG);
    strcpy(ask + k + 4000, "\"}");
    expect(ask, PROTOCOL_OK);
    free(ask);
}

static void test_structure_errors(void **state) {
    (void)state;
    expect("{}", PROTOCOL_E_MISSING_TYPE);
    expect("{\"text\":\"hi\"}", PROTOCOL_E_MISSING_TYPE);
    expect("{\"type\":1}", PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":null}", PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":\"HELLO\"}", PROTOCOL_E_UNKNOWN_TYPE);
    expect("{\"type\":\"welcome\"}", PROTOCOL_E_UNKNOWN_TYPE);
    expect("{\"type\":\"\"}", PROTOCOL_E_UNKNOWN_TYPE);
    expect("{\"type\":\"hello\",\"extra\":1}", PROTOCOL_E_UNKNOWN_FIELD);
    expect("{\"type\":\"ask\",\"text\":\"hi\",\"duel\":\"x\"}", PROTOCOL_E_UNKNOWN_FIELD);
    expect("{\"type\":\"cancel\",\"duel\":\"x\"}", PROTOCOL_E_UNKNOWN_FIELD);
    expect("{\"type\":\"ask\"}", PROTOCOL_E_MISSING_FIELD);
    expect("{\"type\":\"vote\",\"choice\":\"a\"}", PROTOCOL_E_MISSING_FIELD);
    expect("{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdef\"}",
           PROTOCOL_E_MISSING_FIELD);
    expect("{\"type\":\"ask\",\"text\":5}", PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":\"ask\",\"text\":null}", PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":\"ask\",\"text\":[\"hi\"]}", PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":\"hello\",\"conversation\":7}", PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":\"vote\",\"duel\":1,\"choice\":\"a\"}", PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdef\",\"choice\":true}",
           PROTOCOL_E_WRONG_TYPE);
    expect("{\"type\":\"hello\",\"conversation\":\"abc\"}", PROTOCOL_E_BAD_VALUE);
    expect("{\"type\":\"hello\",\"conversation\":\"0123456789ABCDEF0123456789ABCDEF\"}",
           PROTOCOL_E_BAD_VALUE);
    expect("{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdeg\",\"choice\":\"a\"}",
           PROTOCOL_E_BAD_VALUE);
    expect("{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdef\",\"choice\":\"A\"}",
           PROTOCOL_E_BAD_VALUE);
    expect("{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdef\",\"choice\":\"c\"}",
           PROTOCOL_E_BAD_VALUE);
    expect("{\"type\":\"ask\",\"text\":\"\"}", PROTOCOL_E_EMPTY_TEXT);
    expect("{\"type\":\"ask\",\"text\":\" \\n\\t \"}", PROTOCOL_E_EMPTY_TEXT);
}

static void test_error_names_are_distinct(void **state) {
    (void)state;
    for (int a = 1; a < PROTOCOL_E_COUNT; a++) {
        const char *na = protocol_error_name((protocol_error_code)a);
        assert_non_null(na);
        assert_string_not_equal(na, "ok");
        for (int b = a + 1; b < PROTOCOL_E_COUNT; b++)
            assert_string_not_equal(na, protocol_error_name((protocol_error_code)b));
    }
    assert_string_equal(protocol_error_name((protocol_error_code)999), "internal");
}

static json_t *load(char *s) {
    json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, NULL);
    free(s);
    assert_non_null(j);
    return j;
}

static void test_encoding(void **state) {
    (void)state;
    size_t len = 0;
    char *s = protocol_encode_delta(ID, 'b', "he said \"hi\"\n", 13, &len);
    assert_int_equal(len, strlen(s));
    json_t *j = load(s);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "delta");
    assert_string_equal(json_string_value(json_object_get(j, "side")), "b");
    assert_string_equal(json_string_value(json_object_get(j, "text")), "he said \"hi\"\n");
    json_decref(j);

    j = load(protocol_encode_vote_ok(ID, true, &len));
    assert_true(json_is_true(json_object_get(j, "queued")));
    json_decref(j);
    j = load(protocol_encode_vote_ok(ID, false, &len));
    assert_null(json_object_get(j, "queued"));
    json_decref(j);
    j = load(protocol_encode_error(PROTOCOL_E_RATE_LIMITED, "slow down", &len));
    assert_string_equal(json_string_value(json_object_get(j, "code")), "rate_limited");
    json_decref(j);
    j = load(protocol_encode_duel_end(ID, true, &len));
    assert_true(json_is_true(json_object_get(j, "cancelled")));
    json_decref(j);

    const char *users[] = {"q1"}, *answers[] = {"a1"};
    protocol_welcome_limits lim = {16384, 4000, 20, 32};
    j = load(protocol_encode_welcome(ID, &lim, true, users, answers, 1, false, &len));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "limits"),
                                                        "max_frame_bytes")),
                     16384);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(j, "history"), 0), "assistant")),
                        "a1");
    assert_null(json_object_get(j, "test_backend")); /* a model's answers: nothing to say */
    json_decref(j);
    j = load(protocol_encode_welcome(ID, &lim, false, NULL, NULL, 0, true, &len));
    assert_true(json_is_true(json_object_get(j, "test_backend")));
    json_decref(j);
}

/* An unknown field's name is quoted cut at 40 bytes, which can split a character: the error
 * frame must still be built (found by fuzz_protocol; it used to be NULL, so no frame went out). */
static void test_error_detail_cut_mid_character(void **state) {
    (void)state;
    char msg[256] = "{\"type\":\"cancel\",\"x"; /* 1 + 2k bytes: 40 ends inside one */
    for (int i = 0; i < 30; i++) strcat(msg, "\xc3\xa9"); /* 60 bytes of e-acute */
    strcat(msg, "\":1}");
    protocol_limits lim = {16384, 4000};
    protocol_msg m;
    char detail[256];
    assert_int_equal(protocol_parse(msg, strlen(msg), &lim, &m, detail, sizeof detail),
                     PROTOCOL_E_UNKNOWN_FIELD);
    size_t len = 0;
    char *frame = protocol_encode_error(PROTOCOL_E_UNKNOWN_FIELD, detail, &len);
    assert_non_null(frame);
    json_t *j = json_loads(frame, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "unknown_field");
    json_decref(j);
    free(frame);
}

static void test_sanitize(void **state) {
    (void)state;
    size_t n;
    /* One U+FFFD per maximal subpart, as the CLI and the tokenizer (common/utf8.h): the cut-off
     * "\xe2\x98" at the end is one (this gateway used to write one per byte). */
    char *s = protocol_sanitize_utf8("ok\xff\xc3\xa9\xe2\x98", 7, &n);
    assert_string_equal(s, "ok\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd");
    assert_int_equal(n, strlen(s));
    free(s);
    s = protocol_sanitize_utf8("a\0b", 3, &n); /* NUL would cut C strings: replaced */
    assert_int_equal(n, 5);
    free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_messages),   cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_utf8_and_size),    cmocka_unit_test(test_structure_errors),
        cmocka_unit_test(test_error_names_are_distinct), cmocka_unit_test(test_encoding),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_error_detail_cut_mid_character),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
