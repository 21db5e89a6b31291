/* test_gateway_socket.c: the gateway over real sockets (a hand-written WebSocket client) against
 * a real redis-server started by the test: the happy path with the stream entry checked field by
 * field, conversations in Redis and resumed, every error code the server sends, garbage, a 1 MiB
 * message, fragmented messages over the limit, binary frames, slowloris partial frames, abuse,
 * origin check, limits, cancel, Redis down (votes queued and replayed), /healthz /readyz /metrics,
 * 1,000 connections opened and closed, and shutdown with a duel running. The gateway runs the
 * test backend, whose votes go to duel:prefs:test and never to duel:prefs (the trainer's). */
#include "gateway_test_util.h"

typedef struct fixture {
    tu_redis redis;
    tu_gateway gw;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    tu_redis_start(&f->redis);
    gateway_config cfg;
    tu_gateway_config(&cfg, &f->redis);
    cfg.max_turns = 4;
    tu_gateway_start(&f->gw, &cfg, 0);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    tu_gateway_stop(&f->gw);
    tu_redis_stop(&f->redis, SIGTERM);
    free(f);
    return 0;
}

static redisReply *xrange_last(const tu_redis *r, redisContext **c) {
    *c = tu_redis_connect(r);
    assert_non_null(*c);
    redisReply *reply = redisCommand(*c, "XREVRANGE " GATEWAY_TEST_VOTE_STREAM " + - COUNT 1");
    assert_non_null(reply);
    assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
    assert_int_equal(reply->elements, 1);
    return reply;
}

static const redisReply *entry_field(const redisReply *entry, const char *name) {
    const redisReply *fields = entry->element[1];
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (strcmp(fields->element[i]->str, name) == 0) return fields->element[i + 1];
    return NULL;
}

static void test_happy_path(void **state) {
    fixture *f = *state;
    ws_client c;
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    char conv[33];
    ws_hello(&c, NULL, conv);
    assert_int_equal(strlen(conv), 32);
    tu_duel d;
    ws_ask_duel(&c, "What is a lighthouse?", &d);
    assert_int_equal(d.progress, 4);
    assert_true(d.deltas_a > 3 && d.deltas_b > 3);
    assert_true(d.interleaved);
    assert_non_null(strstr(d.a, "What is a lighthouse?"));
    assert_non_null(strstr(d.b, "What is a lighthouse?"));
    assert_string_not_equal(d.a, d.b);
    assert_false(ws_vote(&c, d.id, "b"));
    /* Canned answers train nothing: the trainer's stream stays empty (the entry is in the test
     * backend's stream, below). */
    assert_int_equal(tu_redis_int(&f->redis, "XLEN duel:prefs"), 0);

    /* The stream entry carries every field of DESIGN.md section 8. */
    redisContext *rc;
    redisReply *reply = xrange_last(&f->redis, &rc);
    const redisReply *e = reply->element[0];
    const char *fields[] = {"vote_id", "duel_id", "ts_ms", "arm", "policy_version", "strategy",
                            "choice", "side_swap", "prompt_tokens", "cand_tokens", "cand_offsets",
                            "chosen_idx", "rejected_idx", "features", "erm_rewards", "gen_params",
                            "prompt_text", "chosen_text", "rejected_text", "model_id"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (!entry_field(e, fields[i])) fail_msg("stream entry lacks %s", fields[i]);
    assert_string_equal(entry_field(e, "duel_id")->str, d.id);
    assert_string_equal(entry_field(e, "choice")->str, "b");
    assert_string_equal(entry_field(e, "chosen_text")->str, d.b);
    assert_string_equal(entry_field(e, "rejected_text")->str, d.a);
    assert_int_equal(entry_field(e, "vote_id")->len, 32);
    /* Binary fields: M = 4 candidates, 8 features and 3 heads as little-endian f32. */
    assert_int_equal(entry_field(e, "cand_offsets")->len, 5 * 4);
    assert_int_equal(entry_field(e, "features")->len, 4 * 8 * 4);
    assert_int_equal(entry_field(e, "erm_rewards")->len, 4 * 3 * 4);
    assert_int_equal(entry_field(e, "prompt_tokens")->len, strlen("What is a lighthouse?") * 4);
    int32_t offsets[5];
    memcpy(offsets, entry_field(e, "cand_offsets")->str, sizeof offsets);
    long chosen = atol(entry_field(e, "chosen_idx")->str);
    long rejected = atol(entry_field(e, "rejected_idx")->str);
    assert_true(chosen != rejected && chosen >= 0 && chosen < 4 && rejected >= 0 && rejected < 4);
    /* The chosen candidate's tokens (bytes, in the test backend) spell the chosen text. */
    const redisReply *ct = entry_field(e, "cand_tokens");
    int32_t n_tok = offsets[chosen + 1] - offsets[chosen];
    assert_int_equal((size_t)n_tok, strlen(d.b));
    for (int32_t i = 0; i < n_tok; i++) {
        int32_t tok;
        memcpy(&tok, ct->str + 4 * (offsets[chosen] + i), 4);
        assert_int_equal(tok, (unsigned char)d.b[i]);
    }
    float feats[32];
    memcpy(feats, entry_field(e, "features")->str, sizeof feats);
    double norm = 0;
    for (int i = 0; i < 32; i++) {
        assert_false(isnan(feats[i]));
        norm += feats[i] * feats[i];
    }
    assert_true(norm > 0);
    json_t *gp = json_loads(entry_field(e, "gen_params")->str, 0, NULL);
    assert_non_null(gp);
    json_decref(gp);
    freeReplyObject(reply);

    /* The chosen answer joined the conversation, in Redis with a TTL. */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "TTL duel:conv:%s", conv);
    for (int i = 0; i < 200 && tu_redis_int(&f->redis, cmd) < 0; i++) tu_sleep_ms(10);
    assert_true(tu_redis_int(&f->redis, cmd) > 0);
    reply = redisCommand(rc, "HGET duel:conv:%s turns", conv);
    assert_int_equal(reply->type, REDIS_REPLY_STRING);
    json_t *turns = json_loads(reply->str, 0, NULL);
    assert_int_equal(json_array_size(turns), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(turns, 0), "assistant")),
                        d.b);
    json_decref(turns);
    freeReplyObject(reply);
    redisFree(rc);
    tu_duel_free(&d);

    /* The next ask continues the conversation (the backend sees one earlier turn). */
    ws_ask_duel(&c, "And a second question", &d);
    assert_non_null(strstr(d.a, "turn 2"));
    assert_false(ws_vote(&c, d.id, "tie"));
    tu_duel_free(&d);

    /* Reconnect: hello with the id resumes it, with the history. */
    ws_close(&c);
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    assert_int_equal(ws_send_text(&c, "{\"type\":\"hello\",\"conversation\":\"00000000000000000000000000000000\"}"), 0);
    json_t *w = ws_expect(&c, "welcome"); /* unknown id: a fresh conversation */
    assert_false(json_is_true(json_object_get(w, "resumed")));
    assert_string_not_equal(json_string_value(json_object_get(w, "conversation")),
                            "00000000000000000000000000000000");
    json_decref(w);
    ws_close(&c);
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    snprintf(cmd, sizeof cmd, "{\"type\":\"hello\",\"conversation\":\"%s\"}", conv);
    assert_int_equal(ws_send_text(&c, cmd), 0);
    w = ws_expect(&c, "welcome");
    assert_true(json_is_true(json_object_get(w, "resumed")));
    assert_int_equal(json_array_size(json_object_get(w, "history")), 2);
    json_decref(w);
    ws_close(&c);
}

static void test_resume_from_redis_on_another_gateway(void **state) {
    fixture *f = *state;
    ws_client c;
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    char conv[33];
    ws_hello(&c, NULL, conv);
    tu_duel d;
    ws_ask_duel(&c, "Remember me", &d);
    ws_vote(&c, d.id, "a");
    ws_close(&c);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "EXISTS duel:conv:%s", conv);
    for (int i = 0; i < 200 && tu_redis_int(&f->redis, cmd) != 1; i++) tu_sleep_ms(10);

    gateway_config cfg;
    tu_gateway_config(&cfg, &f->redis);
    tu_gateway other;
    tu_gateway_start(&other, &cfg, 0);
    assert_int_equal(ws_connect(&c, other.port, NULL), 101);
    snprintf(cmd, sizeof cmd, "{\"type\":\"hello\",\"conversation\":\"%s\"}", conv);
    assert_int_equal(ws_send_text(&c, cmd), 0);
    json_t *w = ws_expect(&c, "welcome");
    assert_true(json_is_true(json_object_get(w, "resumed")));
    assert_string_equal(json_string_value(json_object_get(w, "conversation")), conv);
    json_t *h = json_array_get(json_object_get(w, "history"), 0);
    assert_string_equal(json_string_value(json_object_get(h, "assistant")), d.a);
    json_decref(w);
    tu_duel_free(&d);
    ws_ask_duel(&c, "Still there?", &d);
    assert_non_null(strstr(d.a, "turn 2"));
    tu_duel_free(&d);
    ws_close(&c);
    tu_gateway_stop(&other);
}

static void test_vote_errors(void **state) {
    fixture *f = *state;
    ws_client c, other;
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    assert_int_equal(ws_connect(&other, f->gw.port, NULL), 101);
    /* Before hello. */
    ws_send_text(&c, "{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdef\",\"choice\":\"a\"}");
    ws_expect_error(&c, "hello_required");
    ws_send_text(&c, "{\"type\":\"ask\",\"text\":\"hi\"}");
    ws_expect_error(&c, "hello_required");
    ws_send_text(&c, "{\"type\":\"cancel\"}");
    ws_expect_error(&c, "hello_required");
    ws_hello(&c, NULL, NULL);
    ws_send_text(&c, "{\"type\":\"hello\"}");
    ws_expect_error(&c, "duplicate_hello");
    ws_hello(&other, NULL, NULL);

    tu_duel d;
    ws_ask_duel(&c, "vote errors", &d);
    char msg[160];
    /* Another conversation's duel. */
    snprintf(msg, sizeof msg, "{\"type\":\"vote\",\"duel\":\"%s\",\"choice\":\"a\"}", d.id);
    ws_send_text(&other, msg);
    ws_expect_error(&other, "not_your_duel");
    ws_vote(&c, d.id, "both_bad");
    /* Twice. */
    ws_send_text(&c, msg);
    ws_expect_error(&c, "already_voted");
    /* Unknown. */
    ws_send_text(&c, "{\"type\":\"vote\",\"duel\":\"0123456789abcdef0123456789abcdef\",\"choice\":\"a\"}");
    ws_expect_error(&c, "unknown_duel");
    tu_duel_free(&d);

    /* Before the duel finished; an ask while it runs; cancel. */
    ws_send_text(&c, "{\"type\":\"ask\",\"text\":\"!slow one\"}");
    json_t *p = ws_expect(&c, "progress");
    char running[33];
    snprintf(running, sizeof running, "%s", json_string_value(json_object_get(p, "duel")));
    json_decref(p);
    snprintf(msg, sizeof msg, "{\"type\":\"vote\",\"duel\":\"%s\",\"choice\":\"a\"}", running);
    ws_send_text(&c, msg);
    ws_expect_error(&c, "duel_not_finished");
    ws_send_text(&c, "{\"type\":\"ask\",\"text\":\"another\"}");
    ws_expect_error(&c, "busy");
    ws_send_text(&c, "{\"type\":\"cancel\"}");
    json_t *end = ws_expect(&c, "duel_end");
    assert_true(json_is_true(json_object_get(end, "cancelled")));
    assert_string_equal(json_string_value(json_object_get(end, "duel")), running);
    json_decref(end);
    ws_send_text(&c, "{\"type\":\"cancel\"}");
    ws_expect_error(&c, "nothing_to_cancel");
    ws_send_text(&c, msg);
    ws_expect_error(&c, "unknown_duel"); /* a cancelled duel is gone */
    /* No stray frames from the cancelled duel arrive later. */
    char *stray = NULL;
    assert_int_equal(ws_recv(&c, 1000, &stray, NULL), -1);

    /* Engine failure. */
    ws_send_text(&c, "{\"type\":\"ask\",\"text\":\"!error please\"}");
    for (int i = 0; i < 4; i++) json_decref(ws_expect(&c, "progress"));
    ws_expect_error(&c, "engine_error");
    end = ws_expect(&c, "duel_end");
    assert_true(json_is_true(json_object_get(end, "cancelled")));
    json_decref(end);
    /* The connection lives on. */
    ws_ask_duel(&c, "after the error", &d);
    tu_duel_free(&d);
    ws_close(&c);
    ws_close(&other);
}

static void test_garbage_and_parse_errors(void **state) {
    fixture *f = *state;
    ws_client c;
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    struct {
        const char *msg;
        const char *code;
    } cases[] = {
        {"not json at all", "bad_json"},
        {"{\"type\":\"ask\",\"text\":\"a\",\"text\":\"b\"}", "duplicate_key"},
        {"[]", "not_object"},
        {"{}", "missing_type"},
        {"{\"type\":\"launch\"}", "unknown_type"},
        {"{\"type\":\"hello\",\"admin\":true}", "unknown_field"},
        {"{\"type\":\"ask\"}", "missing_field"},
        {"{\"type\":\"ask\",\"text\":42}", "wrong_type"},
        {"{\"type\":\"vote\",\"duel\":\"xyz\",\"choice\":\"a\"}", "bad_value"},
        {"{\"type\":\"ask\",\"text\":\"   \"}", "empty_text"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ws_send_text(&c, cases[i].msg);
        ws_expect_error(&c, cases[i].code);
    }
    const char bad_utf8[] = "{\"type\":\"ask\",\"text\":\"\xc3\x28\"}";
    ws_send_frame(&c, 1, true, bad_utf8, sizeof bad_utf8 - 1);
    ws_expect_error(&c, "bad_utf8");
    ws_send_frame(&c, 2, true, "\x01\x02\x03", 3);
    ws_expect_error(&c, "binary_frame");
    /* Random bytes in a text frame. */
    unsigned char junk[512];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (unsigned char)(i * 131 + 7);
    ws_send_frame(&c, 1, true, junk, sizeof junk);
    json_t *err = ws_expect(&c, "error");
    json_decref(err);
    /* Ask text over its limit but inside the frame limit. */
    char *long_ask = malloc(6000);
    int k = snprintf(long_ask, 6000, "{\"type\":\"ask\",\"text\":\"");
    memset(long_ask + k, 'y', 4500);
    strcpy(long_ask + k + 4500, "\"}");
    ws_send_text(&c, long_ask);
    ws_expect_error(&c, "text_too_long");
    free(long_ask);
    /* A 1 MiB message in one frame. */
    size_t big = 1 << 20;
    char *mib = malloc(big);
    memset(mib, ' ', big);
    memcpy(mib, "{\"type\":\"hello\"}", 16);
    ws_send_frame(&c, 1, true, mib, big);
    ws_expect_error(&c, "too_large");
    /* Fragments that each fit but add up to more than 16 KiB. */
    ws_send_frame(&c, 1, false, mib, 10000);
    ws_send_frame(&c, 0, false, mib, 10000);
    ws_send_frame(&c, 0, true, mib, 10000);
    ws_expect_error(&c, "too_large");
    /* Fragments that add up to a valid message are fine. */
    ws_send_frame(&c, 1, false, "{\"type\":", 8);
    ws_send_frame(&c, 0, true, "\"hello\"}", 8);
    json_decref(ws_expect(&c, "welcome"));
    free(mib);
    ws_close(&c);
}

static void test_abuse_closes_connection(void **state) {
    fixture *f = *state;
    ws_client c;
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    for (int i = 0; i < 20; i++) ws_send_text(&c, "garbage");
    int errors = 0;
    for (;;) {
        char *m = NULL;
        int rc = ws_recv(&c, 5000, &m, NULL);
        if (rc == -2) break;
        assert_int_equal(rc, 0);
        free(m);
        errors++;
    }
    assert_int_equal(errors, 20); /* every error answered, then closed */
    ws_close(&c);
}

static void test_slowloris_partial_frames(void **state) {
    fixture *f = *state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &f->redis);
    cfg.partial_message_timeout_s = 1;
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    ws_client slow[5], good;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ws_connect(&slow[i], g.port, NULL), 101);
        /* A frame header announcing 100 bytes, then only 10 of them, a byte at a time. */
        unsigned char hdr[6] = {0x81, 0x80 | 100, 0, 0, 0, 0};
        tu_write_all(slow[i].fd, hdr, 6);
    }
    for (int b = 0; b < 10; b++)
        for (int i = 0; i < 5; i++) tu_write_all(slow[i].fd, "{", 1);
    /* Meanwhile the server serves others. */
    assert_int_equal(ws_connect(&good, g.port, NULL), 101);
    ws_hello(&good, NULL, NULL);
    tu_duel d;
    ws_ask_duel(&good, "still serving?", &d);
    tu_duel_free(&d);
    double t0 = tu_now();
    for (int i = 0; i < 5; i++) {
        char *m = NULL;
        int rc = ws_recv(&slow[i], 5000, &m, NULL);
        assert_int_equal(rc, -2); /* closed by the server */
        ws_close(&slow[i]);
    }
    assert_true(tu_now() - t0 < 4.0);
    /* Slow HTTP headers (never finished) are dropped by lws's handshake timeout; check that one
     * such client does not block anyone. */
    int fd = tu_tcp_connect(g.port);
    tu_write_all(fd, "GET / HTTP/1.1\r\nHost: x\r\n", 25);
    ws_ask_duel(&good, "and now?", &d);
    tu_duel_free(&d);
    close(fd);
    ws_close(&good);
    tu_gateway_stop(&g);
}

static void test_limits(void **state) {
    fixture *f = *state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &f->redis);
    cfg.asks_per_minute_connection = 3;
    cfg.connections_per_address = 3;
    cfg.max_turns = 2;
    cfg.max_context_tokens = 200;
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    ws_client c[4];
    for (int i = 0; i < 3; i++) assert_int_equal(ws_connect(&c[i], g.port, NULL), 101);
    assert_int_equal(ws_connect(&c[3], g.port, NULL), 101);
    ws_expect_error(&c[3], "too_many_connections");
    char *m = NULL;
    assert_int_equal(ws_recv(&c[3], 5000, &m, NULL), -2);
    ws_close(&c[3]);

    ws_hello(&c[0], NULL, NULL);
    tu_duel d;
    ws_ask_duel(&c[0], "one", &d);
    ws_vote(&c[0], d.id, "a");
    tu_duel_free(&d);
    ws_ask_duel(&c[0], "two", &d);
    ws_vote(&c[0], d.id, "a");
    tu_duel_free(&d);
    ws_send_text(&c[0], "{\"type\":\"ask\",\"text\":\"three\"}");
    ws_expect_error(&c[0], "turn_limit");

    ws_hello(&c[1], NULL, NULL);
    char long_text[1200];
    memset(long_text, 'w', sizeof long_text);
    memcpy(long_text, "{\"type\":\"ask\",\"text\":\"", 22);
    strcpy(long_text + 1000, "\"}");
    ws_send_text(&c[1], long_text); /* ~1000 bytes = ~250 tokens > 200 */
    ws_expect_error(&c[1], "conversation_too_long");
    ws_ask_duel(&c[1], "a", &d);
    tu_duel_free(&d);
    ws_ask_duel(&c[1], "b", &d); /* no vote: the history stays short */
    tu_duel_free(&d);
    ws_ask_duel(&c[1], "c", &d);
    tu_duel_free(&d);
    ws_send_text(&c[1], "{\"type\":\"ask\",\"text\":\"d\"}");
    ws_expect_error(&c[1], "rate_limited");
    for (int i = 0; i < 3; i++) ws_close(&c[i]);
    tu_gateway_stop(&g);
}

static void test_origin_check(void **state) {
    fixture *f = *state;
    ws_client c;
    char own[64];
    snprintf(own, sizeof own, "http://127.0.0.1:%d", f->gw.port);
    assert_int_equal(ws_connect(&c, f->gw.port, own), 101);
    ws_close(&c);
    int status = ws_connect(&c, f->gw.port, "http://evil.example");
    assert_true(status != 101);
    ws_close(&c);
}

static void test_http_endpoints(void **state) {
    fixture *f = *state;
    char *body;
    assert_int_equal(tu_http_get(f->gw.port, "/healthz", &body), 200);
    assert_true(strncmp(body, "ok\n", 3) == 0);
    assert_non_null(strstr(body, "policy_version: 0\n")); /* the test backend: no snapshots */
    free(body);
    assert_int_equal(tu_http_get(f->gw.port, "/readyz", &body), 200);
    assert_non_null(strstr(body, "redis: up"));
    free(body);
    assert_int_equal(tu_http_get(f->gw.port, "/", &body), 200);
    assert_non_null(strstr(body, "<title>duel"));
    free(body);
    assert_int_equal(tu_http_get(f->gw.port, "/app.js", &body), 200);
    free(body);
    assert_int_equal(tu_http_get(f->gw.port, "/../CMakeLists.txt", &body), 404);
    free(body);
    assert_int_equal(tu_http_get(f->gw.port, "/gateway.h", &body), 404);
    free(body);
    assert_int_equal(tu_http_get(f->gw.port, "/metrics", &body), 200);
    const char *expected[] = {"duel_gateway_connections_total ", "duel_gateway_asks_total ",
                              "duel_gateway_votes_total{choice=\"a\"} ",
                              "duel_gateway_time_to_duel_seconds_bucket{le=\"+Inf\"} ",
                              "duel_gateway_time_to_first_delta_seconds_count ",
                              "duel_gateway_votes_spilled_total ",
                              "duel_gateway_engine_queue_depth ",
                              "duel_gateway_tokens_per_second "};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        if (!strstr(body, expected[i])) fail_msg("/metrics lacks %s", expected[i]);
    /* Earlier tests asked and voted on this gateway. */
    const char *asks = strstr(body, "\nduel_gateway_asks_total ");
    assert_non_null(asks);
    assert_true(atol(asks + strlen("\nduel_gateway_asks_total ")) > 0);
    free(body);
}

static void test_redis_down_votes_queued_then_replayed(void **state) {
    fixture *f = *state;
    ws_client c;
    assert_int_equal(ws_connect(&c, f->gw.port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    long long before = tu_redis_int(&f->redis, "XLEN " GATEWAY_TEST_VOTE_STREAM);
    tu_redis_stop(&f->redis, SIGKILL);
    char ids[3][33];
    for (int i = 0; i < 3; i++) {
        tu_duel d;
        ws_ask_duel(&c, "while redis is away", &d); /* chat goes on without Redis */
        assert_true(ws_vote(&c, d.id, "a"));      /* queued: true */
        snprintf(ids[i], 33, "%s", d.id);
        tu_duel_free(&d);
    }
    char *body;
    assert_int_equal(tu_http_get(f->gw.port, "/readyz", &body), 200);
    assert_non_null(strstr(body, "redis: down"));
    assert_non_null(strstr(body, "spill_pending: 3"));
    free(body);
    tu_redis_start(&f->redis); /* same port; not durable: the stream starts empty */
    (void)before;
    for (int i = 0; i < 300 && tu_redis_int(&f->redis, "XLEN " GATEWAY_TEST_VOTE_STREAM) < 3; i++) tu_sleep_ms(10);
    assert_int_equal(tu_redis_int(&f->redis, "XLEN " GATEWAY_TEST_VOTE_STREAM), 3);
    redisContext *rc = tu_redis_connect(&f->redis);
    redisReply *r = redisCommand(rc, "XRANGE " GATEWAY_TEST_VOTE_STREAM " - +");
    for (int i = 0; i < 3; i++) /* in order */
        assert_string_equal(entry_field(r->element[i], "duel_id")->str, ids[i]);
    freeReplyObject(r);
    redisFree(rc);
    /* And live votes flow again, acknowledged as stored. */
    tu_duel d;
    ws_ask_duel(&c, "redis is back", &d);
    assert_false(ws_vote(&c, d.id, "b"));
    tu_duel_free(&d);
    ws_close(&c);
}

static void test_thousand_connections(void **state) {
    fixture *f = *state;
    enum { BATCH = 250, TOTAL = 1000 };
    ws_client *cs = calloc(BATCH, sizeof *cs);
    double t0 = tu_now();
    for (int done = 0; done < TOTAL; done += BATCH) {
        for (int i = 0; i < BATCH; i++) assert_int_equal(ws_connect(&cs[i], f->gw.port, NULL), 101);
        for (int i = 0; i < BATCH; i += 50) ws_hello(&cs[i], NULL, NULL); /* they are all served */
        for (int i = 0; i < BATCH; i++) ws_close(&cs[i]);
    }
    free(cs);
    /* All closed: the gauge returns to what it was (this test holds no connection). */
    char *body = NULL;
    for (int i = 0; i < 100; i++) {
        free(body);
        tu_http_get(f->gw.port, "/metrics", &body);
        if (strstr(body, "duel_gateway_connections_open 0\n")) break;
        tu_sleep_ms(20);
    }
    assert_non_null(strstr(body, "duel_gateway_connections_open 0\n"));
    free(body);
    print_message("1000 connections opened and closed in %.2f s\n", tu_now() - t0);
}

static void test_shutdown_with_duel_running(void **state) {
    fixture *f = *state;
    gateway_config cfg;
    tu_gateway_config(&cfg, &f->redis);
    tu_gateway g;
    tu_gateway_start(&g, &cfg, 0);
    ws_client c, v;
    assert_int_equal(ws_connect(&c, g.port, NULL), 101);
    assert_int_equal(ws_connect(&v, g.port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    ws_hello(&v, NULL, NULL);
    tu_duel d;
    ws_ask_duel(&v, "vote then stop", &d);
    long long before = tu_redis_int(&f->redis, "XLEN " GATEWAY_TEST_VOTE_STREAM);
    ws_send_text(&c, "{\"type\":\"ask\",\"text\":\"!slow forever\"}");
    json_decref(ws_expect(&c, "progress"));
    char msg[160];
    snprintf(msg, sizeof msg, "{\"type\":\"vote\",\"duel\":\"%s\",\"choice\":\"a\"}", d.id);
    ws_send_text(&v, msg);
    gateway_stop(g.gw); /* as SIGTERM does */
    json_t *end = ws_expect(&c, "duel_end");
    assert_true(json_is_true(json_object_get(end, "cancelled")));
    json_decref(end);
    json_decref(ws_expect(&v, "vote_ok")); /* the vote in flight is finished first */
    pthread_join(g.thread, NULL);
    gateway_destroy(g.gw);
    assert_int_equal(tu_redis_int(&f->redis, "XLEN " GATEWAY_TEST_VOTE_STREAM), before + 1);
    char *m = NULL;
    assert_int_equal(ws_recv(&c, 2000, &m, NULL), -2);
    tu_duel_free(&d);
    ws_close(&c);
    ws_close(&v);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy_path),
        cmocka_unit_test(test_resume_from_redis_on_another_gateway),
        cmocka_unit_test(test_vote_errors),
        cmocka_unit_test(test_garbage_and_parse_errors),
        cmocka_unit_test(test_abuse_closes_connection),
        cmocka_unit_test(test_slowloris_partial_frames),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_origin_check),
        cmocka_unit_test(test_http_endpoints),
        cmocka_unit_test(test_thousand_connections),
        cmocka_unit_test(test_redis_down_votes_queued_then_replayed),
        cmocka_unit_test(test_shutdown_with_duel_running),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
