/* test_user.c: simulated users (oracle/prompt_set.c, oracle/user.c): prompt sets in JSONL with
 * their reference data (single prompts, sessions, WordNet's key names, every malformed line
 * named by file and line), the oracle section read strictly, the checks that run before any
 * work, votes by the lexical oracle through the noise model, think-time specs and their
 * distributions' means, session lengths. */
#include "test_helpers.h"

#include "oracle.h"

static char g_dir[512];

static const char *write_set(const char *name, const char *text) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    test_write_file(path, text, strlen(text));
    return path;
}

static int setup(void **state) {
    (void)state;
    test_make_temp_dir("oracle-user", g_dir, sizeof g_dir);
    return 0;
}

static void test_prompt_set(void **state) {
    (void)state;
    const char *path = write_set("ok.jsonl",
                                 "{\"prompt\": \"Define tea.\", \"reference\": \"a beverage\"}\n"
                                 "\n"
                                 "{\"prompt\": \"What does cat mean?\", \"gloss\": \"a feline\", \"headword\": \"cat\"}\n"
                                 "{\"turns\": [{\"prompt\": \"Hi\", \"response\": \"hello\"}, {\"prompt\": \"More\"}]}\n"
                                 "{\"prompt\": \"no reference\"}\n");
    oracle_prompt_set s;
    duel_error err = {0};
    assert_int_equal(oracle_prompt_set_load(path, 100, false, &s, &err), 0);
    assert_int_equal(s.count, 4);
    assert_string_equal(s.items[0].turns[0].prompt, "Define tea.");
    assert_string_equal(s.items[0].turns[0].reference, "a beverage");
    assert_int_equal(s.items[1].line, 3);
    assert_string_equal(s.items[1].turns[0].reference, "a feline");
    assert_int_equal(s.items[2].num_turns, 2);
    assert_string_equal(s.items[2].turns[0].reference, "hello");
    assert_null(s.items[2].turns[1].reference);
    assert_null(s.items[3].turns[0].reference);
    oracle_prompt_set_free(&s);
    /* max_items */
    assert_int_equal(oracle_prompt_set_load(path, 2, false, &s, &err), 0);
    assert_int_equal(s.count, 2);
    oracle_prompt_set_free(&s);
    /* the lexical oracle needs a reference on every turn: the first line without one is named */
    assert_int_equal(oracle_prompt_set_load(path, 100, true, &s, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "ok.jsonl:4: turn 2: no \"reference\""));
    assert_int_equal(s.count, 0);
}

static void test_prompt_set_errors(void **state) {
    (void)state;
    const struct {
        const char *text, *message;
    } cases[] = {
        {"{\"prompt\": \"a\"}\n[1, 2]\n", "bad.jsonl:2: not a JSON object"},
        {"{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n", "bad.jsonl:2: not JSON"},
        {"{\"question\": \"a\"}\n", "bad.jsonl:1: no \"prompt\" (or \"turns\")"},
        {"{\"prompt\": \"\"}\n", "bad.jsonl:1: \"prompt\" must be a non-empty string"},
        {"{\"prompt\": 7}\n", "bad.jsonl:1: \"prompt\" must be a non-empty string"},
        {"{\"prompt\": \"a\", \"reference\": 3}\n", "bad.jsonl:1: \"reference\" must be a non-empty string"},
        {"{\"prompt\": \"a\", \"turns\": []}\n", "bad.jsonl:1: \"prompt\" and \"turns\" on one line"},
        {"{\"turns\": []}\n", "bad.jsonl:1: \"turns\" must be an array of 1 to"},
        {"{\"turns\": [\"x\"]}\n", "bad.jsonl:1: turn 1: not an object"},
        {"{\"prompt\": \"a\", \"prompt\": \"b\"}\n", "bad.jsonl:1: not JSON"},
        {"\n\n", "bad.jsonl: no prompts"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = write_set("bad.jsonl", cases[i].text);
        oracle_prompt_set s;
        duel_error err = {0};
        assert_int_equal(oracle_prompt_set_load(path, 100, false, &s, &err), DUEL_EFORMAT);
        if (!strstr(err.message, cases[i].message)) fail_msg("case %zu: %s", i, err.message);
        assert_int_equal(s.count, 0);
    }
    /* a line over the limit */
    size_t n = ORACLE_PROMPT_MAX_LINE + 100;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'x', n);
    memcpy(big, "{\"prompt\": \"", 12);
    big[n - 3] = '"', big[n - 2] = '}', big[n - 1] = '\n', big[n] = '\0';
    const char *path = write_set("big.jsonl", big);
    free(big);
    oracle_prompt_set s;
    duel_error err = {0};
    assert_int_equal(oracle_prompt_set_load(path, 100, false, &s, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "big.jsonl:1: line longer than"));
    char missing[1100];
    snprintf(missing, sizeof missing, "%s/missing.jsonl", g_dir);
    assert_int_equal(oracle_prompt_set_load(missing, 100, false, &s, &err), DUEL_ENOTFOUND);
    assert_non_null(strstr(err.message, "missing.jsonl"));
}

static void test_config(void **state) {
    (void)state;
    oracle_config c;
    oracle_config_default(&c);
    assert_int_equal(c.kind, ORACLE_LEXICAL);
    json_t *j = json_loads("{\"kind\": \"lexical\", \"rm_path\": \"\", \"lexical\": {\"char_ngram_weight\": 0.5}, "
                           "\"preference\": {\"flip_probability\": 0.1, \"tie_margin\": 0.01, \"both_bad\": true, "
                           "\"both_bad_below\": 0.05}}",
                           0, NULL);
    duel_error err = {0};
    assert_int_equal(oracle_config_from_json(j, "oracle", &c, &err), 0);
    json_decref(j);
    assert_true(c.lexical.char_ngram_weight == 0.5 && c.preference.flip_probability == 0.1);
    assert_true(c.preference.tie_margin == 0.01 && c.preference.both_bad && c.preference.both_bad_below == 0.05);
    const struct {
        const char *json, *message;
    } bad[] = {{"{\"kind\": \"human\"}", "oracle: unknown oracle kind \"human\""},
               {"{\"colour\": 1}", "oracle: unknown key \"colour\""},
               {"{\"preference\": {\"flip_probability\": 2}}", "oracle.preference: oracle preference: flip_probability"},
               {"{\"lexical\": {\"char_ngram\": 1}}", "oracle.lexical: unknown key \"char_ngram\""}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        oracle_config t = c;
        j = json_loads(bad[i].json, 0, NULL);
        assert_int_equal(oracle_config_from_json(j, "oracle", &t, &err), DUEL_EFORMAT);
        json_decref(j);
        if (!strstr(err.message, bad[i].message)) fail_msg("case %zu: %s", i, err.message);
        assert_memory_equal(&t, &c, sizeof c); /* nothing half-applied */
    }
    /* an rm oracle without a checkpoint fails at open, naming the key */
    oracle_config rm = c;
    rm.kind = ORACLE_RM;
    oracle_user *u = NULL;
    assert_int_equal(oracle_user_open(&rm, &u, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "oracle.rm_path"));
    snprintf(rm.rm_path, sizeof rm.rm_path, "%s/no-such-model", g_dir);
    assert_true(oracle_user_open(&rm, &u, &err) != 0);
    assert_non_null(strstr(err.message, "oracle.rm_path"));
    assert_null(u);
}

static void test_check_and_vote(void **state) {
    (void)state;
    oracle_config c;
    oracle_config_default(&c);
    oracle_user *u = NULL;
    duel_error err = {0};
    assert_int_equal(oracle_user_open(&c, &u, &err), 0);
    assert_true(oracle_user_has_scores(u));
    /* a reference without words is found before any work, with its line */
    const char *path = write_set("check.jsonl", "{\"prompt\": \"a\", \"reference\": \"fine words\"}\n"
                                                "{\"prompt\": \"b\", \"reference\": \"...\"}\n");
    oracle_prompt_set s;
    assert_int_equal(oracle_prompt_set_load(path, 10, true, &s, &err), 0);
    assert_int_equal(oracle_user_check(u, &s, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "check.jsonl:2"));
    assert_non_null(strstr(err.message, "no words"));
    oracle_prompt_set_free(&s);
    path = write_set("votes.jsonl", "{\"prompt\": \"Define tea.\", \"reference\": \"a beverage made from leaves\"}\n");
    assert_int_equal(oracle_prompt_set_load(path, 10, true, &s, &err), 0);
    assert_int_equal(oracle_user_check(u, &s, &err), 0);
    const oracle_turn *t = &s.items[0].turns[0];
    oracle_vote v;
    assert_int_equal(oracle_user_vote(u, t, "a drink", "a beverage made from tea leaves", NULL, &v, &err), 0);
    assert_int_equal(v.choice, ORACLE_PREFER_B);
    assert_true(v.score_b > v.score_a);
    double direct;
    assert_int_equal(oracle_user_score(u, t, "a beverage made from tea leaves", &direct, &err), 0);
    assert_true(direct == v.score_b);
    assert_int_equal(oracle_user_vote(u, t, "a drink", "a bread", NULL, &v, &err), 0);
    assert_int_equal(v.choice, ORACLE_TIE); /* both share one word ("a") with the reference */
    oracle_user_close(u);
    /* the graded mode tells those two apart */
    c.lexical.char_ngram_weight = 0.5;
    assert_int_equal(oracle_user_open(&c, &u, &err), 0);
    assert_int_equal(oracle_user_vote(u, t, "a drink", "a bread", NULL, &v, &err), 0);
    assert_int_equal(v.choice, ORACLE_PREFER_B); /* "a b" as in "a beverage" */
    /* the noise model's draws need an rng: an error, not a vote */
    oracle_user_close(u);
    c.preference.stochastic = true;
    assert_int_equal(oracle_user_open(&c, &u, &err), 0);
    assert_int_equal(oracle_user_vote(u, t, "a drink", "a snack", NULL, &v, &err), DUEL_EINVAL);
    duel_rng rng;
    duel_rng_seed(&rng, 3);
    assert_int_equal(oracle_user_vote(u, t, "a drink", "a snack", &rng, &v, &err), 0);
    oracle_user_close(u);
    oracle_prompt_set_free(&s);
}

static void test_think_and_sessions(void **state) {
    (void)state;
    oracle_think_config t;
    duel_error err = {0};
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    assert_int_equal(oracle_think_parse("0", &t, &err), 0);
    assert_true(oracle_think_ms(&t, &rng) == 0);
    assert_int_equal(oracle_think_parse("fixed:250", &t, &err), 0);
    assert_true(oracle_think_ms(&t, &rng) == 250);
    const struct {
        const char *spec;
        double mean;
    } dists[] = {{"uniform:100:300", 200}, {"exp:400", 400}, {"lognormal:200:0.5", 200 * 1.1331484530668263}};
    for (size_t i = 0; i < sizeof dists / sizeof *dists; i++) {
        assert_int_equal(oracle_think_parse(dists[i].spec, &t, &err), 0);
        double sum = 0;
        const int N = 40000;
        for (int k = 0; k < N; k++) {
            double ms = oracle_think_ms(&t, &rng);
            assert_true(ms >= 0 && ms <= t.max_ms);
            sum += ms;
        }
        if (!(fabs(sum / N - dists[i].mean) < 0.03 * dists[i].mean))
            fail_msg("%s: mean %g, expected %g", dists[i].spec, sum / N, dists[i].mean);
    }
    const char *bad[] = {"fixed", "fixed:-1", "uniform:3:1", "exp:1:2", "gauss:1", "fixed:1x", "lognormal:1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(oracle_think_parse(bad[i], &t, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, bad[i]));
    }
    assert_int_equal(oracle_session_turns(1.0, 8, &rng), 1);
    double sum = 0;
    const int N = 40000;
    for (int k = 0; k < N; k++) {
        int n = oracle_session_turns(3.0, 1000, &rng);
        assert_true(n >= 1);
        sum += n;
    }
    assert_true(fabs(sum / N - 3.0) < 0.1);
    for (int k = 0; k < 100; k++) assert_true(oracle_session_turns(50.0, 4, &rng) <= 4);
}

static int teardown(void **state) {
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_set),
        cmocka_unit_test(test_prompt_set_errors),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_check_and_vote),
        cmocka_unit_test(test_think_and_sessions),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
