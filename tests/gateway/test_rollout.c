/* test_rollout.c: the A/B router (gateway/rollout.c) and the Redis thread's rollout feed
 * (redis_worker_rollout_changed): a spec's arms and weights, conversations pinned by their id
 * consistently and in proportion to the weights, arms at weight 0 never picked, refused specs
 * leaving the router on the spec it had; and, against a real redis-server, the text of duel:rollout handed
 * to the lws thread once per change (the spec is parsed once per change, not per conversation). */
#include "gateway_test_util.h"

#include "protocol.h"
#include "redis_worker.h"
#include "rollout.h"

static void test_parse_and_pick(void **state) {
    (void)state;
    rollout_router router = {0};
    duel_error err = {0};
    assert_int_equal(rollout_router_update(&router, "{\"revision\":3,\"arms\":[{\"name\":\"stable\","
                                           "\"snapshot\":12,\"weight\":90},{\"name\":\"canary\","
                                           "\"snapshot\":\"latest\",\"weight\":10},{\"name\":\"off\","
                                           "\"snapshot\":5,\"weight\":0}],\"stable\":\"stable\"}",
                                           &err), 0);
    int stable = 0, canary = 0;
    char id[PROTOCOL_ID_LEN + 1];
    for (int i = 0; i < 4000; i++) {
        assert_int_equal(protocol_new_id(id), 0);
        long long arm = rollout_router_pick(&router, id);
        assert_int_equal(rollout_router_pick(&router, id), arm); /* pinned: the same id, the same arm */
        if (arm == 12) stable++;
        else if (arm == ROLLOUT_SNAPSHOT_LATEST) canary++;
        else fail_msg("picked arm %lld, which has no weight", arm);
    }
    /* 90 / 10 of 4000: binomial standard deviation 19; allow 5 of them. */
    assert_in_range(canary, 400 - 95, 400 + 95);
    assert_int_equal(stable + canary, 4000);
    /* A new spec replaces the old one; "base" is snapshot 0. */
    assert_int_equal(rollout_router_update(&router, "{\"arms\":[{\"name\":\"b\",\"snapshot\":"
                                           "\"base\",\"weight\":100}],\"stable\":\"b\"}", &err), 0);
    assert_int_equal(rollout_router_pick(&router, id), ROLLOUT_SNAPSHOT_BASE);
    /* Refused texts: the router keeps serving the spec it had. */
    assert_int_equal(rollout_router_update(&router, "{\"arms\":{}}", &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "arms"));
    assert_int_equal(rollout_router_pick(&router, id), ROLLOUT_SNAPSHOT_BASE);
    assert_int_equal(rollout_router_update(&router, "{not json", &err), DUEL_EFORMAT);
    assert_int_equal(rollout_router_update(&router, "{\"arms\":[{\"name\":\"b\",\"snapshot\":7,"
                                           "\"weight\":60}],\"stable\":\"b\"}", &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "sum to 60"));
    assert_int_equal(rollout_router_pick(&router, id), ROLLOUT_SNAPSHOT_BASE);
    /* No key: every conversation follows the latest snapshot. */
    assert_int_equal(rollout_router_update(&router, NULL, &err), 0);
    assert_int_equal(rollout_router_pick(&router, id), ROLLOUT_SNAPSHOT_LATEST);
}

static void ignore_result(void *ctx, redis_result *r) {
    (void)ctx;
    free(r->json);
}

static void redis_set(const tu_redis *r, const char *value) {
    redisContext *c = tu_redis_connect(r);
    assert_non_null(c);
    redisReply *reply = value ? redisCommand(c, "SET duel:rollout %s", value)
                              : redisCommand(c, "DEL duel:rollout");
    assert_non_null(reply);
    freeReplyObject(reply);
    redisFree(c);
}

/* Polls until the worker reports a change (true) or 3 s pass (false). */
static bool wait_change(redis_worker *w, uint64_t *seen, char **json) {
    for (int i = 0; i < 300; i++) {
        if (redis_worker_rollout_changed(w, seen, json)) return true;
        tu_sleep_ms(10);
    }
    return false;
}

static void test_worker_reports_each_change_once(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    char spill[600];
    snprintf(spill, sizeof spill, "%s/spill.log", redis.dir);
    redis_worker_config cfg = {.host = "127.0.0.1", .port = redis.port, .timeout_ms = 500,
                               .retry_ms = 50, .spill_path = spill, .stream_key = "duel:prefs",
                               .conversation_ttl_s = 60, .vote_dedup_ttl_s = 60,
                               .rollout_poll_ms = 20};
    redis_worker *w;
    duel_error err = {0};
    if (redis_worker_create(&cfg, ignore_result, NULL, &w, &err)) fail_msg("%s", err.message);
    uint64_t seen = 0;
    char *json = (char *)"unset";
    /* No key: nothing to parse. */
    tu_sleep_ms(100);
    assert_false(redis_worker_rollout_changed(w, &seen, &json));
    assert_null(json);
    const char *spec = "{\"arms\":[{\"snapshot\":3,\"weight\":1}]}";
    redis_set(&redis, spec);
    assert_true(wait_change(w, &seen, &json));
    assert_string_equal(json, spec);
    free(json);
    /* Many polls later, the same text is no change. */
    tu_sleep_ms(150);
    assert_false(redis_worker_rollout_changed(w, &seen, &json));
    redis_set(&redis, spec); /* written again, unchanged */
    tu_sleep_ms(150);
    assert_false(redis_worker_rollout_changed(w, &seen, &json));
    redis_set(&redis, "{\"arms\":[{\"snapshot\":4,\"weight\":1}]}");
    assert_true(wait_change(w, &seen, &json));
    assert_non_null(strstr(json, "\"snapshot\":4"));
    free(json);
    /* The key removed: a change to "no spec". */
    redis_set(&redis, NULL);
    assert_true(wait_change(w, &seen, &json));
    assert_null(json);
    redis_worker_destroy(w);
    tu_redis_stop(&redis, SIGTERM);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_pick),
        cmocka_unit_test(test_worker_reports_each_change_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
