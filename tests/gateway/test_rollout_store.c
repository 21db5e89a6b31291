/* test_rollout_store.c: duel:rollout in a real redis-server (gateway/rollout_store.c) and the
 * commands built on it (`duel rollout`, `duel arena ratings`). Each accepted action raises the
 * revision, writes its duel:audit entry (action rollout.<verb>, who, before, after) and a note on
 * duel:notify; refused ones (an unknown snapshot, weights summing to 110, more arms than
 * rollout.max_arms, malformed JSON, an action without a rollout) write nothing, the running
 * rollout stays byte for byte; the arena votes of duel:prefs (over several XRANGE pages, other
 * votes among them) reach the tally; the CLI's exit codes, messages and --json. */
#include <sys/wait.h>

#include "redis_fixture.h"
#include "rollout_store.h"
#include "test_helpers.h"

#ifndef DUEL_EXE
#error "DUEL_EXE (path of the duel executable) must be defined by tests/gateway/rollout.cmake"
#endif

static redis_fixture g_redis;

static int start_redis(void **state) {
    (void)state;
    return redis_fixture_start_with(&g_redis, "rollout-store", REDIS_SERVER_EPHEMERAL);
}

static int stop_redis(void **state) {
    (void)state;
    redis_fixture_remove_dir(&g_redis);
    return 0;
}

static long long xlen(redisContext *c, const char *key) {
    redisReply *r = redisCommand(c, "XLEN %s", key);
    long long n = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return n;
}

static char *get_text(redisContext *c, const char *key) {
    redisReply *r = redisCommand(c, "GET %s", key);
    char *s = r && r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return s;
}

static void setup_keys(redisContext *c) {
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    freeReplyObject(redisCommand(c, "ZADD duel:snapshots 11 11 12 12 13 13"));
}

#define SPEC_OK                                                                                     \
    "{\"arms\":[{\"name\":\"stable\",\"snapshot\":12,\"weight\":90},{\"name\":\"canary\","       \
    "\"snapshot\":\"latest\",\"weight\":10}],\"stable\":\"stable\",\"arena_fraction\":0.2}"

static void refused(redisContext *c, const rollout_change *ch, const char *needle) {
    char *before = get_text(c, "duel:rollout");
    long long audits = xlen(c, "duel:audit");
    duel_error err = {0};
    rollout_spec after;
    int rc = rollout_store_change(c, "duel:", "ops", ch, 4, &after, NULL, &err);
    if (rc == 0 || !strstr(err.message, needle)) fail_msg("rc %d, \"%s\", wanted \"%s\"", rc, err.message, needle);
    char *now = get_text(c, "duel:rollout");
    assert_true((!before && !now) || (before && now && strcmp(before, now) == 0));
    assert_int_equal(xlen(c, "duel:audit"), audits);
    free(before);
    free(now);
}

static void test_actions(void **state) {
    (void)state;
    redisContext *c = redis_fixture_connect(&g_redis), *sub = redis_fixture_connect(&g_redis);
    assert_non_null(c);
    assert_non_null(sub);
    setup_keys(c);
    freeReplyObject(redisCommand(sub, "SUBSCRIBE duel:notify"));
    duel_error err = {0};
    rollout_spec s;
    bool present = true;
    assert_int_equal(rollout_store_read(c, "duel:", &s, &present, &err), 0);
    assert_false(present);
    rollout_change weight = {.action = ROLLOUT_ACTION_WEIGHT, .arm = "canary", .weight = 20};
    refused(c, &weight, "there is no rollout");
    rollout_change set = {.action = ROLLOUT_ACTION_SET, .spec_text = SPEC_OK};
    json_t *audit = NULL;
    assert_int_equal(rollout_store_change(c, "duel:", "ops", &set, 4, &s, &audit, &err), 0);
    assert_int_equal(s.revision, 1);
    assert_non_null(audit);
    assert_string_equal(json_string_value(json_object_get(audit, "action")), "rollout.set");
    assert_string_equal(json_string_value(json_object_get(audit, "who")), "ops");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(audit, "after"), "revision")), 1);
    json_decref(audit);
    redisReply *note = NULL;
    assert_int_equal(redisGetReply(sub, (void **)&note), REDIS_OK);
    assert_string_equal(note->element[2]->str, "{\"kind\":\"rollout\",\"revision\":1}");
    freeReplyObject(note);
    /* refused: the rollout and the audit log stay as they were */
    rollout_change bad = {.action = ROLLOUT_ACTION_SET};
    bad.spec_text = "{\"arms\":[{\"name\":\"stable\",\"snapshot\":99,\"weight\":100}],\"stable\":\"stable\"}";
    refused(c, &bad, "arms[0].snapshot: version 99 is not a registered snapshot");
    bad.spec_text = "{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":90},{\"name\":\"b\","
                    "\"snapshot\":13,\"weight\":20}],\"stable\":\"a\"}";
    refused(c, &bad, "they sum to 110, not 100");
    bad.spec_text = "{\"arms\":[{\"name\":\"a\",\"snapshot\":11,\"weight\":20},{\"name\":\"b\","
                    "\"snapshot\":12,\"weight\":20},{\"name\":\"c\",\"snapshot\":13,\"weight\":20},"
                    "{\"name\":\"d\",\"snapshot\":\"base\",\"weight\":20},{\"name\":\"e\","
                    "\"snapshot\":\"latest\",\"weight\":20}],\"stable\":\"a\"}";
    refused(c, &bad, "5 arms, but the engine holds 4");
    bad.spec_text = "{\"arms\":[{\"name\":";
    refused(c, &bad, "not JSON");
    weight.weight = 101;
    refused(c, &weight, "not in 0..100");
    rollout_change resume = {.action = ROLLOUT_ACTION_RESUME};
    refused(c, &resume, "not paused");
    /* accepted actions, one revision each */
    weight.weight = 20;
    assert_int_equal(rollout_store_change(c, "duel:", "ops", &weight, 4, &s, NULL, &err), 0);
    assert_int_equal(s.revision, 2);
    assert_int_equal(s.arms[0].weight, 80);
    rollout_change pause = {.action = ROLLOUT_ACTION_PAUSE};
    assert_int_equal(rollout_store_change(c, "duel:", "ops", &pause, 4, &s, NULL, &err), 0);
    assert_int_equal(s.status, ROLLOUT_PAUSED);
    assert_int_equal(rollout_store_change(c, "duel:", "ops", &resume, 4, &s, NULL, &err), 0);
    rollout_change abort_ = {.action = ROLLOUT_ACTION_ABORT};
    assert_int_equal(rollout_store_change(c, "duel:", "ops", &abort_, 4, &s, NULL, &err), 0);
    assert_int_equal(s.revision, 5);
    assert_int_equal(s.arms[1].weight, 0);
    assert_int_equal(s.status, ROLLOUT_ABORTED);
    /* what is stored is what was returned */
    rollout_spec back;
    assert_int_equal(rollout_store_read(c, "duel:", &back, &present, &err), 0);
    assert_true(present);
    assert_memory_equal(&back, &s, sizeof s);
    assert_int_equal(xlen(c, "duel:audit"), 5);
    /* a hand-written bad spec is reported, and can be replaced by set */
    freeReplyObject(redisCommand(c, "SET duel:rollout %s", "{\"arms\":3}"));
    assert_int_not_equal(rollout_store_read(c, "duel:", &back, &present, &err), 0);
    assert_non_null(strstr(err.message, "arms"));
    refused(c, &abort_, "arms");
    assert_int_equal(rollout_store_change(c, "duel:", "ops", &set, 4, &s, NULL, &err), 0);
    assert_int_equal(s.revision, 1); /* the bad text had none */
    redisFree(sub);
    redisFree(c);
}

/* Appends one vote's XADD (pipelined: arena_votes reads the replies). */
static void add_vote(redisContext *c, const char *strategy, const char *choice, int chosen,
                     int rejected, const char *gen_params) {
    assert_int_equal(redisAppendCommand(c, "XADD duel:prefs * strategy %s choice %s chosen_idx %d "
                                           "rejected_idx %d gen_params %s",
                                        strategy, choice, chosen, rejected, gen_params),
                     REDIS_OK);
}

/* 1,300 votes: 1,200 arena battles between "canary" (arm 0, candidates 0..1) and "stable"
 * (candidates 2..3), the canary winning 2 of 3 decided ones, and 100 ee_ts votes. */
static void arena_votes(redisContext *c) {
    const char *gp = "{\"arena_split\":2,\"arena_arms\":[\"canary\",\"stable\"]}";
    for (int i = 0; i < 1300; i++) {
        if (i % 13 == 12) add_vote(c, "ee_ts", "a", 0, 1, "{}");
        else if (i % 4 == 3) add_vote(c, "arena", "tie", 1, 3, gp);
        else if (i % 3 == 2) add_vote(c, "arena", "a", 2, 0, gp); /* stable won */
        else add_vote(c, "arena", "b", 1, 2, gp);                   /* canary won */
    }
    for (int i = 0; i < 1300; i++) {
        redisReply *r = NULL;
        assert_int_equal(redisGetReply(c, (void **)&r), REDIS_OK);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        freeReplyObject(r);
    }
}

static void test_arena_from_prefs(void **state) {
    (void)state;
    redisContext *c = redis_fixture_connect(&g_redis);
    setup_keys(c);
    arena_votes(c);
    arena_tally t = {0};
    duel_error err = {0};
    assert_int_equal(rollout_store_arena(c, "duel:", &t, &err), 0);
    assert_int_equal(t.n_battles, 1200);
    assert_int_equal(t.skipped, 0);
    assert_int_equal(t.n_arms, 2);
    arena_rating r[2];
    assert_int_equal(arena_ratings_compute(&t, ARENA_RATINGS_ROUNDS, ARENA_RATINGS_SEED, r, &err), 0);
    int canary = strcmp(t.names[0], "canary") == 0 ? 0 : 1;
    assert_true(r[canary].rating > 1000 && r[1 - canary].rating < 1000);
    assert_int_equal(r[canary].rank, 1);
    arena_tally_free(&t);
    redisFree(c);
}

/* Runs the duel executable with args against the test's Redis; its exit status and output. */
static int run_duel(const char *args, char *out, size_t cap) {
    return redis_fixture_run_duel(&g_redis, DUEL_EXE, args, out, cap);
}

static void test_cli(void **state) {
    (void)state;
    redisContext *c = redis_fixture_connect(&g_redis);
    setup_keys(c);
    static char out[65536];
    char dir[512], path[600], args[1024];
    test_make_temp_dir("rollout_cli", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/spec.json", dir);
    test_write_file(path, SPEC_OK, strlen(SPEC_OK));
    assert_int_equal(run_duel("rollout status", out, sizeof out), 0);
    assert_non_null(strstr(out, "no rollout"));
    snprintf(args, sizeof args, "rollout set '%s' --as ci", path);
    assert_int_equal(run_duel(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "revision 1"));
    assert_int_equal(run_duel("rollout weight canary 30 --json", out, sizeof out), 0);
    json_t *o = json_loads(out, 0, NULL);
    assert_non_null(o);
    json_t *arms = json_object_get(json_object_get(o, "rollout"), "arms");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(arms, 1), "weight")), 30);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "audit"), "action")),
                        "rollout.weight");
    json_decref(o);
    /* refused: exit 2, the field named, nothing written */
    char *before = get_text(c, "duel:rollout");
    const char *unknown = "{\"arms\":[{\"name\":\"x\",\"snapshot\":7,\"weight\":100}],\"stable\":\"x\"}";
    test_write_file(path, unknown, strlen(unknown));
    snprintf(args, sizeof args, "rollout set '%s'", path);
    assert_int_equal(run_duel(args, out, sizeof out), 2);
    assert_non_null(strstr(out, "arms[0].snapshot: version 7 is not a registered snapshot"));
    assert_int_equal(run_duel("rollout weight stable 30", out, sizeof out), 2);
    assert_non_null(strstr(out, "stable arm"));
    assert_int_equal(run_duel("rollout weight canary", out, sizeof out), 2);
    assert_int_equal(run_duel("rollout set '/nonexistent/spec.json'", out, sizeof out), 1);
    char *now = get_text(c, "duel:rollout");
    assert_string_equal(before, now);
    free(before);
    free(now);
    /* the engine's limit comes from rollout.max_arms */
    test_write_file(path, SPEC_OK, strlen(SPEC_OK));
    snprintf(args, sizeof args, "rollout set '%s' --set rollout.max_arms=1", path);
    assert_int_equal(run_duel(args, out, sizeof out), 2);
    assert_non_null(strstr(out, "2 arms, but the engine holds 1"));
    assert_int_equal(run_duel("rollout promote --json", out, sizeof out), 0);
    o = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "rollout"), "status")), "healthy");
    json_decref(o);
    assert_int_equal(run_duel("rollout frobnicate", out, sizeof out), 2);
    /* arena ratings */
    arena_votes(c);
    assert_int_equal(run_duel("arena ratings --json", out, sizeof out), 0);
    o = json_loads(out, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "battles")), 1200);
    json_t *top = json_array_get(json_object_get(o, "arms"), 0);
    assert_string_equal(json_string_value(json_object_get(top, "name")), "canary");
    assert_int_equal(json_integer_value(json_object_get(top, "rank")), 1);
    json_decref(o);
    assert_int_equal(run_duel("arena ratings", out, sizeof out), 0);
    assert_non_null(strstr(out, "canary"));
    redisFree(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_actions),
        cmocka_unit_test(test_arena_from_prefs),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, start_redis, stop_redis);
}
