/* test_no_vote_lost.c: 5,000 votes through the gateway from 25 concurrent websocket clients while
 * redis-server (appendfsync always) is killed with SIGKILL and restarted twice. Every vote_ok is
 * an acknowledgement; afterwards the vote stream (the test backend's, duel:prefs:test) must hold
 * exactly one entry per acknowledged vote (none lost, none doubled), whether it was stored live
 * or spilled and replayed. */
#include "gateway_test_util.h"

#include <stdatomic.h>

enum { CLIENTS = 25, TOTAL_VOTES = 5000 }; /* 200 votes per client */

typedef struct client_ctx {
    int port, index, votes;
    char (*acked)[33];   /* this client's acknowledged duel ids */
    int n_acked, n_queued;
    atomic_int *total;
} client_ctx;

static void *client_main(void *arg) {
    client_ctx *c = arg;
    ws_client ws;
    assert_int_equal(ws_connect(&ws, c->port, NULL), 101);
    ws_hello(&ws, NULL, NULL);
    static const char *const CHOICES[] = {"a", "b", "tie", "both_bad"};
    for (int i = 0; i < c->votes; i++) {
        tu_duel d;
        char text[64];
        snprintf(text, sizeof text, "client %d question %d", c->index, i);
        ws_ask_duel(&ws, text, &d);
        if (ws_vote(&ws, d.id, CHOICES[i % 4])) c->n_queued++;
        snprintf(c->acked[c->n_acked++], 33, "%s", d.id);
        atomic_fetch_add(c->total, 1);
        tu_duel_free(&d);
    }
    ws_close(&ws);
    return NULL;
}

static int cmp_id(const void *a, const void *b) { return strcmp(a, b); }

static void test_no_vote_lost(void **state) {
    (void)state;
    tu_redis redis = {.durable = true};
    tu_redis_start(&redis);
    gateway_config cfg;
    tu_gateway_config(&cfg, &redis);
    cfg.redis_timeout_ms = 300;
    cfg.max_turns = 100000;
    cfg.max_context_tokens = 1LL << 40;
    tu_gateway gw;
    tu_gateway_start(&gw, &cfg, 0);

    atomic_int total = 0;
    client_ctx ctx[CLIENTS];
    pthread_t threads[CLIENTS];
    double t0 = tu_now();
    for (int i = 0; i < CLIENTS; i++) {
        ctx[i] = (client_ctx){.port = gw.port, .index = i, .votes = TOTAL_VOTES / CLIENTS,
                              .total = &total};
        ctx[i].acked = calloc((size_t)ctx[i].votes, 33);
        assert_int_equal(pthread_create(&threads[i], NULL, client_main, &ctx[i]), 0);
    }
    /* Two outages: SIGKILL at about 25% and 60% of the votes, back after 300 ms. */
    const int kill_at[2] = {TOTAL_VOTES / 4, TOTAL_VOTES * 6 / 10};
    for (int k = 0; k < 2; k++) {
        while (atomic_load(&total) < kill_at[k]) tu_sleep_ms(2);
        tu_redis_stop(&redis, SIGKILL);
        tu_sleep_ms(300);
        tu_redis_start(&redis);
    }
    for (int i = 0; i < CLIENTS; i++) pthread_join(threads[i], NULL);
    double t_votes = tu_now() - t0;

    int acked = 0, queued = 0;
    for (int i = 0; i < CLIENTS; i++) acked += ctx[i].n_acked, queued += ctx[i].n_queued;
    assert_int_equal(acked, (TOTAL_VOTES / CLIENTS) * CLIENTS);
    assert_true(queued > 0); /* the outages really sent votes to the spill log */

    /* Wait for the spill log to drain into Redis. */
    for (int i = 0; i < 1500 && tu_redis_int(&redis, "XLEN " GATEWAY_TEST_VOTE_STREAM) < acked; i++)
        tu_sleep_ms(20);
    tu_gateway_stop(&gw);

    redisContext *rc = tu_redis_connect(&redis);
    redisReply *r = redisCommand(rc, "XRANGE " GATEWAY_TEST_VOTE_STREAM " - +");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    print_message("%d votes acknowledged (%d queued in the spill log) in %.1f s; stream holds "
                  "%zu entries\n", acked, queued, t_votes, r->elements);
    assert_int_equal((int)r->elements, acked);
    char (*stored)[33] = calloc(r->elements, 33);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *fields = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < fields->elements; k += 2)
            if (strcmp(fields->element[k]->str, "duel_id") == 0)
                snprintf(stored[i], 33, "%s", fields->element[k + 1]->str);
    }
    char (*expected)[33] = calloc((size_t)acked, 33);
    int n = 0;
    for (int i = 0; i < CLIENTS; i++)
        for (int k = 0; k < ctx[i].n_acked; k++) memcpy(expected[n++], ctx[i].acked[k], 33);
    qsort(stored, r->elements, 33, cmp_id);
    qsort(expected, (size_t)acked, 33, cmp_id);
    for (int i = 0; i < acked; i++) {
        if (strcmp(stored[i], expected[i]) != 0)
            fail_msg("stream and acknowledgements differ at %d: %s vs %s", i, stored[i],
                     expected[i]);
        if (i > 0) assert_string_not_equal(stored[i], stored[i - 1]);
    }
    /* Per client, votes arrive in the order they were acknowledged. */
    int next[CLIENTS] = {0};
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *fields = r->element[i]->element[1];
        const char *duel = NULL;
        for (size_t k = 0; k + 1 < fields->elements; k += 2)
            if (strcmp(fields->element[k]->str, "duel_id") == 0) duel = fields->element[k + 1]->str;
        for (int c = 0; c < CLIENTS; c++)
            if (next[c] < ctx[c].n_acked && strcmp(ctx[c].acked[next[c]], duel) == 0) next[c]++;
    }
    for (int c = 0; c < CLIENTS; c++) assert_int_equal(next[c], ctx[c].n_acked);
    free(stored);
    free(expected);
    freeReplyObject(r);
    redisFree(rc);
    for (int i = 0; i < CLIENTS; i++) free(ctx[i].acked);
    tu_redis_stop(&redis, SIGTERM);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_vote_lost)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
