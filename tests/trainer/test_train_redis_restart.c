/* test_train_redis_restart.c: `duel train` survives Redis restarts (issue 21: it used to exit
 * within 1-2 s with "XREADGROUP failed: Server closed the connection"). A running trainer sees
 * its redis-server (appendfsync always) killed with SIGKILL twice: once idle with everything
 * applied, once with a partial batch pending in memory. Each time it must stay up, log that
 * Redis went away and came back, and go on applying the votes XADDed after the restart; at the
 * end (SIGTERM, exit status 0) every vote is applied exactly once: the counts in its checkpoint,
 * every vote id once, no duplicates, nothing pending in the group. A trainer started while its
 * Redis is down (systemd or ops/up starting the parts in any order; it used to exit at once with
 * "cannot connect") waits, connects once Redis is up and applies the votes queued before. */
#ifndef DUEL_EXE
#error "DUEL_EXE (path of the duel executable) must be defined by the build"
#endif

#include <jansson.h>

#include "durable_file.h"
#include "file_map.h"
#include "json_util.h"
#include "online_test_env.h"
#include "redis_fixture.h"
#include "test_online_votes.h"

static redis_fixture g_redis;
static pid_t g_trainer;

static int teardown(void **state) {
    (void)state;
    if (g_trainer > 0) {
        kill(g_trainer, SIGKILL);
        waitpid(g_trainer, NULL, 0);
        g_trainer = 0;
    }
    redis_fixture_remove_dir(&g_redis);
    return 0;
}

/* A field of duel:trainer:status as an integer (-1 while absent or Redis is away). */
static long long status_field(const char *field) {
    redisContext *c = redis_fixture_connect(&g_redis);
    if (!c) return -1;
    redisReply *r = redisCommand(c, "HGET duel:trainer:status %s", field);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    if (r) freeReplyObject(r);
    redisFree(c);
    return v;
}

/* Waits (at most 60 s) until the status says prefs_applied = applied and pending_pairs =
 * pending, failing when the trainer exits meanwhile. */
static void wait_for_status(long long applied, long long pending) {
    for (int i = 0; i < 6000; i++) {
        int status;
        if (waitpid(g_trainer, &status, WNOHANG) == g_trainer) {
            g_trainer = 0;
            fail_msg("duel train exited (status %d) waiting for %lld applied, %lld pending",
                     WIFEXITED(status) ? WEXITSTATUS(status) : 128, applied, pending);
        }
        if (status_field("prefs_applied") == applied && status_field("pending_pairs") == pending) return;
        online_test_sleep_ms(10);
    }
    fail_msg("duel train did not reach %lld applied, %lld pending (at %lld, %lld)", applied, pending,
             status_field("prefs_applied"), status_field("pending_pairs"));
}

static void add_votes(vote_producer *p, int n, char (*ids)[64], int *count) {
    redisContext *c = redis_fixture_connect(&g_redis);
    assert_non_null(c);
    for (int i = 0; i < n; i++) vote_producer_add(p, c, "duel:prefs", "*", VOTE_AB, ids[(*count)++]);
    redisFree(c);
}

/* SIGKILL, a pause longer than the trainer's first reconnection attempts, then the same port
 * and AOF again. */
static void crash_redis(void) {
    redis_server_stop(&g_redis, SIGKILL);
    online_test_sleep_ms(400);
    assert_int_equal(redis_fixture_restart(&g_redis), 0);
}

static char *read_text(const char *path) {
    char *contents = NULL;
    size_t len = 0;
    duel_error err = {0};
    if (duel_file_read_all(path, 1 << 20, &contents, &len, &err)) fail_msg("%s", err.message);
    return contents;
}

/* A folder for one run: its config (batches of 4, a checkpoint per batch), data and log paths. */
static void make_run_dir(const char *tag, char *root, char *config, char *data, char *log) {
    char text[2048];
    test_make_temp_dir(tag, root, 512);
    snprintf(config, 700, "%s/config.json", root);
    snprintf(data, 700, "%s/data", root);
    snprintf(log, 700, "%s/train.log", root);
    snprintf(text, sizeof text,
             "{\"model\":{\"path\":\"%s\",\"id\":\"tiny\"},\"erm\":{\"num_heads\":4,\"hidden\":32,\"min_pairs\":4},"
             "\"trainer\":{\"batch_size\":4,\"max_batch_size\":4,\"lr\":0.001,\"min_lr\":0.0001,\"warmup_steps\":2,"
             "\"total_steps\":100,\"publish_every\":0,\"publish_every_seconds\":0,\"publish_when_idle\":false,"
             "\"checkpoint_every\":1}}",
             online_test_model());
    test_write_file(config, text, strlen(text));
}

/* Counts the occurrences of needle in the log (0 while the log does not exist yet). */
static int count_in_log(const char *log, const char *needle) {
    char *out = NULL;
    size_t len = 0;
    duel_error err = {0};
    if (duel_file_read_all(log, 1 << 20, &out, &len, &err)) return 0;
    int n = 0;
    for (const char *at = out; (at = strstr(at, needle)) != NULL; at++) n++;
    free(out);
    return n;
}

/* A folder for the run (make_run_dir), its redis-server (AOF always), a vote producer. */
static void start_run(const char *tag, unsigned seed, vote_producer *p, char *root, char *config, char *data,
                      char *log) {
    make_run_dir(tag, root, config, data, log);
    assert_int_equal(redis_fixture_start_with(&g_redis, tag, REDIS_SERVER_AOF_ALWAYS), 0);
    vote_producer_init(p, seed, 128, "tiny");
}

/* SIGTERM (exit status 0), then exactly once: the checkpoint's counts, each of the n vote ids
 * once, no duplicates, nothing pending in the group. */
static void stop_and_check_once(const char *data, char (*ids)[64], int n) {
    kill(g_trainer, SIGTERM);
    assert_int_equal(online_test_wait_exit(g_trainer, 60), 0);
    g_trainer = 0;
    char path[800];
    snprintf(path, sizeof path, "%s/trainer/checkpoint/state.json", data);
    json_t *st = NULL;
    duel_error err = {0};
    if (duel_json_load_file(path, 64 << 20, &st, &err)) fail_msg("%s", err.message);
    assert_int_equal(json_integer_value(json_object_get(st, "prefs_applied")), n);
    assert_int_equal(json_integer_value(json_object_get(st, "step")), n / 4);
    assert_int_equal(json_integer_value(json_object_get(st, "duplicates")), 0);
    json_t *recent = json_object_get(st, "recent_vote_ids");
    assert_int_equal((int)json_array_size(recent), n);
    for (int i = 0; i < n; i++) {
        int count = 0;
        for (size_t j = 0; j < json_array_size(recent); j++)
            count += strcmp(json_string_value(json_array_get(recent, j)), ids[i]) == 0;
        assert_int_equal(count, 1);
    }
    json_decref(st);
    redisContext *c = redis_fixture_connect(&g_redis);
    assert_non_null(c);
    redisReply *r = redisCommand(c, "XPENDING duel:prefs trainers");
    assert_non_null(r);
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    redisFree(c);
}

static void test_survives_redis_restarts(void **state) {
    (void)state;
    char root[512], config[700], data[700], log[700];
    vote_producer p;
    start_run("train-redis-restart", 77, &p, root, config, data, log);
    char ids[32][64];
    int n = 0;
    add_votes(&p, 8, ids, &n);
    g_trainer = online_test_spawn_train(g_redis.port, config, data, log, NULL);
    wait_for_status(8, 0);

    /* Redis dies while the trainer waits for votes; votes arrive after it is back. */
    crash_redis();
    add_votes(&p, 8, ids, &n);
    wait_for_status(16, 0);

    /* Redis dies with two pairs of a batch pending in the trainer (taken, not acknowledged):
     * the trainer checkpoints them; two more votes after the restart complete the batch. */
    add_votes(&p, 6, ids, &n);
    wait_for_status(20, 2);
    crash_redis();
    add_votes(&p, 2, ids, &n);
    wait_for_status(24, 0);

    stop_and_check_once(data, ids, n);
    if (count_in_log(log, "went away") != 2 || count_in_log(log, "is back after") != 2)
        fail_msg("the log does not tell of two outages and returns:\n%s", read_text(log));
    durable_remove_tree(root);
}

/* Redis down when the trainer starts: it keeps trying (logging it, not exiting) and, once Redis
 * is up, applies the votes that were queued before it started, exactly once. */
static void test_starts_before_redis(void **state) {
    (void)state;
    char root[512], config[700], data[700], log[700];
    vote_producer p;
    start_run("train-before-redis", 78, &p, root, config, data, log);
    char ids[8][64];
    int n = 0;
    add_votes(&p, 8, ids, &n);
    redis_server_stop(&g_redis, SIGTERM); /* the votes stay in its AOF; the port is known */
    g_trainer = online_test_spawn_train(g_redis.port, config, data, log, NULL);
    /* It must be waiting, not gone: two "still unreachable" lines (attempts 1 and 2) at least. */
    for (int i = 0; i < 3000 && count_in_log(log, "still unreachable") < 2; i++) {
        int status;
        if (waitpid(g_trainer, &status, WNOHANG) == g_trainer) {
            g_trainer = 0;
            fail_msg("duel train exited (status %d) while Redis was down:\n%s",
                     WIFEXITED(status) ? WEXITSTATUS(status) : 128, read_text(log));
        }
        online_test_sleep_ms(10);
    }
    assert_int_equal(count_in_log(log, "does not answer yet"), 1);
    assert_int_equal(redis_fixture_restart(&g_redis), 0);
    wait_for_status(8, 0);
    stop_and_check_once(data, ids, n);
    if (count_in_log(log, "answers after") != 1 || count_in_log(log, "went away") != 0)
        fail_msg("the log does not tell of the wait and the connection:\n%s", read_text(log));
    durable_remove_tree(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_starts_before_redis, teardown),
        cmocka_unit_test_teardown(test_survives_redis_restarts, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
