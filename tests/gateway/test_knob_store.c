/* test_knob_store.c: duel:knobs, duel:audit and duel:stats in a real redis-server
 * (gateway/knob_store.c, gateway/stats_store.c) and the commands built on them (`duel knobs`,
 * `duel ops status`). A change is all or nothing (a refused one writes neither the hash nor the
 * audit log), each accepted one has its audit entry (who, before, after) and its note on
 * duel:notify; a hand-written bad value is ignored and reported; two writers at once both land
 * exactly once; stats entries written are read back into the view, bad ones skipped; the CLI's
 * exit codes and --json. */
#include <pthread.h>
#include <sys/wait.h>

#include "knob_store.h"
#include "config.h"
#include "redis_fixture.h"
#include "stats_store.h"
#include "test_helpers.h"
#include "timer.h"

#ifndef DUEL_EXE
#error "DUEL_EXE (path of the duel executable) must be defined by tests/gateway/console.cmake"
#endif

static redis_fixture g_redis;

static int start_redis(void **state) {
    (void)state;
    return redis_fixture_start_with(&g_redis, "knob-store", REDIS_SERVER_EPHEMERAL);
}

static int stop_redis(void **state) {
    (void)state;
    redis_fixture_remove_dir(&g_redis);
    return 0;
}

static void defaults(duel_knob_values *d) {
    json_t *config = NULL;
    duel_error err = {0};
    assert_int_equal(duel_config_load(NULL, NULL, 0, NULL, &config, NULL, &err), 0);
    assert_int_equal(duel_knobs_defaults(config, NULL, d, &err), 0);
    json_decref(config);
}

static long long xlen(redisContext *c, const char *key) {
    redisReply *r = redisCommand(c, "XLEN %s", key);
    long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return n;
}

static void flush(redisContext *c) { freeReplyObject(redisCommand(c, "FLUSHALL")); }

static void test_change_read_audit(void **state) {
    (void)state;
    redisContext *c = redis_fixture_connect(&g_redis), *sub = redis_fixture_connect(&g_redis);
    assert_non_null(c);
    assert_non_null(sub);
    flush(c);
    freeReplyObject(redisCommand(sub, "SUBSCRIBE duel:notify"));
    duel_knob_values d, v, after;
    defaults(&d);
    duel_error err = {0};
    const char *names[] = {"temperature", "strategy"}, *good[] = {"0.70", "bai_ts"};
    json_t *audit = NULL;
    assert_int_equal(knob_store_change(c, "duel:", "ops", &d, names, good, 2, &after, &audit, &err), 0);
    assert_string_equal(after.v[duel_knob_index("temperature")].text, "0.7");
    assert_string_equal(json_string_value(json_object_get(audit, "who")), "ops");
    assert_string_equal(json_string_value(json_object_get(json_object_get(audit, "before"), "temperature")), "1");
    assert_string_equal(json_string_value(json_object_get(json_object_get(audit, "after"), "strategy")), "bai_ts");
    assert_true(json_integer_value(json_object_get(audit, "ts_ms")) > 0);
    json_decref(audit);
    /* the note on duel:notify */
    redisReply *m = NULL;
    assert_int_equal(redisGetReply(sub, (void **)&m), REDIS_OK);
    assert_int_equal(m->type, REDIS_REPLY_ARRAY);
    assert_string_equal(m->element[2]->str, "{\"kind\":\"knobs\"}");
    freeReplyObject(m);
    /* the hash holds the canonical text */
    redisReply *r = redisCommand(c, "HGET duel:knobs temperature");
    assert_string_equal(r->str, "0.7");
    freeReplyObject(r);
    assert_int_equal(xlen(c, "duel:audit"), 1);
    /* refused: one bad value, or a set that breaks a cross-knob rule: nothing written */
    const char *names3[] = {"temperature", "M", "top_p"}, *bad3[] = {"0.2", "6", "0"};
    assert_int_equal(knob_store_change(c, "duel:", "ops", &d, names3, bad3, 3, NULL, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "knob top_p = 0: outside (0, 1]"));
    const char *arena[] = {"strategy", "M"}, *arena_odd[] = {"arena", "5"};
    assert_int_equal(knob_store_change(c, "duel:", "ops", &d, arena, arena_odd, 2, NULL, NULL, &err), DUEL_EINVAL);
    assert_int_equal(xlen(c, "duel:audit"), 1);
    bool set[DUEL_KNOB_COUNT];
    knob_store_bad bad;
    assert_int_equal(knob_store_read(c, "duel:", &d, &v, set, &bad, &err), 0);
    assert_string_equal(v.v[duel_knob_index("temperature")].text, "0.7");
    assert_string_equal(v.v[duel_knob_index("M")].text, "4");
    assert_true(set[duel_knob_index("strategy")]);
    assert_false(set[duel_knob_index("M")]);
    assert_int_equal(bad.count, 0);
    /* a value written by hand that the table refuses: ignored, reported */
    freeReplyObject(redisCommand(c, "HSET duel:knobs top_p 7 bogus 1"));
    assert_int_equal(knob_store_read(c, "duel:", &d, &v, set, &bad, &err), 0);
    assert_string_equal(v.v[duel_knob_index("top_p")].text, "1");
    assert_int_equal(bad.count, 2);
    /* reset: back to the default, audited with after null */
    const char *reset[] = {NULL};
    assert_int_equal(knob_store_change(c, "duel:", "ops", &d, names, reset, 1, &after, &audit, &err), 0);
    assert_true(json_is_null(json_object_get(json_object_get(audit, "after"), "temperature")));
    json_decref(audit);
    r = redisCommand(c, "HEXISTS duel:knobs temperature");
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    json_t *list = NULL;
    assert_int_equal(knob_store_audit(c, "duel:", 10, &list, &err), 0);
    assert_int_equal(json_array_size(list), 2);
    /* newest first */
    assert_true(json_is_null(json_object_get(json_object_get(json_array_get(list, 0), "after"), "temperature")));
    json_decref(list);
    redisFree(sub);
    redisFree(c);
}

typedef struct writer {
    const char *knob;
    int changes, failures;
} writer;

static void *write_many(void *arg) {
    writer *w = arg;
    redisContext *c = redis_fixture_connect(&g_redis);
    duel_knob_values d;
    defaults(&d);
    for (int i = 0; i < w->changes; i++) {
        char value[16];
        snprintf(value, sizeof value, "%d", 2 + (i % 60));
        const char *names[] = {w->knob}, *texts[] = {value};
        duel_error err = {0};
        if (knob_store_change(c, "duel:", w->knob, &d, names, texts, 1, NULL, NULL, &err)) w->failures++;
    }
    redisFree(c);
    return NULL;
}

static void test_concurrent_changes_land_once(void **state) {
    (void)state;
    redisContext *c = redis_fixture_connect(&g_redis);
    flush(c);
    writer a = {"M", 40, 0}, b = {"max_new_tokens", 40, 0};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, write_many, &a);
    pthread_create(&tb, NULL, write_many, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(a.failures + b.failures, 0);
    assert_int_equal(xlen(c, "duel:audit"), 80);
    redisReply *r = redisCommand(c, "HGET duel:knobs M");
    assert_string_equal(r->str, "41"); /* 2 + 39 % 60 */
    freeReplyObject(r);
    redisFree(c);
}

static void test_stats_round_trip(void **state) {
    (void)state;
    redisContext *c = redis_fixture_connect(&g_redis);
    flush(c);
    duel_error err = {0};
    int64_t now = duel_time_unix_ms();
    stats_serving s;
    memset(&s, 0, sizeof s);
    s.version = 2;
    stats_group *g = stats_serving_group(&s, "v000002", "ee_ts");
    g->duels = 3;
    stats_hist_add(&g->regret, 0.25);
    char *data = stats_serving_json(&s);
    for (int i = 0; i < 5; i++)
        assert_int_equal(stats_store_append(c, "duel:", 1000, "serve@h:1", "serving", now - 4000 + i * 1000,
                                            1000, data, &err), 0);
    free(data);
    /* a malformed entry (someone else's writer): skipped, counted */
    freeReplyObject(redisCommand(c, "XADD duel:stats * instance x role serving ts_ms 1 interval_ms 1 data nope"));
    stats_view *v = stats_view_create();
    char last[STATS_STORE_ID_MAX] = "";
    long long added = 0, skipped = 0;
    assert_int_equal(stats_store_read(c, "duel:", now - 60000, last, 0, v, &added, &skipped, &err), 0);
    assert_int_equal(added, 5);
    assert_int_equal(skipped, 1);
    /* incremental: nothing new, then one more */
    assert_int_equal(stats_store_read(c, "duel:", 0, last, 0, v, &added, &skipped, &err), 0);
    assert_int_equal(added, 0);
    data = stats_serving_json(&s);
    assert_int_equal(stats_store_append(c, "duel:", 1000, "serve@h:1", "serving", now, 1000, data, &err), 0);
    free(data);
    assert_int_equal(stats_store_read(c, "duel:", 0, last, 0, v, &added, &skipped, &err), 0);
    assert_int_equal(added, 1);
    json_t *o = stats_view_render(v, 900, now);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "totals"), "duels")), 18);
    json_decref(o);
    stats_view_free(v);
    redisFree(c);
}

/* Runs the duel executable with args against the test's Redis; its exit status and output. */
static int run_duel(const char *args, char *out, size_t cap) {
    return redis_fixture_run_duel(&g_redis, DUEL_EXE, args, out, cap);
}

static void test_cli(void **state) {
    (void)state;
    redisContext *c = redis_fixture_connect(&g_redis);
    flush(c);
    static char out[65536];
    assert_int_equal(run_duel("knobs set temperature 0.5 --as ci", out, sizeof out), 0);
    assert_non_null(strstr(out, "temperature: 1 -> 0.5"));
    /* a refused value: exit 2, the knob and its range named, nothing written */
    assert_int_equal(run_duel("knobs set M 100", out, sizeof out), 2);
    assert_non_null(strstr(out, "knob M = 100: outside [2, 64]"));
    assert_int_equal(run_duel("knobs set M", out, sizeof out), 2);
    assert_int_equal(xlen(c, "duel:audit"), 1);
    assert_int_equal(run_duel("knobs get temperature --json", out, sizeof out), 0);
    json_t *o = json_loads(out, 0, NULL);
    assert_non_null(o);
    json_t *k = json_array_get(json_object_get(o, "knobs"), 0);
    assert_string_equal(json_string_value(json_object_get(k, "value")), "0.5");
    assert_true(json_is_true(json_object_get(k, "set")));
    json_decref(o);
    assert_int_equal(run_duel("knobs reset temperature --json", out, sizeof out), 0);
    o = json_loads(out, 0, NULL);
    assert_int_equal(strncmp(json_string_value(json_object_get(o, "who")), "cli:", 4), 0);
    assert_true(json_is_null(json_object_get(json_object_get(o, "after"), "temperature")));
    json_decref(o);
    /* ops status: the audit entries and the stats of one instance */
    duel_error err = {0};
    stats_serving s;
    memset(&s, 0, sizeof s);
    stats_group *g = stats_serving_group(&s, "base", "ee_ts");
    g->duels = 7;
    char *data = stats_serving_json(&s);
    assert_int_equal(stats_store_append(c, "duel:", 1000, "serve@h:1", "serving", duel_time_unix_ms(), 5000,
                                        data, &err), 0);
    free(data);
    assert_int_equal(run_duel("ops status --json", out, sizeof out), 0);
    o = json_loads(out, 0, NULL);
    assert_non_null(o);
    json_t *stats = json_object_get(o, "stats");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(stats, "totals"), "duels")), 7);
    assert_int_equal(json_array_size(json_object_get(o, "audit")), 2);
    json_decref(o);
    assert_int_equal(run_duel("ops status", out, sizeof out), 0);
    assert_non_null(strstr(out, "serve@h:1"));
    assert_non_null(strstr(out, "healthy"));
    assert_non_null(strstr(out, "duels 7"));
    /* Redis not answering: exit 1 */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' knobs get --redis 127.0.0.1:1 >/dev/null 2>&1", DUEL_EXE);
    int status = system(cmd);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    redisFree(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_change_read_audit),
        cmocka_unit_test(test_concurrent_changes_land_once),
        cmocka_unit_test(test_stats_round_trip),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, start_redis, stop_redis);
}
