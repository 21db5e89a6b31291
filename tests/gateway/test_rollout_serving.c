/* test_rollout_serving.c: serving by rollout arm (issue 20, docs/SERVING.md "Rollouts") on the
 * shipped default model. In the engine adapter: a pinned version stays resident beside the
 * latest and serves the duels pinned to it; a battle takes one answer from each of two arms and
 * names both in gen_params; a version no pin needs any more is retired and its duels go to the
 * latest. Through a gateway with a real redis-server: the loader makes the versions duel:rollout
 * pins resident, every vote carries the arm (gen_params "arm") the client's id is assigned to and
 * the policy version of that arm, battles at arena_fraction name both arms, an arm lowered to
 * weight 0 is retired and its users served by the other, and duel:stats and /metrics carry the
 * revision served. Skips (exit 77) when models/default is missing. */
#include "gateway_test_util.h"

#include <math.h>

#include "oracle.h"
#include "rollout_spec.h"
#include "rollout_store.h"
#include "snapshot_test_util.h"

static char model_dir[1024];
/* Written once for every test: v1 and v3 the default model lightly perturbed (as good as it),
 * v2 a damaged copy (every weight scaled by 1 + 2 U(-1, 1): it answers noise). */
static char snap_dir[4][1024];

static void write_snapshot(const char *data_dir, long long v, double noise, char *path, size_t cap) {
    tu_write_snapshot(model_dir, data_dir, v, noise, 1700000000000LL + v, 0, path, cap);
}

typedef tu_sink sink;

static duel_backend_result *run_duel(duel_backend *b, sink *s, const duel_backend_request *req) {
    return tu_sink_duel(b, s, req);
}

static long long pinned_version(duel_backend *b, sink *s, uint64_t id, long long pin) {
    duel_backend_request req = {.request_id = id, .text = "What is a lake?", .arm_snapshot = pin,
                                .seed = 1000 + id, .rollout = true, .arm_name = "x"};
    duel_backend_result *r = run_duel(b, s, &req);
    long long v = r->policy_version;
    assert_string_not_equal(r->strategy, "arena"); /* a rollout's duel is a battle only when asked */
    duel_backend_result_free(r);
    return v;
}

static void test_adapter_arms(void **state) {
    (void)state;
    backend_engine_config cfg = {.model_dir = model_dir, .erm_seed = 7, .num_candidates = 4,
                                 .temperature = 1.0f, .top_p = 1.0f, .max_new_tokens = 8,
                                 .kv_memory_bytes = 16u << 20, .snapshots = true};
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    assert_non_null(b.hold_snapshot);
    sink s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    assert_int_equal(b.start(b.impl, tu_sink_fn, &s, &err), 0);
    const char *d1 = snap_dir[1], *d2 = snap_dir[2], *d3 = snap_dir[3];
    if (b.install_snapshot(b.impl, 1, d1, &err)) fail_msg("%s", err.message);
    if (b.install_snapshot(b.impl, 2, d2, &err)) fail_msg("%s", err.message);
    /* v1 was not pinned: the new latest retired it; its duels go to the latest */
    assert_false(b.snapshot_resident(b.impl, 1));
    assert_int_equal(pinned_version(&b, &s, 1, 1), 2);
    /* pinned: resident again beside the latest, serving its own duels */
    b.set_pins(b.impl, (long long[]){1}, 1);
    if (b.hold_snapshot(b.impl, 1, d1, &err)) fail_msg("%s", err.message);
    assert_true(b.snapshot_resident(b.impl, 1) && b.snapshot_resident(b.impl, 2));
    assert_int_equal(pinned_version(&b, &s, 2, 1), 1);
    assert_int_equal(pinned_version(&b, &s, 3, ROLLOUT_SNAPSHOT_LATEST), 2);
    assert_int_equal(pinned_version(&b, &s, 4, ROLLOUT_SNAPSHOT_BASE), 0);
    /* A battle of v1 ("stable") and the latest ("canary"): one answer from each half. */
    for (uint64_t id = 5; id < 8; id++) {
        duel_backend_request req = {.request_id = id, .text = "What is a lake?", .arm_snapshot = 1,
                                    .seed = 2000 + id, .rollout = true, .arm_name = "stable",
                                    .battle = true, .battle_snapshot = ROLLOUT_SNAPSHOT_LATEST,
                                    .battle_arm_name = "canary"};
        duel_backend_result *r = run_duel(&b, &s, &req);
        assert_string_equal(r->strategy, "arena");
        int lo = r->cand_a < r->cand_b ? r->cand_a : r->cand_b;
        int hi = r->cand_a < r->cand_b ? r->cand_b : r->cand_a;
        assert_true(lo < 2 && hi >= 2);
        json_t *gp = json_loads(r->gen_params_json, 0, NULL);
        assert_int_equal(json_integer_value(json_object_get(gp, "arena_split")), 2);
        json_t *versions = json_object_get(gp, "arena_versions"), *arms = json_object_get(gp, "arena_arms");
        assert_int_equal(json_integer_value(json_array_get(versions, 0)), 1);
        assert_int_equal(json_integer_value(json_array_get(versions, 1)), 2);
        assert_string_equal(json_string_value(json_array_get(arms, 0)), "stable");
        assert_string_equal(json_string_value(json_array_get(arms, 1)), "canary");
        assert_string_equal(json_string_value(json_object_get(gp, "arm")), "stable");
        json_decref(gp);
        duel_backend_result_free(r);
    }
    /* Two pins on the same weights are no battle. */
    duel_backend_request same = {.request_id = 9, .text = "What is a lake?", .arm_snapshot = 2,
                                 .seed = 9, .rollout = true, .arm_name = "a", .battle = true,
                                 .battle_snapshot = ROLLOUT_SNAPSHOT_LATEST, .battle_arm_name = "b"};
    duel_backend_result *r = run_duel(&b, &s, &same);
    assert_string_equal(r->strategy, "ee_ts");
    assert_null(strstr(r->gen_params_json, "arena_arms"));
    duel_backend_result_free(r);
    /* A new latest keeps the pinned v1 and retires v2 (not pinned). */
    if (b.install_snapshot(b.impl, 3, d3, &err)) fail_msg("%s", err.message);
    assert_true(b.snapshot_resident(b.impl, 1) && b.snapshot_resident(b.impl, 3));
    assert_false(b.snapshot_resident(b.impl, 2));
    assert_int_equal(pinned_version(&b, &s, 10, 1), 1);
    /* The pin gone (weight 0): retired, its users on the latest. */
    b.set_pins(b.impl, NULL, 0);
    assert_false(b.snapshot_resident(b.impl, 1));
    assert_int_equal(pinned_version(&b, &s, 11, 1), 3);
    b.destroy(b.impl);
}

/* ---- through a gateway ---------------------------------------------------------------------- */

static long long field_ll(const redisReply *f, const char *name) {
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (strcmp(f->element[i]->str, name) == 0) return atoll(f->element[i + 1]->str);
    fail_msg("no field %s", name);
    return -1;
}

static json_t *field_json(const redisReply *f, const char *name) {
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (strcmp(f->element[i]->str, name) == 0) return json_loads(f->element[i + 1]->str, 0, NULL);
    fail_msg("no field %s", name);
    return NULL;
}

typedef struct served {
    long long arm, policy_version;
    char arm_name[32];
    json_t *gen_params;
} served;

/* One duel and its vote as client; what the duel:prefs entry (the n-th) says. */
static void duel_as(int port, const char *client, redisContext *c, long long n, served *out) {
    ws_client w;
    assert_int_equal(ws_connect(&w, port, NULL), 101);
    char msg[128];
    snprintf(msg, sizeof msg, "{\"type\":\"hello\",\"client\":\"%s\"}", client);
    assert_int_equal(ws_send_text(&w, msg), 0);
    json_decref(ws_expect(&w, "welcome"));
    tu_duel d;
    ws_ask_duel(&w, "what is a duel?", &d);
    ws_vote(&w, d.id, "a");
    tu_duel_free(&d);
    ws_close(&w);
    redisReply *r = redisCommand(c, "XREVRANGE duel:prefs + - COUNT 1");
    assert_true(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    redisReply *len = redisCommand(c, "XLEN duel:prefs");
    assert_int_equal(len->integer, n); /* no vote lost */
    freeReplyObject(len);
    const redisReply *f = r->element[0]->element[1];
    out->arm = field_ll(f, "arm");
    out->policy_version = field_ll(f, "policy_version");
    out->gen_params = field_json(f, "gen_params");
    snprintf(out->arm_name, sizeof out->arm_name, "%s",
             json_string_value(json_object_get(out->gen_params, "arm")));
    freeReplyObject(r);
}

static void set_rollout(redisContext *c, const char *spec) {
    freeReplyObject(redisCommand(c, "SET duel:rollout %s", spec));
    freeReplyObject(redisCommand(c, "PUBLISH duel:notify {\"kind\":\"rollout\"}"));
}

static void wait_metric(int port, const char *name, long long want) {
    for (int i = 0; i < 600; i++) {
        if (tu_metric(port, name) == want) return;
        tu_sleep_ms(100);
    }
    fail_msg("%s never reached %lld (is %lld)", name, want, tu_metric(port, name));
}

static void wait_metric_at_least(int port, const char *name, long long want) {
    for (int i = 0; i < 600; i++) {
        if (tu_metric(port, name) >= want) return;
        tu_sleep_ms(100);
    }
    fail_msg("%s never reached %lld (is %lld)", name, want, tu_metric(port, name));
}

#define SPEC_50_50                                                                                 \
    "{\"revision\":1,\"stable\":\"stable\",\"status\":\"progressing\",\"arena_fraction\":0,"     \
    "\"arms\":[{\"name\":\"stable\",\"snapshot\":1,\"weight\":50},"                               \
    "{\"name\":\"canary\",\"snapshot\":\"latest\",\"weight\":50}]}"
#define SPEC_BATTLES                                                                               \
    "{\"revision\":2,\"stable\":\"stable\",\"status\":\"progressing\",\"arena_fraction\":1,"     \
    "\"arms\":[{\"name\":\"stable\",\"snapshot\":1,\"weight\":50},"                               \
    "{\"name\":\"canary\",\"snapshot\":\"latest\",\"weight\":50}]}"
#define SPEC_STABLE_OFF                                                                            \
    "{\"revision\":3,\"stable\":\"canary\",\"status\":\"healthy\",\"arena_fraction\":0,"         \
    "\"arms\":[{\"name\":\"stable\",\"snapshot\":1,\"weight\":0},"                                \
    "{\"name\":\"canary\",\"snapshot\":\"latest\",\"weight\":100}]}"

/* A gateway on the default model with snapshots, the loader polling every 200 ms, a stats entry
 * every 200 ms, duels of M = 2 and 12 tokens, and the rollout controller ticking every
 * controller_tick_ms (0: none). */
static void start_gateway(tu_gateway *g, const tu_redis *redis, int controller_tick_ms) {
    gateway_config gcfg;
    tu_gateway_config(&gcfg, redis);
    gcfg.snapshot_loader = true;
    gcfg.snapshot_poll_ms = 200;
    gcfg.stats_interval_ms = 200;
    gcfg.rollout_controller_tick_ms = controller_tick_ms;
    gcfg.knobs.v[duel_knob_index("M")].number = 2;
    gcfg.knobs.v[duel_knob_index("max_new_tokens")].number = 12;
    backend_engine_config cfg = {.model_dir = model_dir, .erm_seed = 7, .num_candidates = 2,
                                 .temperature = 0.7f, .top_p = 1.0f, .max_new_tokens = 12,
                                 .kv_memory_bytes = 16u << 20, .snapshots = true};
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    tu_gateway_start_backend(g, &gcfg, &b);
}

static void test_rollout_through_gateway(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    redisContext *c = tu_redis_connect(&redis);
    tu_gateway g;
    start_gateway(&g, &redis, 0);
    duel_error err = {0};
    for (long long v = 1; v <= 2; v++) {
        freeReplyObject(redisCommand(c, "HSET duel:snapshot:%lld path %s", v, snap_dir[v]));
        freeReplyObject(redisCommand(c, "ZADD duel:snapshots %lld %lld", v, v));
    }
    wait_metric(g.port, "duel_serving_policy_version", 2);

    set_rollout(c, SPEC_50_50);
    wait_metric(g.port, "duel_rollout_arms_pinned", 1);
    wait_metric(g.port, "duel_rollout_revision", 1);
    rollout_spec spec;
    assert_int_equal(rollout_spec_parse(SPEC_50_50, strlen(SPEC_50_50), NULL, &spec, &err), 0);
    long long n = 0;
    int seen[2] = {0, 0};
    char clients[6][33];
    for (int i = 0; i < 6; i++) {
        snprintf(clients[i], sizeof clients[i], "%032x", 0xabc0 + i);
        int arm = rollout_spec_assign(&spec, clients[i]);
        served sv;
        duel_as(g.port, clients[i], c, ++n, &sv);
        /* the arm the id hashes to, and that arm's weights */
        assert_string_equal(sv.arm_name, spec.arms[arm].name);
        assert_int_equal(sv.policy_version, arm == 0 ? 1 : 2);
        assert_int_equal(sv.arm, spec.arms[arm].snapshot);
        seen[arm]++;
        json_decref(sv.gen_params);
    }
    assert_true(seen[0] > 0 && seen[1] > 0); /* these six ids fall on both arms (3 and 3) */

    /* Every duel a battle of the two arms: both named, each with its version. */
    set_rollout(c, SPEC_BATTLES);
    wait_metric(g.port, "duel_rollout_revision", 2);
    for (int i = 0; i < 2; i++) {
        served sv;
        duel_as(g.port, clients[i], c, ++n, &sv);
        assert_string_equal(json_string_value(json_object_get(sv.gen_params, "strategy")), "arena");
        json_t *arms = json_object_get(sv.gen_params, "arena_arms");
        json_t *versions = json_object_get(sv.gen_params, "arena_versions");
        assert_string_equal(json_string_value(json_array_get(arms, 0)), "stable");
        assert_string_equal(json_string_value(json_array_get(arms, 1)), "canary");
        assert_int_equal(json_integer_value(json_array_get(versions, 0)), 1);
        assert_int_equal(json_integer_value(json_array_get(versions, 1)), 2);
        json_decref(sv.gen_params);
    }

    /* The stable arm at weight 0: v1 retired (nothing pins it), its users on the canary. */
    set_rollout(c, SPEC_STABLE_OFF);
    wait_metric(g.port, "duel_rollout_arms_pinned", 0);
    wait_metric(g.port, "duel_rollout_revision", 3);
    for (int i = 0; i < 6; i++) {
        if (rollout_spec_assign(&spec, clients[i]) != 0) continue;
        served sv;
        duel_as(g.port, clients[i], c, ++n, &sv);
        assert_string_equal(sv.arm_name, "canary");
        assert_int_equal(sv.policy_version, 2);
        json_decref(sv.gen_params);
        break;
    }
    /* duel:stats carries the revision this gateway serves */
    bool found = false;
    for (int i = 0; i < 100 && !found; i++) {
        redisReply *r = redisCommand(c, "XREVRANGE duel:stats + - COUNT 1");
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
            const redisReply *f = r->element[0]->element[1];
            for (size_t k = 0; k + 1 < f->elements; k += 2)
                if (strcmp(f->element[k]->str, "data") == 0)
                    found = strstr(f->element[k + 1]->str, "\"rollout_revision\":3") != NULL;
        }
        freeReplyObject(r);
        if (!found) tu_sleep_ms(100);
    }
    assert_true(found);
    tu_gateway_stop(&g);
    redisFree(c);
    tu_redis_stop(&redis, SIGTERM);
}


/* ---- end to end: automatic rollback and promotion --------------------------------------------- */

/* Prompts the simulated users ask, with the reference answers the oracle scores against. */
static const char *const PROMPTS[][2] = {
    {"What is a river?", "A river is a natural stream of water that flows to the sea."},
    {"What is the moon?", "The moon is the natural satellite of the Earth."},
    {"What is rain?", "Rain is water that falls from the clouds in drops."},
    {"What is a tree?", "A tree is a tall plant with a trunk, branches and leaves."},
};

typedef struct sim_user {
    int port[2];
    redisContext *c;
    oracle_lexical_config oracle;
    long long acked; /* votes acknowledged */
} sim_user;

/* One duel as client id on gateway port, voted by the lexical oracle (graded: word and character
 * overlap with the reference; the better score wins, equal scores tie). */
static void sim_duel(sim_user *u, int port, const char *client, int prompt) {
    ws_client w;
    assert_int_equal(ws_connect(&w, port, NULL), 101);
    char msg[128];
    snprintf(msg, sizeof msg, "{\"type\":\"hello\",\"client\":\"%s\"}", client);
    assert_int_equal(ws_send_text(&w, msg), 0);
    json_decref(ws_expect(&w, "welcome"));
    tu_duel d;
    ws_ask_duel(&w, PROMPTS[prompt][0], &d);
    const char *ref = PROMPTS[prompt][1];
    double sa = 0, sb = 0;
    duel_error err = {0};
    assert_int_equal(oracle_lexical_score(&u->oracle, ref, strlen(ref), d.a, strlen(d.a), &sa, NULL, &err), 0);
    assert_int_equal(oracle_lexical_score(&u->oracle, ref, strlen(ref), d.b, strlen(d.b), &sb, NULL, &err), 0);
    ws_vote(&w, d.id, sa > sb ? "a" : sb > sa ? "b" : "tie");
    if (getenv("ROLLOUT_E2E_DEBUG")) printf("# %.3f %.3f | %s | %s\n", sa, sb, d.a, d.b);
    u->acked++;
    tu_duel_free(&d);
    ws_close(&w);
}

static rollout_spec read_spec(redisContext *c) {
    redisReply *r = redisCommand(c, "GET duel:rollout");
    assert_true(r && r->type == REDIS_REPLY_STRING);
    rollout_spec s;
    duel_error err = {0};
    if (rollout_spec_parse(r->str, r->len, NULL, &s, &err)) fail_msg("%s", err.message);
    freeReplyObject(r);
    return s;
}

/* Every vote in duel:prefs attributed to the arm that served it: gen_params names a rollout arm,
 * and the policy versions are that arm's (a battle's both arms'); as many entries as acks. */
static rollout_spec parse_spec(const char *text) {
    rollout_spec s;
    duel_error err = {0};
    if (rollout_spec_parse(text, strlen(text), NULL, &s, &err)) fail_msg("%s", err.message);
    return s;
}

/* The version each arm name of the test serves: stable v_stable (v_promoted once a canary was
 * promoted), canary (the damaged one) v2, good v3. */
static bool arm_serves(const char *arm, long long v, long long v_stable, long long v_promoted) {
    if (strcmp(arm, "stable") == 0) return v == v_stable || v == v_promoted;
    if (strcmp(arm, "canary") == 0) return v == 2;
    return strcmp(arm, "good") == 0 && v == 3;
}

static void check_attribution(redisContext *c, long long acked, long long v_stable, long long v_promoted) {
    redisReply *r = redisCommand(c, "XRANGE duel:prefs - +");
    assert_true(r && r->type == REDIS_REPLY_ARRAY);
    assert_int_equal((long long)r->elements, acked);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        json_t *gp = field_json(f, "gen_params");
        const char *arm = json_string_value(json_object_get(gp, "arm"));
        assert_non_null(arm);
        assert_true(arm_serves(arm, field_ll(f, "policy_version"), v_stable, v_promoted));
        json_t *arms = json_object_get(gp, "arena_arms");
        if (arms) {
            const char *second = json_string_value(json_array_get(arms, 1));
            long long v2 = json_integer_value(json_array_get(json_object_get(gp, "arena_versions"), 1));
            assert_string_equal(json_string_value(json_array_get(arms, 0)), arm);
            if (!arm_serves(second, v2, v_stable, v_promoted)) {
                char *dump = json_dumps(gp, JSON_COMPACT);
                fail_msg("battle %zu of %zu misattributed: %s", i, r->elements, dump);
            }
        }
        json_decref(gp);
    }
    freeReplyObject(r);
}

static bool audit_has(redisContext *c, const char *action) {
    redisReply *r = redisCommand(c, "XRANGE duel:audit - +");
    bool found = false;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements && !found; i++) {
        const redisReply *f = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k + 1]->str, action) == 0) found = true;
    }
    freeReplyObject(r);
    return found;
}

#define STEPS_SPEC(v_stable, canary, v)                                                            \
    "{\"stable\":\"stable\",\"status\":\"progressing\",\"arena_fraction\":0.8,"                   \
    "\"arms\":[{\"name\":\"stable\",\"snapshot\":" v_stable ",\"weight\":100},"                    \
    "{\"name\":\"" canary "\",\"snapshot\":" v ",\"weight\":0}],"                                  \
    "\"steps\":[{\"set_weight\":20},{\"analysis\":{}},{\"set_weight\":50},{\"analysis\":{}}],"   \
    "\"analysis\":{\"window_s\":600,\"interval_s\":1,\"failure_limit\":3,\"min_votes\":20,"       \
    "\"max_error_rate\":0.05,\"max_both_bad_rate\":0.5,\"min_win_rate\":0.4}}"

/* Two gateways, each running the controller (one holds its lock), simulated users on both. A
 * damaged copy of the model (every weight scaled by 1 + 2 U(-1, 1): it answers noise) as a 20 %
 * canary loses its arena battles and is rolled back by the controller while chat goes on: weight
 * 0, status degraded, a rollout.rollback audit entry and a duel:notify note. Then, with the
 * damaged copy as the stable arm, a better canary (the base model's weights, lightly perturbed)
 * passes both analysis steps, is promoted, and the arena rates it above the arm it replaced. In both, every vote is attributed to the arm that served it and
 * none is lost; each user keeps its arm on both gateways. */
static void test_rollback_and_promotion(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    redisContext *c = tu_redis_connect(&redis);
    for (long long v = 1; v <= 3; v++) {
        freeReplyObject(redisCommand(c, "HSET duel:snapshot:%lld path %s", v, snap_dir[v]));
        freeReplyObject(redisCommand(c, "ZADD duel:snapshots %lld %lld", v, v));
    }
    /* the operator's spec, as `duel rollout set` writes it (validated, audited) */
    rollout_change set = {.action = ROLLOUT_ACTION_SET, .spec_text = STEPS_SPEC("1", "canary", "2")};
    duel_error err = {0};
    if (rollout_store_change(c, "duel:", "test", &set, 4, NULL, NULL, &err)) fail_msg("%s", err.message);
    redisContext *sub = tu_redis_connect(&redis);
    freeReplyObject(redisCommand(sub, "SUBSCRIBE duel:notify"));
    redisSetTimeout(sub, (struct timeval){10, 0});

    tu_gateway g[2];
    sim_user u = {.c = c};
    oracle_lexical_config_default(&u.oracle);
    u.oracle.char_ngram_weight = 0.5;
    for (int i = 0; i < 2; i++) {
        start_gateway(&g[i], &redis, 100);
        u.port[i] = g[i].port;
    }
    for (int i = 0; i < 2; i++) wait_metric(g[i].port, "duel_rollout_arms_pinned", 2);

    /* Phase 1: the damaged canary. 16 users, each on both gateways in turn. */
    rollout_spec at20 = parse_spec(STEPS_SPEC("1", "canary", "2"));
    assert_int_equal(rollout_spec_set_weight(&at20, "canary", 20, &err), 0);
    rollout_spec now = read_spec(c);
    int asked = 0;
    for (; asked < 400 && now.status != ROLLOUT_DEGRADED; asked++) {
        char client[33];
        snprintf(client, sizeof client, "%032x", 0x5eed00 + asked % 16);
        sim_duel(&u, u.port[(asked / 16) % 2], client, asked % 4);
        if (asked % 4 == 3) now = read_spec(c);
        if (getenv("ROLLOUT_E2E_DEBUG") && asked % 4 == 3) {
            redisReply *x = redisCommand(c, "GET duel:rollout:analysis");
            if (x && x->type == REDIS_REPLY_STRING) printf("# %s\n", x->str);
            freeReplyObject(x);
        }
    }
    printf("# damaged canary rolled back after %d duels (%s)\n", asked, rollout_status_name(now.status));
    assert_int_equal(now.status, ROLLOUT_DEGRADED);
    assert_int_equal(now.arms[1].weight, 0);
    assert_int_equal(now.arms[0].weight, 100);
    assert_true(audit_has(c, "rollout.rollback"));
    bool noted = false;
    for (int i = 0; i < 200 && !noted; i++) {
        redisReply *m = NULL;
        if (redisGetReply(sub, (void **)&m) != REDIS_OK || !m) break;
        noted = m->type == REDIS_REPLY_ARRAY && m->elements == 3 && strstr(m->element[2]->str, "\"rollback\"") &&
                strstr(m->element[2]->str, "win rate");
        freeReplyObject(m);
    }
    assert_true(noted);
    /* chat goes on, on the stable arm */
    sim_duel(&u, u.port[0], "0000000000000000000000000000beef", 0);
    check_attribution(c, u.acked, 1, 1);
    /* each user kept its arm on both gateways (the 80/20 assignment until the rollback, then
     * stable): checked on the non-battle votes */
    redisReply *r = redisCommand(c, "XRANGE duel:prefs - +");
    for (size_t i = 0; i < r->elements && i < (size_t)asked; i++) {
        json_t *gp = field_json(r->element[i]->element[1], "gen_params");
        if (!json_object_get(gp, "arena_arms")) {
            char client[33];
            snprintf(client, sizeof client, "%032x", 0x5eed00 + (int)i % 16);
            const char *arm = json_string_value(json_object_get(gp, "arm"));
            const char *want = at20.arms[rollout_spec_assign(&at20, client)].name;
            assert_true(strcmp(arm, want) == 0 || strcmp(arm, "stable") == 0);
        }
        json_decref(gp);
    }
    freeReplyObject(r);

    /* Phase 2: a better canary passes its steps and is promoted: the stable arm now serves the
     * damaged copy (an operator's rollout from a bad snapshot), the canary the good one. (Both routers on the rollback
     * first: a router reads duel:rollout every 5 s.) */
    for (int i = 0; i < 2; i++) wait_metric(g[i].port, "duel_rollout_revision", now.revision);
    freeReplyObject(redisCommand(c, "DEL duel:prefs duel:stats"));
    u.acked = 0;
    set.spec_text = STEPS_SPEC("2", "good", "3");
    if (rollout_store_change(c, "duel:", "test", &set, 4, NULL, NULL, &err)) fail_msg("%s", err.message);
    now = read_spec(c);
    for (int i = 0; i < 2; i++) { /* both routers on the new spec, its two versions resident */
        wait_metric_at_least(g[i].port, "duel_rollout_revision", now.revision); /* the controller steps on */
        wait_metric(g[i].port, "duel_rollout_arms_pinned", 2);
    }
    for (asked = 0; asked < 400 && now.status != ROLLOUT_HEALTHY; asked++) {
        char client[33];
        snprintf(client, sizeof client, "%032x", 0x600d00 + asked % 16);
        sim_duel(&u, u.port[(asked / 16) % 2], client, asked % 4);
        if (asked % 4 == 3) now = read_spec(c);
    }
    printf("# better canary promoted after %d duels (%s)\n", asked, rollout_status_name(now.status));
    assert_int_equal(now.status, ROLLOUT_HEALTHY);
    assert_int_equal(now.arms[now.stable].snapshot, 3);
    assert_int_equal(now.arms[now.stable].weight, 100);
    assert_true(audit_has(c, "rollout.complete"));
    check_attribution(c, u.acked, 2, 3);
    /* ... and it was better: the arena's leaderboard of these battles rates it above the stable
     * arm it replaced, having won most of them */
    arena_tally t = {0};
    if (rollout_store_arena(c, "duel:", &t, &err)) fail_msg("%s", err.message);
    arena_rating rating[ARENA_RATINGS_MAX_ARMS];
    if (arena_ratings_compute(&t, ARENA_RATINGS_ROUNDS, ARENA_RATINGS_SEED, rating, &err)) fail_msg("%s", err.message);
    int good = arena_tally_arm(&t, "good", &err), stable = arena_tally_arm(&t, "stable", &err);
    assert_true(good >= 0 && stable >= 0 && rating[good].battles > 0);
    printf("# good %.0f [%.0f, %.0f] over %lld battles, stable %.0f\n", rating[good].rating, rating[good].lower,
           rating[good].upper, rating[good].battles, rating[stable].rating);
    assert_true(rating[good].rating > rating[stable].rating);
    assert_true(rating[good].score > 0.5 * (double)rating[good].battles);
    arena_tally_free(&t);

    for (int i = 0; i < 2; i++) tu_gateway_stop(&g[i]);
    redisFree(sub);
    redisFree(c);
    tu_redis_stop(&redis, SIGTERM);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    snprintf(model_dir, sizeof model_dir, "%s/models/default", test_env("DUEL_SOURCE_DIR", "."));
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/model.safetensors", model_dir);
    if (access(probe, R_OK) != 0) {
        printf("SKIP: %s is missing\n", probe);
        return 77;
    }
    char data[512];
    test_make_temp_dir("rollout-snapshots", data, sizeof data);
    const double noise[4] = {0, 0.02, 2.0, 0.02};
    for (long long v = 1; v <= 3; v++) write_snapshot(data, v, noise[v], snap_dir[v], sizeof snap_dir[v]);
    /* "e2e": the end-to-end test alone (its own ctest entry: release builds only, being the
     * longest); otherwise the others */
    if (argc > 1 && strcmp(argv[1], "e2e") == 0) {
        const struct CMUnitTest e2e[] = {cmocka_unit_test(test_rollback_and_promotion)};
        return cmocka_run_group_tests(e2e, NULL, NULL);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adapter_arms),
        cmocka_unit_test(test_rollout_through_gateway),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
