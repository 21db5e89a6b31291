/* bench_gateway.c: the gateway's numbers for docs/BENCHMARKS.md. Starts redis-server and
 * `duel serve` (as a child process, so that its memory and CPU can be read from /proc) and
 * measures: idle websocket connections held and server memory per connection; time to duel
 * (ask -> duel_start) and to first delta at 1, 8 and 32 concurrent users with the default model;
 * vote acknowledgement latency with Redis up; server CPU per 1,000 frames.
 * usage: bench_gateway DUEL_BINARY SOURCE_DIR [connections] */
#include "bench_util.h"

#include <fcntl.h>

static long proc_rss_kib(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kib = atol(line + 6);
    if (f) fclose(f);
    return kib;
}

static double proc_cpu_seconds(pid_t pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) {
        if (f) fclose(f);
        return -1;
    }
    fclose(f);
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    /* fields after ")": state(3) ... utime(14) stime(15) */
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14) ut = strtoul(tok, NULL, 10);
        if (field == 15) {
            st = strtoul(tok, NULL, 10);
            break;
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* `duel serve` on port with model, or the test backend without pauses (model NULL). */
static pid_t start_server(const char *bin, const char *src, int port, const tu_redis *r,
                          const char *model, const char *config) {
    char spill[600];
    snprintf(spill, sizeof spill, "%s/spill-%d.log", r->dir, port);
    const char *with_model[] = {"--spill", spill, "--model", model, NULL};
    const char *with_test[] = {"--spill", spill, "--backend", "test", "--test-step-ms", "0", NULL};
    return bench_serve_start(bin, src, port, r, config, model ? with_model : with_test);
}

typedef struct user_ctx {
    int port, asks;
    double *to_duel, *to_delta;
} user_ctx;

static void *user_main(void *arg) {
    user_ctx *u = arg;
    ws_client c;
    assert_int_equal(ws_connect(&c, u->port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    static const char *const Q[] = {"What is a river?", "What does serene mean?",
                                    "Define lighthouse.", "What is a kettle?"};
    for (int i = 0; i < u->asks; i++) {
        char msg[128];
        snprintf(msg, sizeof msg, "{\"type\":\"ask\",\"text\":\"%s\"}", Q[i % 4]);
        double t0 = tu_now();
        ws_send_text(&c, msg);
        char id[33] = "";
        bool first = true;
        for (;;) {
            json_t *j = ws_recv_json(&c, 120000);
            assert_non_null(j);
            const char *t = tu_type(j);
            if (strcmp(t, "duel_start") == 0) {
                u->to_duel[i] = tu_now() - t0;
                snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "duel")));
            } else if (strcmp(t, "delta") == 0 && first) {
                u->to_delta[i] = tu_now() - t0;
                first = false;
            } else if (strcmp(t, "duel_end") == 0) {
                json_decref(j);
                break;
            } else if (strcmp(t, "error") == 0) {
                fail_msg("error during bench: %s", json_string_value(json_object_get(j, "code")));
            }
            json_decref(j);
        }
        ws_vote(&c, id, "a");
    }
    ws_close(&c);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s DUEL_BINARY SOURCE_DIR [connections]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *bin = argv[1], *src = argv[2];
    int n_conn = argc > 3 ? atoi(argv[3]) : 5000;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    char config[700];
    snprintf(config, sizeof config, "%s/bench-config.json", redis.dir);
    FILE *f = fopen(config, "w");
    fprintf(f, "{\"gateway\":{\"asks_per_minute_connection\":100000,\"asks_per_minute_address\":"
               "1000000,\"asks_pending_per_address\":1000000,\"connections_per_address\":100000,\"max_turns\":100000,"
               "\"max_context_tokens\":1000000,\"stream_interval_ms\":0}}\n");
    fclose(f);

    /* 1. Idle connections and memory per connection (test backend). */
    int port = tu_free_port();
    pid_t pid = start_server(bin, src, port, &redis, NULL, config);
    tu_sleep_ms(200);
    long rss0 = proc_rss_kib(pid);
    ws_client *cs = calloc((size_t)n_conn, sizeof *cs);
    double t0 = tu_now();
    for (int i = 0; i < n_conn; i++) {
        if (ws_connect(&cs[i], port, NULL) != 101) fail_msg("connection %d refused", i);
        ws_hello(&cs[i], NULL, NULL);
    }
    double t_open = tu_now() - t0;
    tu_sleep_ms(300);
    long rss1 = proc_rss_kib(pid);
    printf("idle connections: %d held (opened with hello in %.2f s); server RSS %.1f MiB -> %.1f "
           "MiB, %.1f KiB per connection\n",
           n_conn, t_open, rss0 / 1024.0, rss1 / 1024.0, (double)(rss1 - rss0) / n_conn);
    for (int i = 0; i < n_conn; i++) ws_close(&cs[i]);
    free(cs);

    /* 2. Vote acknowledgement latency and CPU per 1,000 frames (test backend, Redis up). */
    ws_client c;
    assert_int_equal(ws_connect(&c, port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    enum { VOTES = 1000 };
    double *lat = calloc(VOTES, sizeof *lat);
    double cpu0 = proc_cpu_seconds(pid);
    char *m0 = NULL;
    tu_http_get(port, "/metrics", &m0);
    for (int i = 0; i < VOTES; i++) {
        if (i > 0 && i % 20 == 0) { /* a fresh conversation every 20 turns, as users do */
            ws_close(&c);
            assert_int_equal(ws_connect(&c, port, NULL), 101);
            ws_hello(&c, NULL, NULL);
        }
        tu_duel d;
        ws_ask_duel(&c, "bench question", &d);
        char msg[160];
        snprintf(msg, sizeof msg, "{\"type\":\"vote\",\"duel\":\"%s\",\"choice\":\"a\"}", d.id);
        double tv = tu_now();
        ws_send_text(&c, msg);
        json_decref(ws_expect(&c, "vote_ok"));
        lat[i] = tu_now() - tv;
        tu_duel_free(&d);
    }
    double cpu1 = proc_cpu_seconds(pid);
    char *m1 = NULL;
    tu_http_get(port, "/metrics", &m1);
    long long frames = 0;
    const char *keys[] = {"\nduel_gateway_frames_in_total ", "\nduel_gateway_frames_out_total "};
    for (int k = 0; k < 2; k++)
        frames += atoll(strstr(m1, keys[k]) + strlen(keys[k])) -
                  atoll(strstr(m0, keys[k]) + strlen(keys[k]));
    printf("vote acknowledgement (vote -> vote_ok, Redis up, %d votes): p50 %.3f ms, p99 %.3f ms, "
           "max %.3f ms\n",
           VOTES, bench_pct(lat, VOTES, 0.5) * 1e3, bench_pct(lat, VOTES, 0.99) * 1e3,
           bench_pct(lat, VOTES, 1.0) * 1e3);
    printf("server CPU: %.3f s for %lld frames = %.1f ms per 1,000 frames (test backend)\n",
           cpu1 - cpu0, frames, (cpu1 - cpu0) / (double)frames * 1e6);
    free(m0);
    free(m1);
    free(lat);
    ws_close(&c);
    bench_serve_stop(pid);

    /* 3. Time to duel and to first delta with the default model. */
    char model[1100];
    snprintf(model, sizeof model, "%s/models/default", src);
    if (access(model, R_OK) == 0) {
        port = tu_free_port();
        pid = start_server(bin, src, port, &redis, model, config);
        const int users_list[3] = {1, 8, 32};
        for (int k = 0; k < 3; k++) {
            int users = users_list[k], asks = users == 1 ? 8 : users == 8 ? 3 : 2;
            int n = users * asks;
            double *td = calloc((size_t)n, sizeof *td), *tf = calloc((size_t)n, sizeof *tf);
            pthread_t *th = calloc((size_t)users, sizeof *th);
            user_ctx *ctx = calloc((size_t)users, sizeof *ctx);
            double cpu_a = proc_cpu_seconds(pid), ta = tu_now();
            for (int u = 0; u < users; u++) {
                ctx[u] = (user_ctx){port, asks, td + u * asks, tf + u * asks};
                pthread_create(&th[u], NULL, user_main, &ctx[u]);
            }
            for (int u = 0; u < users; u++) pthread_join(th[u], NULL);
            double wall = tu_now() - ta, cpu = proc_cpu_seconds(pid) - cpu_a;
            printf("default model, %2d users x %d asks (M=4, <=128 new tokens): time to duel p50 "
                   "%.0f ms p95 %.0f ms; to first delta p50 %.0f ms p95 %.0f ms; %.1f duels/s, "
                   "server CPU %.0f%%\n",
                   users, asks, bench_pct(td, n, 0.5) * 1e3, bench_pct(td, n, 0.95) * 1e3,
                   bench_pct(tf, n, 0.5) * 1e3, bench_pct(tf, n, 0.95) * 1e3, n / wall, 100 * cpu / wall);
            free(td);
            free(tf);
            free(th);
            free(ctx);
        }
        bench_serve_stop(pid);
    } else {
        printf("SKIP time to duel: %s missing\n", model);
    }
    tu_redis_stop(&redis, SIGTERM);
    return 0;
}
