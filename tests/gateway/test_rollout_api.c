/* test_rollout_api.c: /api/rollout and /api/arena on a real gateway (test backend) with a real
 * redis-server: a viewer reads the rollout (null before one is set) but may not change it (403),
 * no token is 401; an admin's set, weight and abort come back with the spec and their audit
 * entry under the token's name; a refused spec (weights summing to 110, an unknown snapshot, more
 * arms than rollout.max_arms, malformed body) is 400 with the message naming the field and leaves
 * duel:rollout byte for byte; /api/arena answers the leaderboard of the arena votes in
 * duel:prefs. And the page's client id: with a rollout in duel:rollout, each client's votes on
 * two gateways, over a reconnect and a new conversation, carry the arm (snapshot) that
 * rollout_spec_assign gives its id (the test backend's stream duel:prefs:test), and both arms get clients; /metrics reports the revision. */
#include "gateway_test_util.h"

#include "protocol.h"
#include "rollout_spec.h"

#define ADMIN "ops:admin-secret-123"
#define VIEWER "eye:viewer-secret-456"

static char *get_rollout(const tu_redis *r) {
    redisContext *c = tu_redis_connect(r);
    redisReply *x = redisCommand(c, "GET duel:rollout");
    char *s = x && x->type == REDIS_REPLY_STRING ? strdup(x->str) : NULL;
    freeReplyObject(x);
    redisFree(c);
    return s;
}

static void expect_refused(const tu_gateway *g, const tu_redis *r, const char *body,
                           const char *needle) {
    char *before = get_rollout(r), *out = NULL;
    int status = tu_http_request(g->port, "POST", "/api/rollout", ADMIN, body, &out);
    if (status != 400 || !strstr(out, needle)) fail_msg("%s: %d %s (wanted %s)", body, status, out, needle);
    char *after = get_rollout(r);
    assert_true((!before && !after) || (before && after && strcmp(before, after) == 0));
    free(before);
    free(after);
    free(out);
}

static void test_rollout_api(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    redisContext *c = tu_redis_connect(&redis);
    freeReplyObject(redisCommand(c, "ZADD duel:snapshots 12 12 13 13"));
    gateway_config cfg;
    tu_gateway_config(&cfg, &redis);
    cfg.tokens = "admin:" ADMIN ",viewer:" VIEWER;
    cfg.rollout_max_arms = 2;
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    char *out = NULL;
    assert_int_equal(tu_http_request(g.port, "GET", "/api/rollout", NULL, NULL, &out), 401);
    free(out);
    /* the console connects to Redis in the background: the first read may find it away */
    int status = 0;
    for (int i = 0; i < 100 && status != 200; i++) {
        status = tu_http_request(g.port, "GET", "/api/rollout", VIEWER, NULL, &out);
        if (status != 200) {
            free(out);
            tu_sleep_ms(50);
        }
    }
    assert_int_equal(status, 200);
    assert_string_equal(out, "{\"rollout\":null,\"analysis\":null}");
    free(out);
    /* the controller's actions are not an operator's */
    assert_int_equal(tu_http_request(g.port, "POST", "/api/rollout", ADMIN, "{\"action\":\"rollback\"}", &out), 400);
    free(out);
    const char *set = "{\"action\":\"set\",\"spec\":{\"arms\":[{\"name\":\"stable\",\"snapshot\":12,"
                      "\"weight\":90},{\"name\":\"canary\",\"snapshot\":13,\"weight\":10}],"
                      "\"stable\":\"stable\"}}";
    assert_int_equal(tu_http_request(g.port, "POST", "/api/rollout", VIEWER, set, &out), 403);
    free(out);
    assert_null(get_rollout(&redis));
    assert_int_equal(tu_http_request(g.port, "POST", "/api/rollout", ADMIN, set, &out), 200);
    json_t *o = json_loads(out, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "rollout"), "revision")), 1);
    json_t *audit = json_object_get(o, "audit");
    assert_string_equal(json_string_value(json_object_get(audit, "who")), "ops");
    assert_string_equal(json_string_value(json_object_get(audit, "action")), "rollout.set");
    json_decref(o);
    free(out);
    expect_refused(&g, &redis,
                   "{\"action\":\"set\",\"spec\":{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":90},"
                   "{\"name\":\"b\",\"snapshot\":13,\"weight\":20}],\"stable\":\"a\"}}",
                   "they sum to 110, not 100");
    expect_refused(&g, &redis,
                   "{\"action\":\"set\",\"spec\":{\"arms\":[{\"name\":\"a\",\"snapshot\":77,\"weight\":100}],"
                   "\"stable\":\"a\"}}",
                   "version 77 is not a registered snapshot");
    expect_refused(&g, &redis,
                   "{\"action\":\"set\",\"spec\":{\"arms\":[{\"name\":\"a\",\"snapshot\":12,\"weight\":50},"
                   "{\"name\":\"b\",\"snapshot\":13,\"weight\":25},{\"name\":\"c\",\"snapshot\":\"base\","
                   "\"weight\":25}],\"stable\":\"a\"}}",
                   "3 arms, but the engine holds 2");
    expect_refused(&g, &redis, "{\"action\":\"set\",\"spec\":", "expected {");
    expect_refused(&g, &redis, "{\"action\":\"jump\"}", "expected {");
    expect_refused(&g, &redis, "{\"action\":\"weight\",\"arm\":\"canary\"}", "weight takes");
    expect_refused(&g, &redis, "{\"action\":\"weight\",\"arm\":\"stable\",\"weight\":5}", "stable arm");
    expect_refused(&g, &redis, "{\"action\":\"pause\",\"colour\":1}", "colour: unknown field");
    assert_int_equal(tu_http_request(g.port, "POST", "/api/rollout", ADMIN,
                             "{\"action\":\"weight\",\"arm\":\"canary\",\"weight\":20}", &out), 200);
    assert_non_null(strstr(out, "\"weight\":80"));
    free(out);
    assert_int_equal(tu_http_request(g.port, "POST", "/api/rollout", ADMIN, "{\"action\":\"abort\"}", &out), 200);
    assert_non_null(strstr(out, "\"status\":\"aborted\""));
    free(out);
    char *now = get_rollout(&redis);
    assert_non_null(strstr(now, "\"revision\":3"));
    free(now);
    /* the arena leaderboard */
    for (int i = 0; i < 40; i++) {
        redisReply *x = redisCommand(c, "XADD duel:prefs * strategy arena choice %s chosen_idx %d "
                                        "rejected_idx %d gen_params %s",
                                     i % 4 == 0 ? "b" : "a", i % 4 == 0 ? 2 : 0, i % 4 == 0 ? 1 : 3,
                                     "{\"arena_split\":2,\"arena_versions\":[13,12]}");
        freeReplyObject(x);
    }
    assert_int_equal(tu_http_request(g.port, "GET", "/api/arena", VIEWER, NULL, &out), 200);
    o = json_loads(out, 0, NULL);
    assert_non_null(o);
    assert_int_equal(json_integer_value(json_object_get(o, "battles")), 40);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(o, "arms"), 0), "name")),
                        "v13");
    json_decref(o);
    free(out);
    tu_gateway_stop(&g);
    redisFree(c);
    tu_redis_stop(&redis, SIGTERM);
}

/* One duel and its vote on gateway port as client; returns the duel:prefs entry's arm. */
static long long duel_as(int port, const char *client, redisContext *c) {
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
    redisReply *r = redisCommand(c, "XREVRANGE duel:prefs:test + - COUNT 1");
    assert_true(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    const redisReply *f = r->element[0]->element[1];
    long long arm = -99;
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (strcmp(f->element[i]->str, "arm") == 0) arm = atoll(f->element[i + 1]->str);
    freeReplyObject(r);
    return arm;
}

static void test_client_keeps_its_arm(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    redisContext *c = tu_redis_connect(&redis);
    const char *spec_text = "{\"revision\":1,\"arms\":[{\"name\":\"stable\",\"snapshot\":12,"
                            "\"weight\":50},{\"name\":\"canary\",\"snapshot\":13,\"weight\":50}],"
                            "\"stable\":\"stable\"}";
    rollout_spec spec;
    duel_error err = {0};
    assert_int_equal(rollout_spec_parse(spec_text, strlen(spec_text), NULL, &spec, &err), 0);
    /* set before the gateways start: their Redis threads read it when they connect */
    freeReplyObject(redisCommand(c, "SET duel:rollout %s", spec_text));
    gateway_config cfg;
    tu_gateway_config(&cfg, &redis);
    tu_gateway a, b;
    tu_gateway_start(&a, &cfg, 0);
    tu_gateway_config(&cfg, &redis);
    tu_gateway_start(&b, &cfg, 0);
    /* the first duels may come before a gateway read duel:rollout: wait until one pins */
    char client[PROTOCOL_ID_LEN + 1];
    snprintf(client, sizeof client, "%032x", 0xc0ffee);
    long long want = spec.arms[rollout_spec_assign(&spec, client)].snapshot;
    for (int i = 0; i < 100 && (duel_as(a.port, client, c) != want || duel_as(b.port, client, c) != want); i++)
        tu_sleep_ms(50);
    int per_arm[2] = {0};
    for (int i = 0; i < 12; i++) { /* fixed ids: 7 and 5 of them per arm */
        snprintf(client, sizeof client, "%032x", 0x1000 + i);
        int arm = rollout_spec_assign(&spec, client);
        want = spec.arms[arm].snapshot;
        per_arm[arm]++;
        assert_int_equal(duel_as(a.port, client, c), want);
        assert_int_equal(duel_as(b.port, client, c), want); /* another gateway, a new conversation */
        assert_int_equal(duel_as(a.port, client, c), want); /* a reconnect */
    }
    assert_true(per_arm[0] > 0 && per_arm[1] > 0);
    /* every gateway reports the revision it serves */
    char *metrics = NULL;
    assert_int_equal(tu_http_get(b.port, "/metrics", &metrics), 200);
    assert_non_null(strstr(metrics, "\nduel_rollout_revision 1\n"));
    free(metrics);
    tu_gateway_stop(&a);
    tu_gateway_stop(&b);
    redisFree(c);
    tu_redis_stop(&redis, SIGTERM);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rollout_api),
        cmocka_unit_test(test_client_keeps_its_arm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
