/* test_snapshot_swap.c: hot-swap in `duel serve` (gateway/snapshot_loader.c + the engine
 * adapter) against a real redis-server and the shipped default model: snapshots written with the
 * trainer's snapshot_write (weights perturbed) and registered the way trainer/stream_consumer.c
 * does (HSET duel:snapshot:{v} path ..., ZADD duel:snapshots, PUBLISH duel:notify) are loaded
 * and served: votes carry the policy_version that generated their candidates, /healthz and
 * /metrics report it. A truncated model.safetensors and a meta.json hash mismatch are refused
 * (counted once, never retried) while chat keeps working on the old snapshot. A later good
 * snapshot retires the old arm (its memory is freed: LeakSanitizer checks). Strategy arena pits
 * the latest snapshot against the base model; strategy pilaf mixes the snapshot's logits with the
 * base model's (its reference arm). Skips (exit 77) when models/default is missing. */
#include "gateway_test_util.h"

#include <math.h>

#include "duel.h"
#include "engine.h"
#include "snapshot_test_util.h"
#include "timer.h"

static char model_dir[1024];

static redisReply *rcmd(const tu_redis *r, redisContext **c, const char *fmt, ...) {
    if (!*c) *c = tu_redis_connect(r);
    assert_non_null(*c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(*c, fmt, ap);
    va_end(ap);
    assert_non_null(reply);
    assert_int_not_equal(reply->type, REDIS_REPLY_ERROR);
    return reply;
}

static void write_snapshot_at(const char *data_dir, long long v, double noise, int64_t created_ms,
                              int64_t votes_mean_ms, char *path, size_t cap) {
    tu_write_snapshot(model_dir, data_dir, v, noise, created_ms, votes_mean_ms, path, cap);
}

static void write_snapshot(const char *data_dir, long long v, double noise, char *path, size_t cap) {
    write_snapshot_at(data_dir, v, noise, 1700000000000LL + v, 0, path, cap);
}

/* A gauge of /metrics as a double; NAN when absent. */
static double metric_value(int port, const char *name) {
    char *body = NULL;
    assert_int_equal(tu_http_get(port, "/metrics", &body), 200);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = strstr(body, key);
    double v = at ? strtod(at + strlen(key), NULL) : NAN;
    free(body);
    return v;
}

/* What trainer/stream_consumer.c's register_snapshot does (path is what the loader reads). */
static void register_snapshot(const tu_redis *r, long long v, const char *path) {
    redisContext *c = NULL;
    freeReplyObject(rcmd(r, &c, "HSET duel:snapshot:%lld path %s parent %lld step %lld", v, path,
                         v - 1, 10 * v));
    freeReplyObject(rcmd(r, &c, "ZADD duel:snapshots %lld %lld", v, v));
    freeReplyObject(rcmd(r, &c, "PUBLISH duel:notify {\"kind\":\"snapshot\",\"version\":%lld}", v));
    redisFree(c);
}

static long long healthz_version(int port) {
    char *body = NULL;
    assert_int_equal(tu_http_get(port, "/healthz", &body), 200);
    const char *at = strstr(body, "policy_version: ");
    assert_true(strncmp(body, "ok\n", 3) == 0 && at);
    long long v = atoll(at + 16);
    free(body);
    return v;
}

/* Waits (up to 60 s: a loaded machine) until metric name reaches want. */
static void wait_metric(int port, const char *name, long long want) {
    for (int i = 0; i < 600; i++) {
        if (tu_metric(port, name) == want) return;
        tu_sleep_ms(100);
    }
    fail_msg("%s never reached %lld (is %lld)", name, want, tu_metric(port, name));
}

/* One duel and a vote; returns the policy_version field of the vote's stream entry. */
static long long duel_and_vote(ws_client *c, const tu_redis *r, long long entries_before) {
    tu_duel d;
    ws_ask_duel(c, "What is a river?", &d);
    assert_true(d.id[0]);
    assert_false(ws_vote(c, d.id, "a"));
    tu_duel_free(&d);
    redisContext *rc = NULL;
    redisReply *x = rcmd(r, &rc, "XREVRANGE duel:prefs + - COUNT 1");
    assert_int_equal(tu_redis_int(r, "XLEN duel:prefs"), entries_before + 1);
    assert_int_equal(x->type, REDIS_REPLY_ARRAY);
    assert_int_equal(x->elements, 1);
    redisReply *fields = x->element[0]->element[1];
    long long v = -1;
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (strcmp(fields->element[i]->str, "policy_version") == 0)
            v = atoll(fields->element[i + 1]->str);
    freeReplyObject(x);
    redisFree(rc);
    return v;
}

static void truncate_file(const char *dir, const char *name) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size / 2), 0);
}

/* Changes one hex digit of the model's sha256 in meta.json. */
static void corrupt_meta_hash(const char *dir) {
    char path[1200];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    json_t *meta = json_load_file(path, 0, NULL);
    assert_non_null(meta);
    json_t *files = json_object_get(meta, "files");
    char hash[65];
    snprintf(hash, sizeof hash, "%s", json_string_value(json_object_get(files, "model.safetensors")));
    hash[0] = hash[0] == '0' ? '1' : '0';
    json_object_set_new(files, "model.safetensors", json_string(hash));
    assert_int_equal(json_dump_file(meta, path, JSON_COMPACT), 0);
    json_decref(meta);
}

static void test_hot_swap_through_gateway(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    gateway_config gcfg;
    tu_gateway_config(&gcfg, &redis);
    gcfg.snapshot_loader = true;
    gcfg.snapshot_poll_ms = 200;
    backend_engine_config cfg = {.model_dir = model_dir, .erm_seed = 7, .num_candidates = 4,
                                 .temperature = 1.0f, .top_p = 1.0f, .max_new_tokens = 16,
                                 .kv_memory_bytes = 16u << 20, .snapshots = true};
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    assert_non_null(b.install_snapshot);
    tu_gateway g;
    memset(&g, 0, sizeof g);
    if (gateway_create(&gcfg, &b, &g.gw, &err)) fail_msg("%s", err.message);
    g.port = gateway_port(g.gw);
    assert_int_equal(pthread_create(&g.thread, NULL, tu_gateway_thread, &g), 0);
    char data[512];
    test_make_temp_dir("swap-data", data, sizeof data);

    ws_client c;
    assert_int_equal(ws_connect(&c, g.port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    assert_int_equal(duel_and_vote(&c, &redis, 0), 0); /* the base model */
    assert_int_equal(healthz_version(g.port), 0);
    assert_int_equal(tu_metric(g.port, "duel_serving_policy_version"), 0);
    /* no snapshot served yet: no latency to show */
    assert_true(isnan(metric_value(g.port, "duel_snapshot_publish_to_serve_seconds")));
    assert_true(isnan(metric_value(g.port, "duel_vote_to_serving_seconds")));

    /* v1: good. The next duel is v1's. Published 2 s ago, its votes 5 s ago on average: the
     * gateway's latency counts from those times to its install. */
    char dir[1024];
    int64_t written_ms = duel_time_unix_ms();
    write_snapshot_at(data, 1, 0.2, written_ms - 2000, written_ms - 5000, dir, sizeof dir);
    register_snapshot(&redis, 1, dir);
    wait_metric(g.port, "duel_serving_policy_version", 1);
    double waited_s = (double)(duel_time_unix_ms() - written_ms) / 1000.0;
    double publish_to_serve = metric_value(g.port, "duel_snapshot_publish_to_serve_seconds");
    double vote_to_serving = metric_value(g.port, "duel_vote_to_serving_seconds");
    assert_true(publish_to_serve >= 2.0 && publish_to_serve <= 2.0 + waited_s);
    assert_true(fabs(vote_to_serving - publish_to_serve - 3.0) < 1e-6); /* the same install time */
    assert_int_equal(healthz_version(g.port), 1);
    assert_int_equal(tu_metric(g.port, "duel_snapshot_loaded_total"), 1);
    assert_int_equal(duel_and_vote(&c, &redis, 1), 1);

    /* v2: model.safetensors truncated after meta.json was written: refused. */
    write_snapshot(data, 2, 0.2, dir, sizeof dir);
    truncate_file(dir, "model.safetensors");
    register_snapshot(&redis, 2, dir);
    wait_metric(g.port, "duel_snapshot_rejected_total", 1);
    assert_int_equal(duel_and_vote(&c, &redis, 2), 1); /* chat goes on, on v1 */

    /* v3: a meta.json hash that does not match: refused. */
    write_snapshot(data, 3, 0.2, dir, sizeof dir);
    corrupt_meta_hash(dir);
    register_snapshot(&redis, 3, dir);
    wait_metric(g.port, "duel_snapshot_rejected_total", 2);
    /* Several polls later it was not retried (refused once, remembered). */
    long long polls_seen = tu_metric(g.port, "duel_snapshot_newest_seen");
    assert_int_equal(polls_seen, 3);
    tu_sleep_ms(1000);
    assert_int_equal(tu_metric(g.port, "duel_snapshot_rejected_total"), 2);
    assert_int_equal(tu_metric(g.port, "duel_serving_policy_version"), 1);
    assert_int_equal(duel_and_vote(&c, &redis, 3), 1);

    /* v4: good again; v1 is retired and handed back (freed by the adapter). Its meta.json has
     * no votes_mean_ms (no new vote, or an older trainer): v1's figure is not shown as v4's. */
    write_snapshot(data, 4, 0.3, dir, sizeof dir);
    register_snapshot(&redis, 4, dir);
    wait_metric(g.port, "duel_serving_policy_version", 4);
    assert_true(isnan(metric_value(g.port, "duel_vote_to_serving_seconds")));
    assert_true(metric_value(g.port, "duel_snapshot_publish_to_serve_seconds") > 1e6); /* created 2023 */
    assert_int_equal(tu_metric(g.port, "duel_snapshot_loaded_total"), 2);
    assert_int_equal(duel_and_vote(&c, &redis, 4), 4);
    assert_int_equal(tu_metric(g.port, "duel_snapshot_rejected_total"), 2);

    ws_close(&c);
    tu_gateway_stop(&g);
    tu_redis_stop(&redis, SIGTERM);
}

/* The loader needs a backend that can hot-swap: the test backend cannot. */
static void test_loader_needs_hot_swap(void **state) {
    (void)state;
    tu_redis redis = {.port = 1}; /* never contacted */
    gateway_config gcfg;
    tu_gateway_config(&gcfg, &redis);
    gcfg.snapshot_loader = true;
    duel_backend b;
    backend_test_config bcfg = {.step_delay_ms = 1, .queue_capacity = 16};
    assert_int_equal(backend_test_create(&bcfg, &b, NULL), 0);
    gateway *gw = NULL;
    duel_error err = {0};
    assert_int_equal(gateway_create(&gcfg, &b, &gw, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "cannot hot-swap"));
    assert_null(gw);
}


typedef tu_sink arena_sink;

/* One duel for a conversation pinned to arm (-1: any, 0: the base model: a rollout's pin). */
static duel_backend_result *pinned_duel(duel_backend *b, arena_sink *s, uint64_t id, long long arm) {
    duel_backend_request req = {.request_id = id, .text = "What is a lake?", .arm_snapshot = arm,
                                .seed = 1000 + id};
    return tu_sink_duel(b, s, &req);
}

static duel_backend_result *arena_duel(duel_backend *b, arena_sink *s, uint64_t id) {
    return pinned_duel(b, s, id, -1);
}

/* Strategy arena in the adapter: ee_ts on the base model while it is the only arm; once a
 * snapshot is resident, one answer from the snapshot's half of the candidates and one from the
 * base model's half, recorded in gen_params (arena_split, arena_versions); a conversation pinned
 * to the base model (a rollout's "base" arm) is served by it alone. */
static void test_arena_against_base(void **state) {
    (void)state;
    backend_engine_config cfg = {.model_dir = model_dir, .erm_seed = 7, .num_candidates = 4,
                                 .temperature = 1.0f, .top_p = 1.0f, .max_new_tokens = 12,
                                 .kv_memory_bytes = 16u << 20, .snapshots = true,
                                 .strategy = "arena"};
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    arena_sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    assert_int_equal(b.start(b.impl, tu_sink_fn, &s, &err), 0);
    duel_backend_result *r = arena_duel(&b, &s, 1);
    assert_string_equal(r->strategy, "ee_ts");
    assert_int_equal(r->policy_version, 0);
    duel_backend_result_free(r);
    char data[512], dir[1024];
    test_make_temp_dir("arena-data", data, sizeof data);
    write_snapshot(data, 1, 0.2, dir, sizeof dir);
    if (b.install_snapshot(b.impl, 1, dir, &err)) fail_msg("install: %s", err.message);
    assert_int_equal(b.serving_version(b.impl), 1);
    for (uint64_t id = 2; id < 6; id++) {
        r = arena_duel(&b, &s, id);
        assert_string_equal(r->strategy, "arena");
        assert_int_equal(r->policy_version, 1);
        assert_int_equal(r->num_candidates, 4);
        int lo = r->cand_a < r->cand_b ? r->cand_a : r->cand_b;
        int hi = r->cand_a < r->cand_b ? r->cand_b : r->cand_a;
        assert_true(lo < 2 && hi >= 2); /* one from each arm */
        json_t *gp = json_loads(r->gen_params_json, 0, NULL);
        assert_int_equal(json_integer_value(json_object_get(gp, "arena_split")), 2);
        json_t *versions = json_object_get(gp, "arena_versions");
        assert_int_equal(json_integer_value(json_array_get(versions, 0)), 1);
        assert_int_equal(json_integer_value(json_array_get(versions, 1)), 0);
        json_decref(gp);
        duel_backend_result_free(r);
    }
    /* A conversation the rollout pins to "base" is served by the base model alone (no arena:
     * one arm), while the others get the snapshot. */
    r = pinned_duel(&b, &s, 7, 0);
    assert_int_equal(r->policy_version, 0);
    assert_string_equal(r->strategy, "ee_ts");
    duel_backend_result_free(r);
    r = pinned_duel(&b, &s, 8, 1);
    assert_int_equal(r->policy_version, 1);
    duel_backend_result_free(r);
    b.destroy(b.impl);
    /* Refused without snapshots (one arm) and with an odd M. */
    cfg.snapshots = false;
    assert_int_equal(backend_engine_create(&cfg, &b, &err), DUEL_EUNSUPPORTED);
    assert_non_null(strstr(err.message, "needs snapshots"));
    cfg.snapshots = true;
    cfg.num_candidates = 3;
    assert_int_equal(backend_engine_create(&cfg, &b, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "M must be even"));
}

/* Candidate i's tokens of r, copied into out (up to cap); their count. */
static int candidate_tokens(const duel_backend_result *r, int i, int32_t *out, int cap) {
    int n = r->cand_offsets[i + 1] - r->cand_offsets[i];
    assert_true(n <= cap);
    memcpy(out, r->cand_tokens + r->cand_offsets[i], (size_t)n * sizeof *out);
    return n;
}

/* Strategy pilaf while a snapshot serves: its reference arm is the base model. Greedy (T = 0)
 * with beta = 1, a MIXED duel's candidate 1 (y-) decodes from (1 - 1) h_snapshot + 1 h_base,
 * so it is the base model's own greedy answer, not the snapshot's; a PLAIN duel's two
 * candidates are the snapshot's greedy answer twice. Both modes are met among the seeds. */
static void test_pilaf_against_base(void **state) {
    (void)state;
    backend_engine_config cfg = {.model_dir = model_dir, .erm_seed = 7, .num_candidates = 4,
                                 .temperature = 0.0f, .top_p = 1.0f, .max_new_tokens = 12,
                                 .kv_memory_bytes = 16u << 20, .snapshots = true,
                                 .strategy = "pilaf", .pilaf_beta = 1.0};
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    tu_sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    assert_int_equal(b.start(b.impl, tu_sink_fn, &s, &err), 0);
    enum { CAP = 16 };
    int32_t base[CAP], snap[CAP], c0[CAP], c1[CAP];
    /* The base model alone (no snapshot yet): both candidates are its greedy answer. */
    duel_backend_result *r = pinned_duel(&b, &s, 1, -1);
    assert_int_equal(r->policy_version, 0);
    assert_int_equal(r->num_candidates, 2);
    int n_base = candidate_tokens(r, 0, base, CAP);
    assert_int_equal(candidate_tokens(r, 1, c1, CAP), n_base);
    assert_memory_equal(base, c1, (size_t)n_base * sizeof *base);
    duel_backend_result_free(r);
    char data[512], dir[1024];
    test_make_temp_dir("pilaf-data", data, sizeof data);
    write_snapshot(data, 1, 0.2, dir, sizeof dir);
    if (b.install_snapshot(b.impl, 1, dir, &err)) fail_msg("install: %s", err.message);
    int seen[2] = {0, 0}, n_snap = -1;
    for (uint64_t id = 2; id < 40 && !(seen[0] && seen[1]); id++) {
        duel_rng rng;
        duel_rng_seed(&rng, (1000 + id) ^ ENGINE_DUEL_SEED_SALT);
        const int mixed = duel_pilaf_draw_mode(&rng) == DUEL_PILAF_MIXED;
        if (seen[mixed]) continue;
        seen[mixed] = 1;
        r = pinned_duel(&b, &s, id, -1);
        assert_int_equal(r->policy_version, 1);
        assert_string_equal(r->strategy, "pilaf");
        assert_true(r->d_feat == 0 && !r->features && r->num_heads == 0 && !r->rewards);
        assert_true(isnan(r->regret_estimate));
        json_t *gp = json_loads(r->gen_params_json, 0, NULL);
        assert_int_equal(json_is_true(json_object_get(gp, "pilaf_mixed")), mixed);
        json_decref(gp);
        int n0 = candidate_tokens(r, 0, c0, CAP), n1 = candidate_tokens(r, 1, c1, CAP);
        if (mixed) {
            assert_int_equal(n1, n_base);
            assert_memory_equal(c1, base, (size_t)n_base * sizeof *base);
        } else {
            assert_int_equal(n0, n1);
            assert_memory_equal(c0, c1, (size_t)n0 * sizeof *c0);
            n_snap = n0;
            memcpy(snap, c0, (size_t)n0 * sizeof *c0);
        }
        duel_backend_result_free(r);
    }
    assert_true(seen[0] && seen[1]);
    /* the snapshot answers otherwise: y- above came from the base model, not from it */
    assert_true(n_snap != n_base || memcmp(snap, base, (size_t)n_base * sizeof *base) != 0);
    b.destroy(b.impl);
}

/* engine.weights applies to snapshots too: they are converted in install_snapshot (the loader
 * thread's call), not served as f32. Three adapters with snapshots serve the same perturbed
 * snapshot at temperature 3 (so that logits a little apart sample apart) for two duels of 4
 * candidates: q8 twice, f32 once. The two q8 adapters give the same candidates, the f32 one
 * others. */
static void snapshot_candidates(weight_format f, const char *snap, int32_t *out, size_t *n_out) {
    backend_engine_config cfg = {.model_dir = model_dir, .erm_seed = 7, .num_candidates = 4,
                                 .temperature = 3.0f, .top_p = 1.0f, .max_new_tokens = 12,
                                 .kv_memory_bytes = 16u << 20, .snapshots = true,
                                 .weights = f, .kv_bytes_per_element = 2};
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    arena_sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    assert_int_equal(b.start(b.impl, tu_sink_fn, &s, &err), 0);
    if (b.install_snapshot(b.impl, 1, snap, &err)) fail_msg("install: %s", err.message);
    *n_out = 0;
    for (uint64_t id = 1; id <= 2; id++) {
        duel_backend_result *r = arena_duel(&b, &s, id);
        assert_int_equal(r->policy_version, 1);
        memcpy(out + *n_out, r->cand_tokens, r->n_cand_tokens * sizeof *out);
        *n_out += r->n_cand_tokens;
        duel_backend_result_free(r);
    }
    b.destroy(b.impl);
}

static void test_snapshot_weights_converted(void **state) {
    (void)state;
    char data[512], dir[1024];
    test_make_temp_dir("weights-data", data, sizeof data);
    write_snapshot(data, 1, 0.2, dir, sizeof dir);
    int32_t q8a[2 * 4 * 12], q8b[2 * 4 * 12], f32[2 * 4 * 12];
    size_t na, nb, nf;
    snapshot_candidates(WEIGHT_Q8, dir, q8a, &na);
    snapshot_candidates(WEIGHT_Q8, dir, q8b, &nb);
    snapshot_candidates(WEIGHT_F32, dir, f32, &nf);
    assert_int_equal(na, nb);
    assert_memory_equal(q8a, q8b, na * sizeof *q8a);
    assert_true(na != nf || memcmp(q8a, f32, na * sizeof *q8a) != 0);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    snprintf(model_dir, sizeof model_dir, "%s/models/default", test_env("DUEL_SOURCE_DIR", "."));
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/model.safetensors", model_dir);
    if (access(probe, R_OK) != 0) {
        printf("SKIP: %s is missing\n", probe);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loader_needs_hot_swap),
        cmocka_unit_test(test_snapshot_weights_converted),
        cmocka_unit_test(test_hot_swap_through_gateway),
        cmocka_unit_test(test_arena_against_base),
        cmocka_unit_test(test_pilaf_against_base),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
