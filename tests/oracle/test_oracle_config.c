/* test_oracle_config.c: the oracles' settings from JSON (oracle/config.c): overrides on top of the
 * defaults, unknown keys, wrong types and invalid values named with their source. */
#include "test_helpers.h"

#include "json_util.h"
#include "oracle.h"

static json_t *parse(const char *text) {
    json_t *j = NULL;
    duel_error err;
    if (duel_json_parse(text, strlen(text), "test", &j, &err)) fail_msg("%s", err.message);
    return j;
}

static void test_lexical(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    json_t *j = parse("{\"length_weight\": 0.5, \"repetition_weight\": 0}");
    duel_error err;
    assert_int_equal(oracle_lexical_config_from_json(j, "oracle.lexical", &c, &err), 0);
    json_decref(j);
    assert_true(c.length_weight == 0.5 && c.repetition_weight == 0.0);
    assert_true(c.overlap_weight == 1.0 && c.length_target_ratio == 2.0); /* defaults kept */
    struct { const char *text; const char *needle; } bad[] = {
        {"{\"length_wieght\": 1}", "oracle.lexical: unknown key \"length_wieght\""},
        {"{\"length_weight\": \"1\"}", "oracle.lexical: \"length_weight\" must be a number"},
        {"{\"length_weight\": -1}", "oracle.lexical: lexical oracle: length_weight -1"},
        {"{\"length_target_ratio\": 0}", "length_target_ratio"},
        {"[1]", "oracle.lexical: must be a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        oracle_lexical_config before = c;
        j = parse(bad[i].text);
        assert_true(oracle_lexical_config_from_json(j, "oracle.lexical", &c, &err) < 0);
        json_decref(j);
        if (!strstr(err.message, bad[i].needle)) fprintf(stderr, "%s\n", err.message);
        assert_non_null(strstr(err.message, bad[i].needle));
        assert_memory_equal(&before, &c, sizeof c); /* untouched on failure */
    }
}

static void test_preference(void **state) {
    (void)state;
    oracle_preference_config c;
    oracle_preference_config_default(&c);
    duel_error err;
    json_t *j = parse("{\"stochastic\": true, \"temperature\": 0.25}");
    assert_int_equal(oracle_preference_config_from_json(j, "oracle.preference", &c, &err), 0);
    json_decref(j);
    assert_true(c.stochastic && c.temperature == 0.25);
    j = parse("{\"temperature\": 0}");
    assert_int_equal(oracle_preference_config_from_json(j, "oracle.preference", &c, &err),
                     DUEL_EFORMAT);
    json_decref(j);
    assert_true(c.temperature == 0.25);
    j = parse("{\"stochastic\": 1}");
    assert_int_equal(oracle_preference_config_from_json(j, "oracle.preference", &c, &err),
                     DUEL_EFORMAT);
    json_decref(j);
    assert_non_null(strstr(err.message, "true or false"));
}

static void test_judge(void **state) {
    (void)state;
    oracle_judge_config c;
    oracle_judge_config_default(&c);
    duel_error err;
    json_t *j = parse("{\"url\": \"http://10.0.0.2:8080/v1/chat/completions\", \"model\": "
                      "\"qwen2.5-7b\", \"max_attempts\": 5, \"both_orders\": true, "
                      "\"temperature\": 0.2}");
    assert_int_equal(oracle_judge_config_from_json(j, "oracle.judge", &c, &err), 0);
    json_decref(j);
    assert_string_equal(c.url, "http://10.0.0.2:8080/v1/chat/completions");
    assert_string_equal(c.model, "qwen2.5-7b");
    assert_int_equal(c.max_attempts, 5);
    assert_true(c.both_orders && c.temperature == 0.2);
    assert_int_equal(c.read_timeout_ms, 60000);
    const char *bad[] = {"{\"api_key\": \"sk-1\"}", "{\"url\": \"https://x/v1\"}",
                         "{\"max_attempts\": 0}", "{\"read_timeout_ms\": 1.5}",
                         "{\"max_tokens\": 99999999999}"};
    for (size_t i = 0; i < 5; i++) {
        j = parse(bad[i]);
        assert_true(oracle_judge_config_from_json(j, "oracle.judge", &c, &err) < 0);
        json_decref(j);
        assert_non_null(strstr(err.message, "oracle.judge"));
        assert_int_equal(c.max_attempts, 5);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lexical),
        cmocka_unit_test(test_preference),
        cmocka_unit_test(test_judge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
