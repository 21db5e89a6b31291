/* test_redis_worker.c: the gateway's Redis thread (gateway/redis_worker.c) against a real
 * redis-server, where a pipelined command fails half-way.
 * - A conversation save whose append fails (injected, as an out-of-memory hiredis would) must
 *   leave no reply unread: a save once took two commands (HSET, EXPIRE), and when only the first
 *   was appended its reply stayed in the connection, so the next vote read it as its own and was
 *   acknowledged as stored although Redis had refused it.
 * - A vote whose XADD Redis refuses (here duel:prefs of the wrong type) is spilled, acknowledged
 *   as queued, and stored once when Redis takes it again: the script once claimed the vote id
 *   before the XADD, so the failed XADD left the claim behind and the replay was dropped as a
 *   duplicate (the vote lost).
 * - redis.ack_replicas: with no replica to confirm it (WAIT), a vote Redis stored is acknowledged
 *   only as queued and stays in the spill log; once a replica attaches, the replay is confirmed,
 *   the log drains, and the stream still holds the vote once. */
#include "gateway_test_util.h"

#include <stdatomic.h>

#include "redis_link.h"
#include "redis_worker.h"

typedef struct fault_plan {
    atomic_int armed;   /* appends to let through before failing one; -1: off */
    atomic_int failed;  /* appends failed */
} fault_plan;

static bool append_fault(void *ctx, const char *command) {
    (void)command;
    fault_plan *p = ctx;
    int left = atomic_load(&p->armed);
    if (left < 0) return false;
    if (left > 0) {
        atomic_store(&p->armed, left - 1);
        return false;
    }
    atomic_store(&p->armed, -1);
    atomic_fetch_add(&p->failed, 1);
    return true;
}

typedef struct results {
    pthread_mutex_t mu;
    int votes;
    bool queued;
    char duel[33];
} results;

static void on_result(void *ctx, redis_result *r) {
    results *res = ctx;
    pthread_mutex_lock(&res->mu);
    if (r->kind == REDIS_RESULT_VOTE || r->kind == REDIS_RESULT_VOTE_FAILED) {
        res->votes++;
        res->queued = r->kind == REDIS_RESULT_VOTE_FAILED ? false : r->queued;
        memcpy(res->duel, r->key, sizeof res->duel);
    }
    pthread_mutex_unlock(&res->mu);
    free(r->json);
}

static int votes_seen(results *res) {
    pthread_mutex_lock(&res->mu);
    int n = res->votes;
    pthread_mutex_unlock(&res->mu);
    return n;
}

static void redis_cmd(const tu_redis *r, const char *cmd) {
    redisContext *c = tu_redis_connect(r);
    assert_non_null(c);
    redisReply *reply = redisCommand(c, cmd);
    assert_non_null(reply);
    freeReplyObject(reply);
    redisFree(c);
}

static bool wait_for(const tu_redis *r, const char *cmd, long long want) {
    for (int i = 0; i < 500; i++) { /* 5 s */
        if (tu_redis_int(r, cmd) == want) return true;
        tu_sleep_ms(10);
    }
    return false;
}

static char *conversation_json(void) {
    return strdup("{\"turns\":[{\"user\":\"hi\",\"assistant\":\"hello\"}],\"arm\":0,\"created\":1}");
}

static void submit_vote(redis_worker *w, const char *vote_id, const char *duel_id) {
    vote_entry_encoded enc = {0};
    enc.fields[0] = (vote_entry_field){"vote_id", 7, vote_id, strlen(vote_id)};
    enc.fields[1] = (vote_entry_field){"duel_id", 7, duel_id, strlen(duel_id)};
    enc.n_fields = 2;
    assert_int_equal(redis_worker_submit_vote(w, 1, duel_id, &enc), 0);
}

static void test_failed_append_shifts_no_reply(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    char spill[600];
    snprintf(spill, sizeof spill, "%s/spill.log", redis.dir);
    fault_plan plan = {.armed = -1};
    results res = {.mu = PTHREAD_MUTEX_INITIALIZER};
    redis_worker_config cfg = {.host = "127.0.0.1", .port = redis.port, .timeout_ms = 1000,
                               .retry_ms = 20, .spill_path = spill, .stream_key = "duel:prefs",
                               .conversation_ttl_s = 600, .vote_dedup_ttl_s = 600,
                               .rollout_poll_ms = 60000, .append_fault = append_fault,
                               .fault_ctx = &plan};
    redis_cmd(&redis, "SET duel:rollout {}");
    redis_worker *w;
    duel_error err = {0};
    if (redis_worker_create(&cfg, on_result, &res, &w, &err)) fail_msg("%s", err.message);
    /* Its first rollout poll done (the next is a minute away), so that nothing but the votes
     * reads a reply left behind by the saves. */
    uint64_t seen = 0;
    char *rollout = NULL;
    for (int i = 0; i < 500 && !redis_worker_rollout_changed(w, &seen, &rollout); i++) tu_sleep_ms(10);
    assert_non_null(rollout);
    free(rollout);

    /* Two saves; the second append fails (the old code: save one's HSET appended, its EXPIRE
     * refused). */
    atomic_store(&plan.armed, 1);
    assert_int_equal(redis_worker_save_conversation(w, "c1", conversation_json()), 0);
    assert_int_equal(redis_worker_save_conversation(w, "c2", conversation_json()), 0);
    assert_true(wait_for(&redis, "EXISTS duel:conv:c1", 1));
    for (int i = 0; i < 500 && atomic_load(&plan.failed) == 0; i++) tu_sleep_ms(10);
    assert_int_equal(atomic_load(&plan.failed), 1);

    /* Redis refuses the next vote's XADD: it must not be acknowledged as stored. */
    redis_cmd(&redis, "SET duel:prefs not-a-stream");
    submit_vote(w, "v-refused", "d-refused");
    for (int i = 0; i < 500 && votes_seen(&res) < 1; i++) tu_sleep_ms(10);
    assert_int_equal(votes_seen(&res), 1);
    assert_string_equal(res.duel, "d-refused");
    assert_true(res.queued); /* spilled, not "stored" on another command's reply */
    assert_int_equal(tu_redis_int(&redis, "EXISTS duel:vote:v-refused"), 0);

    /* Redis takes writes to the stream again: the spilled vote is replayed and stored once, and
     * a new vote goes in behind it. */
    redis_cmd(&redis, "DEL duel:prefs");
    submit_vote(w, "v-next", "d-next");
    assert_true(wait_for(&redis, "XLEN duel:prefs", 2));
    redis_worker_stats st;
    for (int i = 0; i < 500; i++) { /* the log is consumed after Redis answered */
        redis_worker_get_stats(w, &st);
        if (st.spill_pending == 0) break;
        tu_sleep_ms(10);
    }
    assert_int_equal(st.spill_pending, 0);
    assert_in_range(st.votes_replayed, 1, 2); /* v-next too when it came before the replay */
    assert_int_equal(tu_redis_int(&redis, "EXISTS duel:vote:v-refused"), 1);
    tu_sleep_ms(100); /* a second replay would show here */
    assert_int_equal(tu_redis_int(&redis, "XLEN duel:prefs"), 2);
    /* The saved conversation expires: its HSET and EXPIRE are one command. */
    long long ttl = tu_redis_int(&redis, "TTL duel:conv:c1");
    assert_in_range(ttl, 1, 600);
    redis_worker_destroy(w);
    tu_redis_stop(&redis, SIGTERM);
}

static void test_ack_replicas_waits_for_a_replica(void **state) {
    (void)state;
    tu_redis master = {0}, replica = {0};
    tu_redis_start(&master);
    char spill[600];
    snprintf(spill, sizeof spill, "%s/spill.log", master.dir);
    results res = {.mu = PTHREAD_MUTEX_INITIALIZER};
    redis_link_config link;
    assert_int_equal(redis_link_config_read(&link, NULL, "test", NULL), 0);
    link.ack_replicas = 1;
    link.ack_timeout_ms = 50;
    redis_worker_config cfg = {.link = &link, .host = "127.0.0.1", .port = master.port, .timeout_ms = 1000,
                               .retry_ms = 20, .spill_path = spill, .stream_key = "duel:prefs",
                               .conversation_ttl_s = 600, .vote_dedup_ttl_s = 600, .rollout_poll_ms = 60000};
    redis_worker *w;
    duel_error err = {0};
    if (redis_worker_create(&cfg, on_result, &res, &w, &err)) fail_msg("%s", err.message);
    submit_vote(w, "v-1", "d-1");
    for (int i = 0; i < 500 && votes_seen(&res) < 1; i++) tu_sleep_ms(10);
    assert_int_equal(votes_seen(&res), 1);
    assert_true(res.queued); /* in Redis, but no replica confirmed it: not "stored" */
    assert_int_equal(tu_redis_int(&master, "XLEN duel:prefs"), 1);
    redis_worker_stats st;
    redis_worker_get_stats(w, &st);
    assert_int_equal(st.spill_pending, 1);
    assert_true(st.votes_unreplicated >= 1);
    assert_int_equal(st.votes_replayed, 0);

    /* A replica attaches: the replay is confirmed, the log drains, the vote is stored once. */
    tu_redis_start(&replica);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "REPLICAOF 127.0.0.1 %d", master.port);
    redisContext *c = tu_redis_connect(&replica);
    assert_non_null(c);
    redisReply *reply = redisCommand(c, cmd);
    assert_non_null(reply);
    freeReplyObject(reply);
    redisFree(c);
    for (int i = 0; i < 1000; i++) { /* 10 s: the replica's first sync */
        redis_worker_get_stats(w, &st);
        if (st.spill_pending == 0) break;
        tu_sleep_ms(10);
    }
    assert_int_equal(st.spill_pending, 0);
    assert_int_equal(st.votes_replayed, 1);
    assert_int_equal(tu_redis_int(&master, "XLEN duel:prefs"), 1);
    redis_worker_destroy(w);
    tu_redis_stop(&replica, SIGTERM);
    tu_redis_stop(&master, SIGTERM);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failed_append_shifts_no_reply),
        cmocka_unit_test(test_ack_replicas_waits_for_a_replica),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
