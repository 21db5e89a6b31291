/* test_json_util.c: strict parsing and typed getters (common/json_util.c), bad paths included. */
#include "json_util.h"
#include "test_helpers.h"

static json_t *parse_ok(const char *text) {
    json_t *j = NULL;
    duel_error err = {0};
    assert_int_equal(duel_json_parse(text, strlen(text), "t.json", &j, &err), 0);
    return j;
}

static void test_duplicate_keys_and_syntax_errors(void **state) {
    (void)state;
    json_t *j = NULL;
    duel_error err = {0};
    const char *dup = "{\"a\": 1, \"a\": 2}";
    assert_int_equal(duel_json_parse(dup, strlen(dup), "dup.json", &j, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "dup.json"));
    const char *bad = "{\"a\": 1,\n \"b\": }";
    assert_int_equal(duel_json_parse(bad, strlen(bad), "bad.json", &j, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "line 2"));
}

static void test_int_getter(void **state) {
    (void)state;
    json_t *j = parse_ok("{\"n\": 7, \"r\": 3.0, \"f\": 2.5, \"huge\": 1e300, \"s\": \"x\", \"neg\": -5}");
    duel_error err = {0};
    long long v = -1;
    assert_int_equal(duel_json_get_int(j, "n", 0, 10, &v, "t.json", &err), 0);
    assert_int_equal(v, 7);
    assert_int_equal(duel_json_get_int(j, "r", 0, 10, &v, "t.json", &err), 0);
    assert_int_equal(v, 3);
    assert_int_equal(duel_json_get_int(j, "f", 0, 10, &v, "t.json", &err), DUEL_EFORMAT);
    assert_int_equal(duel_json_get_int(j, "huge", 0, 10, &v, "t.json", &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "\"huge\""));
    assert_int_equal(duel_json_get_int(j, "s", 0, 10, &v, "t.json", &err), DUEL_EFORMAT);
    assert_int_equal(duel_json_get_int(j, "neg", 0, 10, &v, "t.json", &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "outside"));
    v = 42;
    assert_int_equal(duel_json_get_int(j, "absent", 0, 10, &v, "t.json", &err), 0);
    assert_int_equal(v, 42);
    json_decref(j);
}

static void test_other_getters(void **state) {
    (void)state;
    json_t *j = parse_ok("{\"d\": 1.5, \"b\": true, \"s\": \"hello\", \"n\": null}");
    duel_error err = {0};
    double d = 0;
    bool b = false;
    char buf[6];
    assert_int_equal(duel_json_get_double(j, "d", &d, "t", &err), 0);
    assert_true(d == 1.5);
    assert_int_equal(duel_json_get_double(j, "s", &d, "t", &err), DUEL_EFORMAT);
    assert_int_equal(duel_json_get_bool(j, "b", &b, "t", &err), 0);
    assert_true(b);
    assert_int_equal(duel_json_get_bool(j, "d", &b, "t", &err), DUEL_EFORMAT);
    assert_int_equal(duel_json_get_string(j, "s", buf, sizeof buf, "t", &err), 0);
    assert_string_equal(buf, "hello");
    char small[5];
    assert_int_equal(duel_json_get_string(j, "s", small, sizeof small, "t", &err), DUEL_ELIMIT);
    assert_int_equal(duel_json_get_bool(j, "n", &b, "t", &err), 0); /* null = absent */
    json_decref(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicate_keys_and_syntax_errors),
        cmocka_unit_test(test_int_getter),
        cmocka_unit_test(test_other_getters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
