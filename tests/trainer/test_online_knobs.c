/* test_online_knobs.c: live knobs of the online trainer (DESIGN.md section 8, hash duel:knobs):
 * validation in online_trainer_set_knobs (unknown name, wrong type, out of range: rejected with
 * the reason while the others apply; serving knobs ignored; a deleted knob reverts to the
 * config), and through a real redis-server: the consumer reads the hash every batch, logs each
 * rejection once, applies batch_size / loss / beta / gamma to the updates and writes the knobs
 * in effect into duel:trainer:status. */
#include "test_helpers.h"

#include <jansson.h>

#include "online_test_env.h"
#include "redis_fixture.h"
#include "test_online_votes.h"

static redis_fixture g_redis;

static int stop_redis(void **state) {
    (void)state;
    redis_fixture_stop(&g_redis);
    return 0;
}

static const online_knob_rejection *find_rejection(const online_knob_report *r, const char *name) {
    for (int i = 0; i < r->num_rejected; i++)
        if (strcmp(r->rejected[i].name, name) == 0) return &r->rejected[i];
    return NULL;
}

static void test_validation(void **state) {
    (void)state;
    online_trainer_options o;
    online_test_options(&o);
    char dir[512];
    online_trainer *t = online_test_open(&o, "knobs-unit", dir, sizeof dir);
    const char *names[] = {"beta", "temperature", "strategy", "gamma", "bogus", "batch_size", "checkpoint_every",
                           "publish_every_seconds", "loss", "lr_scale", "burn_in", "publish_every"};
    const char *values[] = {"0.3", "0.7", "ee_ts", "0.9", "1", "2", "0",
                            "1e400", "slic", "0.5", "12x", "-1"};
    online_knob_report rep;
    /* some knobs are rejected: DUEL_EINVAL, and the valid ones still apply */
    assert_int_equal(online_trainer_set_knobs(t, 12, names, values, &rep), DUEL_EINVAL);
    const online_trainer_options *in = online_trainer_get_options(t);
    /* applied: loss (then beta over slic's default 0.2), gamma, batch_size, lr_scale */
    assert_int_equal(rep.applied, 5);
    assert_int_equal(in->loss.kind, DAP_LOSS_SLIC);
    assert_true(in->loss.beta == 0.3);
    assert_true(in->gamma == 0.9);
    assert_int_equal(in->batch_size, 2);
    assert_true(in->lr_scale == 0.5);
    /* rejected, each with its reason; the configured value stays */
    assert_int_equal(rep.num_rejected, 5);
    const online_knob_rejection *r;
    assert_non_null(r = find_rejection(&rep, "bogus"));
    assert_non_null(strstr(r->reason, "unknown knob \"bogus\""));
    assert_non_null(r = find_rejection(&rep, "checkpoint_every"));
    assert_non_null(strstr(r->reason, "outside"));
    assert_int_equal(in->checkpoint_every, o.checkpoint_every);
    assert_non_null(r = find_rejection(&rep, "publish_every_seconds"));
    assert_non_null(strstr(r->reason, "not a finite number"));
    assert_non_null(r = find_rejection(&rep, "burn_in"));
    assert_non_null(strstr(r->reason, "not an integer"));
    assert_int_equal(in->burn_in, o.burn_in);
    assert_non_null(r = find_rejection(&rep, "publish_every"));
    assert_int_equal(in->publish_every, 3);
    assert_null(find_rejection(&rep, "temperature")); /* serving knobs are not the trainer's */
    /* A bad loss name is rejected; without the beta knob, a new loss brings its own beta. */
    const char *n2[] = {"loss"}, *v2[] = {"ipo"}, *v3[] = {"hinge"};
    assert_int_equal(online_trainer_set_knobs(t, 1, n2, v3, &rep), DUEL_EINVAL);
    assert_int_equal(rep.num_rejected, 1);
    assert_string_equal(rep.rejected[0].name, "loss");
    assert_int_equal(in->loss.kind, DAP_LOSS_DPO);
    assert_int_equal(online_trainer_set_knobs(t, 1, n2, v2, &rep), 0); /* all accepted */
    assert_int_equal(rep.applied, 1);
    assert_int_equal(rep.num_rejected, 0);
    assert_int_equal(in->loss.kind, DAP_LOSS_IPO);
    /* Knobs deleted from the hash: everything back to the config. */
    assert_int_equal(online_trainer_set_knobs(t, 0, NULL, NULL, &rep), 0);
    assert_int_equal(rep.applied, 0);
    assert_int_equal(in->loss.kind, DAP_LOSS_DPO);
    assert_true(in->loss.beta == o.loss.beta);
    assert_int_equal(in->batch_size, 4);
    assert_true(in->lr_scale == 1.0);
    char json[1024];
    assert_int_equal(online_trainer_knobs_json(t, json, sizeof json), 0);
    assert_non_null(strstr(json, "\"batch_size\":4"));
    assert_int_equal(online_trainer_knobs_json(t, json, 8), DUEL_ELIMIT);
    online_trainer_close(t);
}

typedef struct log_capture {
    int lines;
    char text[4096];
} log_capture;

static void capture(void *context, const char *line) {
    log_capture *c = context;
    c->lines++;
    size_t n = strlen(c->text);
    snprintf(c->text + n, sizeof c->text - n, "%s\n", line);
}

static void hset(redisContext *c, const char *field, const char *value) {
    redisReply *r = redisCommand(c, "HSET duel:knobs %s %s", field, value);
    assert_non_null(r);
    freeReplyObject(r);
}

static json_t *status_knobs(redisContext *c) {
    redisReply *r = redisCommand(c, "HGET duel:trainer:status knobs");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    json_t *j = json_loads(r->str, 0, NULL);
    freeReplyObject(r);
    assert_non_null(j);
    return j;
}

static void test_knobs_through_redis(void **state) {
    (void)state;
    online_trainer_options o;
    online_test_options(&o);
    char dir[512];
    assert_int_equal(redis_fixture_start(&g_redis, "knobs"), 0);
    redisContext *c = redis_fixture_connect(&g_redis);
    assert_non_null(c);
    hset(c, "batch_size", "2");
    hset(c, "loss", "slic");
    hset(c, "gamma", "0.5");
    hset(c, "temperature", "0.8");      /* serving: silent */
    hset(c, "bogus", "1");              /* unknown */
    hset(c, "checkpoint_every", "zero"); /* wrong type */
    hset(c, "publish_every", "-4");     /* out of range */
    online_trainer *t = online_test_open(&o, "knobs-redis", dir, sizeof dir);
    stream_consumer_options so;
    online_test_consumer_options(&so, g_redis.port, dir);
    log_capture logs = {0};
    so.log = capture;
    so.log_context = &logs;
    stream_consumer *sc = NULL;
    duel_error err = {0};
    if (stream_consumer_open(&so, t, &sc, &err)) fail_msg("%s", err.message);
    vote_producer p;
    vote_producer_init(&p, 3, 128, "tiny");
    for (int i = 0; i < 8; i++) vote_producer_add(&p, c, "duel:prefs", "*", VOTE_AB, NULL);
    online_test_drain(sc);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 4); /* batches of 2, not the configured 4 */
    assert_int_equal(s.prefs_applied, 8);
    assert_int_equal(s.published_version, 1); /* publish_every stays 3 */
    /* three rejections, each logged once although the hash was read at every batch */
    assert_int_equal(logs.lines, 3);
    assert_non_null(strstr(logs.text, "bogus ignored: unknown knob \"bogus\""));
    assert_non_null(strstr(logs.text, "checkpoint_every ignored: knob checkpoint_every = \"zero\": not an integer"));
    assert_non_null(strstr(logs.text, "publish_every ignored: knob publish_every = -4: outside [0, "));
    json_t *k = status_knobs(c);
    assert_string_equal(json_string_value(json_object_get(k, "loss")), "slic");
    assert_true(json_number_value(json_object_get(k, "beta")) == 0.2); /* SLiC's default */
    assert_true(json_number_value(json_object_get(k, "gamma")) == 0.5);
    assert_int_equal(json_integer_value(json_object_get(k, "batch_size")), 2);
    assert_int_equal(json_integer_value(json_object_get(k, "publish_every")), 3);
    json_decref(k);
    redisReply *r = redisCommand(c, "HGET duel:trainer:status knob_errors");
    assert_int_equal(atoi(r->str), 3);
    freeReplyObject(r);
    /* Fix one knob, change another's bad value, delete batch_size: the same bad value is not
     * logged again, the new one is, and the batch size reverts to the config's 4. */
    hset(c, "checkpoint_every", "2");
    hset(c, "publish_every", "1e3");
    hset(c, "beta", "0.05");
    freeReplyObject(redisCommand(c, "HDEL duel:knobs batch_size"));
    for (int i = 0; i < 4; i++) vote_producer_add(&p, c, "duel:prefs", "*", VOTE_AB, NULL);
    online_test_drain(sc);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.step, 5);
    assert_int_equal(logs.lines, 4);
    assert_non_null(strstr(logs.text, "\"1e3\": not an integer"));
    k = status_knobs(c);
    assert_true(json_number_value(json_object_get(k, "beta")) == 0.05);
    assert_int_equal(json_integer_value(json_object_get(k, "checkpoint_every")), 2);
    assert_int_equal(json_integer_value(json_object_get(k, "batch_size")), 4);
    json_decref(k);
    stream_consumer_close(sc);
    online_trainer_close(t);
    redisFree(c);
    redis_fixture_stop(&g_redis);
    redis_fixture_remove_dir(&g_redis);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validation),
        cmocka_unit_test_teardown(test_knobs_through_redis, stop_redis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
