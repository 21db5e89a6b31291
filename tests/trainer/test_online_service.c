/* test_online_service.c: the online trainer end to end in one process, against a real
 * redis-server (tests/tools/redis_fixture.h) and the fixture model tiny-llama-f32: votes XADDed
 * by a scripted producer are applied exactly once, ties are counted, bad entries land in
 * duel:prefs:dead with their reason, snapshots are written, verified and registered, the status
 * hash is filled, a restart resumes from the checkpoint, and an entry delivered too often is
 * dead-lettered. */
#include "test_helpers.h"

#include <jansson.h>
#include <time.h>
#include <unistd.h>

#include "json_util.h"
#include "online_test_env.h"
#include "redis_fixture.h"
#include "snapshot_write.h"
#include "test_online_votes.h"

#define N_VOTES 46

typedef struct env {
    redis_fixture redis;
    redisContext *c;
    char data[512];
    online_trainer_options to;
    stream_consumer_options so;
} env;

/* The running test's redis-server, stopped by the teardown even when an assertion fails. */
static redis_fixture *g_redis;

static int stop_redis(void **state) {
    (void)state;
    if (g_redis) redis_fixture_stop(g_redis);
    g_redis = NULL;
    return 0;
}

static void env_init(env *e, const char *tag) {
    memset(e, 0, sizeof *e);
    g_redis = &e->redis;
    assert_int_equal(redis_fixture_start(&e->redis, tag), 0);
    e->c = redis_fixture_connect(&e->redis);
    assert_non_null(e->c);
    test_make_temp_dir(tag, e->data, sizeof e->data);
    online_test_options(&e->to);
    e->to.erm.min_pairs = 8;
    e->to.burn_in = 8; /* the SEA mixture starts at the third update */
    online_test_consumer_options(&e->so, e->redis.port, e->data);
}

static void env_free(env *e) {
    redisFree(e->c);
    redis_fixture_stop(&e->redis);
    redis_fixture_remove_dir(&e->redis);
    g_redis = NULL;
}

/* Opens a trainer on e's data folder (resuming its checkpoint) and its stream consumer. */
static void env_open(env *e, online_trainer **t, stream_consumer **sc) {
    duel_error err = {0};
    if (online_trainer_open(&e->to, e->data, t, &err)) fail_msg("%s", err.message);
    if (stream_consumer_open(&e->so, *t, sc, &err)) fail_msg("%s", err.message);
}

/* Closes both without a flush: what is not checkpointed is lost, as in a crash. */
static void env_close(stream_consumer *sc, online_trainer *t) {
    stream_consumer_close(sc);
    online_trainer_close(t);
}

static redisReply *cmd(redisContext *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR) fail_msg("%s: %s", fmt, r->str);
    return r;
}

static long long cmd_int(redisContext *c, const char *fmt, const char *arg) {
    redisReply *r = cmd(c, fmt, arg);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static json_t *load_state(const char *data) {
    char path[700];
    snprintf(path, sizeof path, "%s/trainer/checkpoint/state.json", data);
    json_t *state = NULL;
    duel_error err;
    if (duel_json_load_file(path, 64 << 20, &state, &err)) fail_msg("%s", err.message);
    return state;
}

static void test_applies_votes_exactly_once(void **state) {
    (void)state;
    env e;
    env_init(&e, "online-svc");
    vote_producer p;
    vote_producer_init(&p, 42, 128, "tiny");
    char ids[N_VOTES][64];
    int n_ab = 0, n_tie = 0, n_bad = 0;
    for (int i = 0; i < N_VOTES; i++) {
        vote_kind k = vote_script_kind(i);
        vote_producer_add(&p, e.c, "duel:prefs", "*", k, ids[i]);
        n_ab += k == VOTE_AB;
        n_tie += k == VOTE_TIE;
        n_bad += k != VOTE_AB && k != VOTE_TIE;
    }
    assert_int_equal(n_ab % 4, 0); /* whole batches: every pair is applied */
    online_trainer *t;
    stream_consumer *sc;
    duel_error err = {0};
    env_open(&e, &t, &sc);
    online_test_drain(sc);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_int_equal(s.prefs_applied, n_ab);
    assert_int_equal(s.step, n_ab / 4);
    assert_int_equal(s.ties, n_tie);
    assert_int_equal(s.duplicates, 0);
    assert_int_equal(s.published_version, n_ab / 4 / 3);
    assert_true(isfinite(s.loss) && isfinite(s.kl) && s.lr > 0);
    assert_true(s.erm_scored == n_ab);
    /* Nothing pending; every entry acknowledged. */
    redisReply *r = cmd(e.c, "XPENDING duel:prefs trainers");
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    /* The dead-letter stream holds exactly the bad entries, with reasons. */
    r = cmd(e.c, "XRANGE duel:prefs:dead - +");
    assert_int_equal((int)r->elements, n_bad);
    const char *want[] = {"missing field cand_tokens", "model_id 'someone-else' is not the trainer's 'tiny'",
                          "features: 2044 bytes, expected 2048"};
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        const char *reason = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "dead_reason") == 0) reason = f->element[k + 1]->str;
        assert_non_null(reason);
        if (!strstr(reason, want[i])) fail_msg("reason '%s', wanted '%s'", reason, want[i]);
    }
    freeReplyObject(r);
    /* Every valid vote id recorded exactly once in the checkpoint. */
    json_t *st = load_state(e.data);
    json_t *recent = json_object_get(st, "recent_vote_ids");
    assert_int_equal((int)json_array_size(recent), n_ab + n_tie);
    for (int i = 0; i < N_VOTES; i++) {
        vote_kind k = vote_script_kind(i);
        int count = 0;
        for (size_t j = 0; j < json_array_size(recent); j++)
            count += strcmp(json_string_value(json_array_get(recent, j)), ids[i]) == 0;
        assert_int_equal(count, k == VOTE_AB || k == VOTE_TIE ? 1 : 0);
    }
    json_decref(st);
    /* Status hash and snapshot registry. */
    r = cmd(e.c, "HGET duel:trainer:status prefs_applied");
    assert_int_equal(atoi(r->str), n_ab);
    freeReplyObject(r);
    assert_true(s.synthetic_total > 0);
    r = cmd(e.c, "HGET duel:trainer:status synthetic_total");
    assert_int_equal(atoll(r->str), s.synthetic_total);
    freeReplyObject(r);
    r = cmd(e.c, "HGET duel:trainer:status update_gflop"); /* what `duel bench loop` divides by the votes */
    assert_true(s.update_flops > 0);
    assert_true(fabs(atof(r->str) - s.update_flops / 1e9) <= 1e-5 * (s.update_flops / 1e9));
    freeReplyObject(r);
    assert_int_equal(cmd_int(e.c, "ZCARD %s", "duel:snapshots"), s.published_version);
    for (int64_t v = 1; v <= s.published_version; v++) {
        char dir[1024], key[64];
        assert_int_equal(snapshot_path(e.data, v, dir, sizeof dir, NULL), 0);
        int64_t got = 0;
        if (snapshot_verify(dir, &got, &err)) fail_msg("%s", err.message);
        assert_int_equal(got, v);
        snprintf(key, sizeof key, "duel:snapshot:%lld", (long long)v);
        r = cmd(e.c, "HGET %s path", key);
        assert_string_equal(r->str, dir);
        freeReplyObject(r);
        r = cmd(e.c, "HGET %s sha256:model.safetensors", key);
        assert_int_equal((int)r->len, 64);
        freeReplyObject(r);
    }
    /* A corrupted snapshot file is refused by the verifier. */
    char dir[1024], file[1100];
    snapshot_path(e.data, 1, dir, sizeof dir, NULL);
    snprintf(file, sizeof file, "%s/erm.safetensors", dir);
    FILE *fp = fopen(file, "r+b");
    assert_non_null(fp);
    fseek(fp, -3, SEEK_END);
    fputc(0x5a, fp);
    fclose(fp);
    assert_int_equal(snapshot_verify(dir, NULL, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "erm.safetensors"));
    /* Restart: state comes back from the checkpoint; old entries are not re-applied. */
    env_close(sc, t);
    if (online_trainer_open(&e.to, e.data, &t, &err)) fail_msg("%s", err.message);
    online_trainer_status s2;
    online_trainer_get_status(t, &s2);
    assert_int_equal(s2.step, s.step);
    assert_string_equal(s2.last_applied_id, s.last_applied_id);
    if (stream_consumer_open(&e.so, t, &sc, &err)) fail_msg("%s", err.message);
    /* The same vote id again (a producer replay) is a duplicate; four new votes make a batch. */
    vote_producer q;
    vote_producer_init(&q, 42, 128, "tiny"); /* same seed: same first vote id */
    vote_producer_add(&q, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    for (int i = 0; i < 4; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    online_test_drain(sc);
    online_trainer_get_status(t, &s2);
    assert_int_equal(s2.step, s.step + 1);
    assert_int_equal(s2.duplicates, 1);
    assert_int_equal(s2.prefs_applied, n_ab + 4);
    env_close(sc, t);
    env_free(&e);
}

static void test_redelivered_too_often_goes_dead(void **state) {
    (void)state;
    env e;
    env_init(&e, "online-dead");
    e.so.max_deliveries = 3;
    vote_producer p;
    vote_producer_init(&p, 7, 128, "tiny");
    redisReply *r = cmd(e.c, "XGROUP CREATE duel:prefs trainers 0 MKSTREAM");
    freeReplyObject(r);
    vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    /* Deliver it to trainer-1 four times, as four crashed runs would have. */
    for (int i = 0; i < 4; i++) {
        r = cmd(e.c, i == 0 ? "XREADGROUP GROUP trainers trainer-1 STREAMS duel:prefs >"
                            : "XREADGROUP GROUP trainers trainer-1 STREAMS duel:prefs 0");
        freeReplyObject(r);
    }
    online_trainer *t;
    stream_consumer *sc;
    env_open(&e, &t, &sc);
    online_test_drain(sc);
    r = cmd(e.c, "XRANGE duel:prefs:dead - +");
    assert_int_equal((int)r->elements, 1);
    redisReply *f = r->element[0]->element[1];
    int found = 0;
    for (size_t k = 0; k + 1 < f->elements; k += 2)
        if (strcmp(f->element[k]->str, "dead_reason") == 0)
            found = strstr(f->element[k + 1]->str, "delivered 5 times (limit 3)") != NULL;
    assert_true(found);
    freeReplyObject(r);
    r = cmd(e.c, "XPENDING duel:prefs trainers");
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    env_close(sc, t);
    env_free(&e);
}

static long long pending_count(redisContext *c) {
    redisReply *r = cmd(c, "XPENDING duel:prefs trainers");
    long long n = r->element[0]->integer;
    freeReplyObject(r);
    return n;
}

/* checkpoint_every 3: entries stay unacknowledged until the third update's checkpoint; a crash
 * after the fourth update loses it, and the resumed run applies every vote exactly once. */
static void test_checkpoint_every_defers_acks(void **state) {
    (void)state;
    env e;
    env_init(&e, "online-ckpt-every");
    e.to.checkpoint_every = 3;
    e.to.publish_every = 0;
    e.so.read_count = 4; /* one batch per round */
    vote_producer p;
    vote_producer_init(&p, 11, 128, "tiny");
    for (int i = 0; i < 20; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    online_trainer *t;
    stream_consumer *sc;
    duel_error err = {0};
    env_open(&e, &t, &sc);
    char state_path[700];
    snprintf(state_path, sizeof state_path, "%s/trainer/checkpoint/state.json", e.data);
    const long long want_pending[4] = {4, 8, 0, 4};
    for (int k = 0; k < 4; k++) {
        assert_int_equal(online_test_poll_some(sc), 4);
        online_trainer_status s;
        online_trainer_get_status(t, &s);
        assert_int_equal(s.step, k + 1);
        assert_int_equal(pending_count(e.c), want_pending[k]);
        assert_int_equal(access(state_path, F_OK) == 0, k >= 2); /* first checkpoint at update 3 */
    }
    /* The status hash follows every update, the checkpoint only every third. */
    redisReply *r = cmd(e.c, "HGET duel:trainer:status step");
    assert_int_equal(atoi(r->str), 4);
    freeReplyObject(r);
    /* "Crash": no flush. The restart resumes at update 3 and re-applies update 4 from Redis. */
    env_close(sc, t);
    if (online_trainer_open(&e.to, e.data, &t, &err)) fail_msg("%s", err.message);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 3);
    if (stream_consumer_open(&e.so, t, &sc, &err)) fail_msg("%s", err.message);
    online_test_drain(sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 5);
    assert_int_equal(s.prefs_applied, 20);
    assert_int_equal(s.duplicates, 0);
    assert_int_equal(pending_count(e.c), 0); /* the idle round checkpointed and acknowledged */
    env_close(sc, t);
    env_free(&e);
}

/* publish_every_seconds: a snapshot once that long has passed with an update unpublished, also
 * when the stream is idle; none without a new update, none at all while the interval is long. */
static void test_publish_every_seconds(void **state) {
    (void)state;
    env e;
    env_init(&e, "online-pub-secs");
    e.to.publish_every = 0;
    e.to.publish_every_seconds = 1000;
    vote_producer p;
    vote_producer_init(&p, 12, 128, "tiny");
    for (int i = 0; i < 8; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    online_trainer *t;
    stream_consumer *sc;
    duel_error err = {0};
    env_open(&e, &t, &sc);
    online_test_drain(sc);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 2);
    assert_int_equal(s.published_version, 0);
    env_close(sc, t);
    e.to.publish_every_seconds = 0.05;
    env_open(&e, &t, &sc);
    online_test_drain(sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.published_version, 0); /* nothing new since the start */
    for (int i = 0; i < 4; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    online_test_drain(sc);
    online_test_sleep_ms(100);
    online_test_drain(sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 3);
    assert_int_equal(s.published_version, 1); /* at the update or in an idle round after it */
    online_test_sleep_ms(100);
    online_test_drain(sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.published_version, 1);
    assert_int_equal(cmd_int(e.c, "ZCARD %s", "duel:snapshots"), 1);
    char dir[1024];
    assert_int_equal(snapshot_path(e.data, 1, dir, sizeof dir, NULL), 0);
    if (snapshot_verify(dir, NULL, &err)) fail_msg("%s", err.message);
    env_close(sc, t);
    env_free(&e);
}

static bool snapshot_exists(const char *data, int64_t v) {
    char dir[1024];
    assert_int_equal(snapshot_path(data, v, dir, sizeof dir, NULL), 0);
    return access(dir, F_OK) == 0;
}

static long long snapshot_meta_int(const char *data, int64_t v, const char *key) {
    char dir[1024], path[1100];
    assert_int_equal(snapshot_path(data, v, dir, sizeof dir, NULL), 0);
    snprintf(path, sizeof path, "%s/meta.json", dir);
    json_t *meta = NULL;
    duel_error err;
    if (duel_json_load_file(path, 1 << 20, &meta, &err)) fail_msg("%s", err.message);
    long long x = json_integer_value(json_object_get(meta, key));
    json_decref(meta);
    return x;
}

/* publish_when_idle: each update is published as soon as the trainer has caught up with the
 * stream, without waiting for a checkpoint (checkpoint_every 3: the entries stay pending).
 * keep_snapshots 2: older snapshots are unregistered and deleted, except one duel:rollout pins. */
static void test_publish_when_idle_and_prune(void **state) {
    (void)state;
    env e;
    env_init(&e, "online-pub-idle");
    e.to.publish_every = 0;
    e.to.publish_when_idle = true;
    e.to.keep_snapshots = 2;
    e.to.checkpoint_every = 3;
    vote_producer p;
    vote_producer_init(&p, 13, 128, "tiny");
    online_trainer *t;
    stream_consumer *sc;
    duel_error err = {0};
    env_open(&e, &t, &sc);
    char state_path[700];
    snprintf(state_path, sizeof state_path, "%s/trainer/checkpoint/state.json", e.data);
    for (int i = 0; i < 4; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    assert_int_equal(online_test_poll_some(sc), 4);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 1);
    assert_int_equal(s.published_version, 1);          /* right after the update */
    assert_int_equal(cmd_int(e.c, "ZCARD %s", "duel:snapshots"), 1);
    assert_int_equal(pending_count(e.c), 4);           /* no checkpoint forced by the snapshot */
    assert_int_equal(access(state_path, F_OK), -1);
    assert_int_equal(snapshot_meta_int(e.data, 1, "prefs_applied"), 4);
    /* A partial batch alone publishes nothing. */
    for (int i = 0; i < 2; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    assert_int_equal(online_test_poll_some(sc), 2);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.published_version, 1);
    for (int i = 0; i < 2; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    assert_int_equal(online_test_poll_some(sc), 2);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.published_version, 2);
    /* v3 makes v1 the oldest beyond the newest two: gone from the registry and the disk. */
    for (int i = 0; i < 4; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    assert_int_equal(online_test_poll_some(sc), 4);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.published_version, 3);
    assert_false(snapshot_exists(e.data, 1));
    assert_true(snapshot_exists(e.data, 2) && snapshot_exists(e.data, 3));
    assert_int_equal(cmd_int(e.c, "ZCARD %s", "duel:snapshots"), 2);
    assert_int_equal(cmd_int(e.c, "EXISTS %s", "duel:snapshot:1"), 0);
    /* A rollout pin keeps v2 past its turn. */
    freeReplyObject(cmd(e.c, "SET duel:rollout %s", "{\"arms\":[{\"snapshot\":2,\"weight\":100}]}"));
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 4; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
        assert_int_equal(online_test_poll_some(sc), 4);
    }
    online_trainer_get_status(t, &s);
    assert_int_equal(s.published_version, 5);
    assert_true(snapshot_exists(e.data, 2));
    assert_false(snapshot_exists(e.data, 3));
    assert_true(snapshot_exists(e.data, 4) && snapshot_exists(e.data, 5));
    assert_int_equal(cmd_int(e.c, "ZCARD %s", "duel:snapshots"), 3);
    assert_int_equal(cmd_int(e.c, "EXISTS %s", "duel:snapshot:2"), 1);
    for (int64_t v = 4; v <= 5; v++) {
        char dir[1024];
        assert_int_equal(snapshot_path(e.data, v, dir, sizeof dir, NULL), 0);
        if (snapshot_verify(dir, NULL, &err)) fail_msg("%s", err.message);
    }
    env_close(sc, t);
    env_free(&e);
}

/* A crash after snapshots the checkpoint does not record yet: the resumed run publishes the
 * same versions again at the same steps (a damaged folder is rewritten), and only then new ones,
 * so a version never names two different states. */
static void test_snapshots_replayed_after_crash(void **state) {
    (void)state;
    env e;
    env_init(&e, "online-pub-replay");
    e.to.publish_every = 1;
    e.to.checkpoint_every = 3;
    e.so.read_count = 4; /* one batch per round */
    vote_producer p;
    vote_producer_init(&p, 14, 128, "tiny");
    for (int i = 0; i < 24; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    online_trainer *t;
    stream_consumer *sc;
    duel_error err = {0};
    env_open(&e, &t, &sc);
    for (int k = 0; k < 5; k++) assert_int_equal(online_test_poll_some(sc), 4);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 5);
    assert_int_equal(s.published_version, 5); /* the checkpoint (update 3) records v3 */
    /* "Crash": no flush; v5's weights are damaged on disk. */
    env_close(sc, t);
    char dir[1024], path[1100];
    assert_int_equal(snapshot_path(e.data, 5, dir, sizeof dir, NULL), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(truncate(path, 100), 0);
    if (online_trainer_open(&e.to, e.data, &t, &err)) fail_msg("%s", err.message);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 3);
    assert_int_equal(s.published_version, 3);
    if (stream_consumer_open(&e.so, t, &sc, &err)) fail_msg("%s", err.message);
    online_test_drain(sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 6);
    assert_int_equal(s.prefs_applied, 24);
    assert_int_equal(s.published_version, 6);
    assert_int_equal(cmd_int(e.c, "ZCARD %s", "duel:snapshots"), 6);
    for (int64_t v = 1; v <= 6; v++) {
        assert_int_equal(snapshot_meta_int(e.data, v, "step"), v);
        assert_int_equal(snapshot_meta_int(e.data, v, "prefs_applied"), 4 * v);
        assert_int_equal(snapshot_path(e.data, v, dir, sizeof dir, NULL), 0);
        if (snapshot_verify(dir, NULL, &err)) fail_msg("v%lld: %s", (long long)v, err.message);
    }
    env_close(sc, t);
    env_free(&e);
}

/* max_batch_size: a trainer that keeps up applies everything pending once it has caught up with
 * the stream (at least batch_size pairs); one that is behind applies batches of max_batch_size.
 * The cuts are logged, so after a crash the updates the checkpoint lost end where they ended
 * before and a republished version holds the same votes (here v4, damaged on disk and written
 * again); without the log the replay would cut at the maximum from the start (16, 16, 16, ...). */
static void test_batches_grow_behind_the_stream(void **state) {
    (void)state;
    env e;
    env_init(&e, "online-grow");
    e.to.max_batch_size = 16;
    e.to.publish_every = 1;
    e.to.checkpoint_every = 1000; /* nothing checkpointed: the restart replays every update */
    vote_producer p;
    vote_producer_init(&p, 21, 128, "tiny");
    online_trainer *t;
    stream_consumer *sc;
    duel_error err = {0};
    env_open(&e, &t, &sc);
    online_trainer_status s;
    for (int i = 0; i < 10; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    assert_int_equal(online_test_poll_some(sc), 10);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 1); /* caught up: all 10 in one batch (fixed batches: 2 of 4) */
    assert_int_equal(s.prefs_applied, 10);
    for (int i = 0; i < 40; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    assert_int_equal(online_test_poll_some(sc), 40);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 4); /* behind: 16 and 16, then the 8 left once caught up */
    assert_int_equal(s.prefs_applied, 50);
    assert_int_equal(s.published_version, 4);
    /* "Crash" without a checkpoint; v4's weights damaged on disk; more votes meanwhile. */
    env_close(sc, t);
    char dir[1024], path[1100];
    assert_int_equal(snapshot_path(e.data, 4, dir, sizeof dir, NULL), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(truncate(path, 100), 0);
    for (int i = 0; i < 20; i++) vote_producer_add(&p, e.c, "duel:prefs", "*", VOTE_AB, NULL);
    env_open(&e, &t, &sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 0);
    online_test_drain(sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 6); /* 10, 16, 16, 8 replayed; then 16 (behind) and 4 */
    assert_int_equal(s.prefs_applied, 70);
    assert_int_equal(s.published_version, 6);
    const long long prefs[6] = {10, 26, 42, 50, 66, 70};
    for (int64_t v = 1; v <= 6; v++) {
        assert_int_equal(snapshot_meta_int(e.data, v, "prefs_applied"), prefs[v - 1]);
        assert_int_equal(snapshot_path(e.data, v, dir, sizeof dir, NULL), 0);
        if (snapshot_verify(dir, NULL, &err)) fail_msg("v%lld: %s", (long long)v, err.message);
    }
    assert_int_equal(pending_count(e.c), 0); /* drain's idle rounds checkpointed and acknowledged */
    stream_consumer_close(sc);
    online_trainer_close(t);
    env_free(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_applies_votes_exactly_once, stop_redis),
        cmocka_unit_test_teardown(test_redelivered_too_often_goes_dead, stop_redis),
        cmocka_unit_test_teardown(test_checkpoint_every_defers_acks, stop_redis),
        cmocka_unit_test_teardown(test_publish_every_seconds, stop_redis),
        cmocka_unit_test_teardown(test_publish_when_idle_and_prune, stop_redis),
        cmocka_unit_test_teardown(test_snapshots_replayed_after_crash, stop_redis),
        cmocka_unit_test_teardown(test_batches_grow_behind_the_stream, stop_redis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
