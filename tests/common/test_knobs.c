/* test_knobs.c: the live-knob table (common/knobs.c) and what it drives: one knob's text (every
 * type, both ends of each range, bad syntax named), the defaults from config/default.json and
 * from a changed configuration, the config keys checked with the knobs' rules, a change applied
 * all or nothing (a bad knob or the arena/odd-M rule leaves everything as it was), the JSON of
 * /api/knobs, the knob list in docs/CONFIG.md (must be exactly the generated one), and that the
 * table's choices are the ones the engine and the trainer understand. */
#include <jansson.h>

#include "config.h"
#include "dap_loss.h"
#include "duel.h"
#include "knobs.h"
#include "test_helpers.h"

static void expect_refused(const char *name, const char *text, const char *needle) {
    duel_knob_value v;
    duel_error err = {0};
    int rc = duel_knob_parse(name, text, &v, NULL, &err);
    if (rc != DUEL_EINVAL) fail_msg("knob %s=\"%s\" accepted", name, text);
    if (!strstr(err.message, needle))
        fail_msg("knob %s=\"%s\": \"%s\" lacks \"%s\"", name, text, err.message, needle);
}

static void test_parse_one_knob(void **state) {
    (void)state;
    duel_knob_value v;
    duel_error err = {0};
    int index = -1;
    assert_int_equal(duel_knob_parse("M", "8", &v, &index, &err), 0);
    assert_true(v.number == 8);
    assert_string_equal(v.text, "8");
    assert_string_equal(duel_knobs[index].name, "M");
    assert_int_equal(duel_knob_parse("top_p", "0.90", &v, NULL, &err), 0);
    assert_true(v.number == 0.9);
    assert_string_equal(v.text, "0.9"); /* canonical text: what goes into duel:knobs */
    assert_int_equal(duel_knob_parse("strategy", "bai_ts", &v, NULL, &err), 0);
    assert_string_equal(v.text, "bai_ts");
    /* Both ends of every numeric range are accepted, and just past them refused. */
    for (int k = 0; k < DUEL_KNOB_COUNT; k++) {
        const duel_knob_spec *s = &duel_knobs[k];
        if (s->type == DUEL_KNOB_CHOICE) continue;
        char text[64];
        snprintf(text, sizeof text, s->type == DUEL_KNOB_INT ? "%.0f" : "%.17g", s->max);
        if (duel_knob_parse(s->name, text, &v, NULL, &err)) fail_msg("%s", err.message);
        assert_true(v.number == s->max);
        snprintf(text, sizeof text, s->type == DUEL_KNOB_INT ? "%.0f" : "%.17g",
                 s->type == DUEL_KNOB_INT ? s->max + 1 : s->max * 1.0001 + 1e-9);
        expect_refused(s->name, text, "outside");
        snprintf(text, sizeof text, s->type == DUEL_KNOB_INT ? "%.0f" : "%.17g", s->min);
        if (s->min_exclusive) {
            expect_refused(s->name, text, "outside (");
        } else {
            if (duel_knob_parse(s->name, text, &v, NULL, &err)) fail_msg("%s", err.message);
            assert_true(v.number == s->min);
        }
        snprintf(text, sizeof text, "%.17g", s->min - 1);
        expect_refused(s->name, text, "outside");
    }
    expect_refused("M", "100", "knob M = 100: outside [2, 64]");
    expect_refused("M", "4.5", "knob M = \"4.5\": not an integer");
    expect_refused("M", "", "empty");
    expect_refused("M", " 4", "leading space");
    expect_refused("M", "99999999999999999999", "not an integer");
    expect_refused("top_p", "0", "outside (0, 1]");
    expect_refused("temperature", "nan", "not a finite number");
    expect_refused("temperature", "inf", "not a finite number");
    expect_refused("temperature", "0.5x", "not a finite number");
    expect_refused("temperature", "-1", "outside [0, 10]");
    expect_refused("strategy", "ee", "expected one of");
    expect_refused("strategy", "ee_ts bon", "expected one of");
    expect_refused("strategy", "PILAF", "expected one of"); /* names are lower case */
    expect_refused("loss", "hinge", "expected one of: dpo ipo slic simpo");
    expect_refused("Beta", "0.1", "unknown knob \"Beta\"");
    expect_refused("min_p", "0.1", "unknown knob"); /* named by the old trainer list only */
}

static void test_defaults_follow_the_configuration(void **state) {
    (void)state;
    json_t *config = NULL;
    duel_error err = {0};
    assert_int_equal(duel_config_load(NULL, NULL, 0, NULL, &config, NULL, &err), 0);
    duel_knob_values d;
    if (duel_knobs_defaults(config, NULL, &d, &err)) fail_msg("%s", err.message);
    assert_string_equal(d.v[duel_knob_index("strategy")].text, "ee_ts");
    assert_string_equal(d.v[duel_knob_index("M")].text, "4");
    assert_string_equal(d.v[duel_knob_index("temperature")].text, "1");
    assert_string_equal(d.v[duel_knob_index("lr_scale")].text, "1"); /* no config key */
    assert_string_equal(d.v[duel_knob_index("loss")].text, "dpo");
    assert_true(d.v[duel_knob_index("burn_in")].number == 1000);
    json_decref(config);
    /* --set moves the defaults; a value the knob would refuse is refused in the config too,
     * naming the key and the knob. */
    const char *sets[] = {"duel.candidates=6", "trainer.gamma=0.5"};
    assert_int_equal(duel_config_load(NULL, sets, 2, NULL, &config, NULL, &err), 0);
    assert_int_equal(duel_knobs_defaults(config, NULL, &d, &err), 0);
    assert_string_equal(d.v[duel_knob_index("M")].text, "6");
    assert_string_equal(d.v[duel_knob_index("gamma")].text, "0.5");
    json_decref(config);
    struct { const char *set, *needle; } bad[] = {
        {"duel.candidates=100", "duel.candidates = 100: outside [2, 64] (knob M)"},
        {"duel.top_p=0", "duel.top_p = 0: outside (0, 1] (knob top_p)"},
        {"duel.strategy=thompson", "duel.strategy = \"thompson\": expected one of"},
        {"trainer.loss=hinge", "trainer.loss = \"hinge\""},
        {"rollout.arena_fraction=1.5", "(knob arena_fraction)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(duel_config_load(NULL, &bad[i].set, 1, NULL, &config, NULL, &err), 0);
        assert_int_equal(duel_knobs_defaults(config, NULL, &d, &err), DUEL_EINVAL);
        if (!strstr(err.message, bad[i].needle))
            fail_msg("--set %s: \"%s\" lacks \"%s\"", bad[i].set, err.message, bad[i].needle);
        json_decref(config);
    }
    duel_knob_value v;
    json_t *wrong = json_pack("{s:{s:s}}", "duel", "candidates", "4");
    assert_int_equal(duel_knob_config_value(wrong, "M", "f.json", &v, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "f.json: duel.candidates must be an integer"));
    json_decref(wrong);
}

static void test_apply_is_all_or_nothing(void **state) {
    (void)state;
    json_t *config = NULL;
    duel_error err = {0};
    assert_int_equal(duel_config_load(NULL, NULL, 0, NULL, &config, NULL, &err), 0);
    duel_knob_values d, v;
    assert_int_equal(duel_knobs_defaults(config, NULL, &d, &err), 0);
    json_decref(config);
    v = d;
    const char *names[] = {"temperature", "strategy", "M"};
    const char *good[] = {"0.7", "bai_ts", "6"};
    assert_int_equal(duel_knobs_apply(&v, &d, names, good, 3, &err), 0);
    assert_string_equal(v.v[duel_knob_index("temperature")].text, "0.7");
    assert_string_equal(v.v[duel_knob_index("strategy")].text, "bai_ts");
    /* One bad knob: nothing changes, and the message names it. */
    duel_knob_values before = v;
    const char *one_bad[] = {"0.2", "uncertainty", "65"};
    assert_int_equal(duel_knobs_apply(&v, &d, names, one_bad, 3, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "knob M = 65"));
    assert_memory_equal(&v, &before, sizeof v);
    const char *unknown[] = {"temperature", "bogus"};
    assert_int_equal(duel_knobs_apply(&v, &d, unknown, good, 2, &err), DUEL_EINVAL);
    assert_memory_equal(&v, &before, sizeof v);
    /* Each knob valid alone, the set not: arena needs an even M. */
    const char *arena_names[] = {"strategy", "M"}, *arena_odd[] = {"arena", "5"};
    assert_int_equal(duel_knobs_apply(&v, &d, arena_names, arena_odd, 2, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "M must be even"));
    assert_memory_equal(&v, &before, sizeof v);
    const char *arena_even[] = {"arena", "4"};
    assert_int_equal(duel_knobs_apply(&v, &d, arena_names, arena_even, 2, &err), 0);
    /* With arena in effect, an odd M alone is refused too. */
    const char *m_only[] = {"M"}, *odd[] = {"3"};
    assert_int_equal(duel_knobs_apply(&v, &d, m_only, odd, 1, &err), DUEL_EINVAL);
    /* NULL text: back to the default. */
    const char *reset[] = {NULL};
    const char *t_only[] = {"temperature"};
    assert_int_equal(duel_knobs_apply(&v, &d, t_only, reset, 1, &err), 0);
    assert_string_equal(v.v[duel_knob_index("temperature")].text, "1");
}

static void test_describe_lists_every_knob(void **state) {
    (void)state;
    json_t *arr = duel_knobs_describe(NULL);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), DUEL_KNOB_COUNT);
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o) {
        const duel_knob_spec *s = &duel_knobs[i];
        assert_string_equal(json_string_value(json_object_get(o, "name")), s->name);
        assert_non_null(json_string_value(json_object_get(o, "help")));
        duel_knob_value v;
        duel_error err = {0};
        /* the default shown is a value the knob accepts */
        if (duel_knob_parse(s->name, json_string_value(json_object_get(o, "default")), &v, NULL, &err))
            fail_msg("%s", err.message);
        json_t *readers = json_object_get(o, "readers");
        assert_int_equal(json_array_size(readers), (s->readers & DUEL_KNOB_SERVING ? 1u : 0u) +
                                                       (s->readers & DUEL_KNOB_TRAINER ? 1u : 0u));
        if (s->type == DUEL_KNOB_CHOICE) {
            json_t *choices = json_object_get(o, "choices");
            assert_true(json_array_size(choices) >= 2);
            size_t j;
            json_t *c;
            json_array_foreach(choices, j, c) {
                if (duel_knob_parse(s->name, json_string_value(c), &v, NULL, &err))
                    fail_msg("%s", err.message);
            }
        } else {
            assert_true(json_number_value(json_object_get(o, "max")) == s->max);
        }
        for (size_t j = 0; j < i; j++) assert_string_not_equal(duel_knobs[j].name, s->name);
    }
    json_decref(arr);
}

/* The choices are words the engine and the trainer understand; the engine adapter serves every
 * strategy (pilaf included), so the strategy knob offers them all, each once. */
static void test_choices_are_understood(void **state) {
    (void)state;
    json_t *arr = duel_knobs_describe(NULL);
    json_t *o = json_array_get(arr, (size_t)duel_knob_index("strategy"));
    size_t i;
    json_t *c;
    duel_error err = {0};
    bool seen[DUEL_STRATEGY_COUNT] = {false};
    json_array_foreach(json_object_get(o, "choices"), i, c) {
        duel_strategy s;
        if (duel_strategy_parse(json_string_value(c), &s, &err)) fail_msg("%s", err.message);
        assert_false(seen[s]);
        seen[s] = true;
    }
    assert_int_equal(json_array_size(json_object_get(o, "choices")), DUEL_STRATEGY_COUNT);
    o = json_array_get(arr, (size_t)duel_knob_index("loss"));
    json_array_foreach(json_object_get(o, "choices"), i, c) {
        dap_loss_kind k;
        if (dap_loss_kind_parse(json_string_value(c), &k, &err)) fail_msg("%s", err.message);
    }
    json_decref(arr);
}

/* docs/CONFIG.md holds exactly the generated list between its markers. */
static void test_docs_list_is_the_table(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/docs/CONFIG.md", test_env("DUEL_SOURCE_DIR", "."));
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char doc[1 << 17];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    fclose(f);
    doc[n] = '\0';
    const char *begin_mark = "<!-- knobs:begin (generated: duel knobs list --markdown) -->\n";
    const char *end_mark = "<!-- knobs:end -->";
    char *begin = strstr(doc, begin_mark), *end = strstr(doc, end_mark);
    if (!begin || !end || end < begin) fail_msg("%s: no knob list markers", path);
    begin += strlen(begin_mark);
    *end = '\0';
    char *md = duel_knobs_markdown();
    assert_non_null(md);
    if (strcmp(begin, md) != 0)
        fail_msg("%s: the knob list differs from `duel knobs list --markdown`:\n%s", path, md);
    free(md);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_one_knob),
        cmocka_unit_test(test_defaults_follow_the_configuration),
        cmocka_unit_test(test_apply_is_all_or_nothing),
        cmocka_unit_test(test_describe_lists_every_knob),
        cmocka_unit_test(test_choices_are_understood),
        cmocka_unit_test(test_docs_list_is_the_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
