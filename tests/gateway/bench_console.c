/* bench_console.c: the operator console's numbers for docs/BENCHMARKS.md ("Operator console").
 * Starts its own redis-server and `duel serve` children, and measures:
 *   1. the cost of the stats on the serving path: time to duel (ask -> duel_start) and to the
 *      first delta with the default model, gateway.stats_interval_ms 5000 (the default) against
 *      0 (no figures kept), runs interleaved, medians of the runs' p50s;
 *   2. duel:stats for a day: 24 h of entries of one gateway and one trainer at the default 5 s
 *      (34,560 entries under the default MAXLEN ~ 40,000): Redis memory (MEMORY USAGE), the
 *      console thread's work (reading them all, rendering the three windows), and /api/stats
 *      for the 24 h window as a client sees it (a gateway started on that Redis: time until the
 *      first answer, then the response time of 200 requests).
 * usage: bench_console DUEL_BINARY SOURCE_DIR [runs] */
#include "bench_util.h"

#include "console.h"
#include "rng.h"
#include "stats.h"
#include "stats_store.h"
#include "timer.h"

#define TOKEN "bench:bench-secret-0123456789"

/* `duel serve` on port: the default model (model) or the test backend, its data folder in the
 * Redis fixture's folder, the bench's admin token. */
static pid_t start_server(const char *bin, const char *src, int port, const tu_redis *r,
                          const char *config, bool model) {
    char data[700], model_dir[1100];
    snprintf(data, sizeof data, "%s/data-%d", r->dir, port);
    snprintf(model_dir, sizeof model_dir, "%s/models/default", src);
    setenv("DUEL_TOKENS", "admin:" TOKEN, 1);
    const char *extra[] = {"--data-dir", data, "--no-snapshots", model ? "--model" : "--backend",
                           model ? model_dir : "test", NULL};
    return bench_serve_start(bin, src, port, r, config, extra);
}

/* GET path with the bench token; the status, and *body_len. */
static int get_api(int port, const char *path, size_t *body_len) {
    char *body = NULL;
    int status = tu_http_get_token(port, path, TOKEN, &body);
    *body_len = strlen(body);
    free(body);
    return status;
}

/* One run: one user asks `asks` questions, each the first of its conversation; p50 of time to
 * duel and to first delta (ms). */
static void run_duels(int port, int asks, double *ttd_p50, double *tfd_p50) {
    static const char *const Q[] = {"What is a river?", "What does serene mean?", "Define lighthouse.",
                                    "What is a kettle?"};
    double *td = calloc((size_t)asks, sizeof *td), *tf = calloc((size_t)asks, sizeof *tf);
    ws_client c;
    assert_int_equal(ws_connect(&c, port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    for (int i = 0; i < asks; i++) {
        if (i > 0) { /* a fresh conversation per ask: the default model's context is 256 tokens */
            ws_close(&c);
            assert_int_equal(ws_connect(&c, port, NULL), 101);
            ws_hello(&c, NULL, NULL);
        }
        char msg[128], id[33] = "";
        snprintf(msg, sizeof msg, "{\"type\":\"ask\",\"text\":\"%s\"}", Q[i % 4]);
        double t0 = tu_now();
        ws_send_text(&c, msg);
        bool first = true;
        for (;;) {
            json_t *j = ws_recv_json(&c, 120000);
            assert_non_null(j);
            const char *t = tu_type(j);
            if (strcmp(t, "duel_start") == 0) {
                td[i] = (tu_now() - t0) * 1e3;
                snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "duel")));
            } else if (strcmp(t, "delta") == 0 && first) {
                tf[i] = (tu_now() - t0) * 1e3;
                first = false;
            } else if (strcmp(t, "duel_end") == 0) {
                json_decref(j);
                break;
            } else if (strcmp(t, "error") == 0) {
                fail_msg("error: %s", json_string_value(json_object_get(j, "code")));
            }
            json_decref(j);
        }
        ws_vote(&c, id, "a");
    }
    ws_close(&c);
    *ttd_p50 = bench_pct(td, asks, 0.5);
    *tfd_p50 = bench_pct(tf, asks, 0.5);
    free(td);
    free(tf);
}

static void write_config(const char *path, int stats_interval_ms) {
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"gateway\":{\"asks_per_minute_connection\":100000,\"asks_per_minute_address\":"
               "1000000,\"asks_pending_per_address\":1000000,\"max_turns\":100000,\"max_context_tokens\":1000000,"
               "\"stream_interval_ms\":0,\"stats_interval_ms\":%d}}\n",
            stats_interval_ms);
    fclose(f);
}

/* A day of entries: one gateway (two arms, ee_ts, about 4 duels and 3 votes per 5 s) and one
 * trainer, every 5 s, ending now. */
static long long fill_day(redisContext *c, duel_rng *rng) {
    int64_t now = duel_time_unix_ms(), day = 86400LL * 1000, step = 5000;
    long long n = 0;
    duel_error err = {0};
    for (int64_t t = now - day + step; t <= now; t += step) {
        stats_serving s;
        memset(&s, 0, sizeof s);
        s.version = 12;
        s.tokens_per_s = 300 + 50 * duel_rng_uniform(rng);
        s.redis_up = true;
        const char *arms[2] = {"v000011", "v000012"};
        for (int a = 0; a < 2; a++) {
            stats_group *g = stats_serving_group(&s, arms[a], "ee_ts");
            for (int d = 0; d < 2; d++) {
                g->duels++;
                stats_hist_add(&g->regret, 0.05 + 0.2 * duel_rng_uniform(rng));
                stats_hist_add(&g->disagree, 0.1 + 0.3 * duel_rng_uniform(rng));
                stats_hist_add(&g->time_to_duel, 0.08 + 0.3 * duel_rng_uniform(rng));
                stats_hist_add(&g->time_to_first_delta, 0.09 + 0.3 * duel_rng_uniform(rng));
            }
            g->votes[duel_rng_below(rng, 4)]++;
            g->agree = 1;
            g->agree_n = 1;
        }
        stats_serving_error(&s, "rate_limited");
        char *data = stats_serving_json(&s);
        assert_int_equal(stats_store_append(c, "duel:", 40000, "serve@bench:8080", "serving", t, step, data, &err), 0);
        free(data);
        stats_trainer tr = {.step = n, .prefs_applied = 8 * n, .published_version = n / 10, .batch_size = 8,
                            .lag_entries = 3, .lag_s = 1.5, .loss = 0.6, .erm_loss = 0.65, .kl = 0.02,
                            .grad_norm = 0.5, .lr = 3e-5, .erm_accuracy = 0.6, .vote_to_publish_s = 4.2,
                            .vote_to_publish_max_s = 9.1};
        data = stats_trainer_json(&tr);
        assert_int_equal(stats_store_append(c, "duel:", 40000, "train@bench:trainer-1", "trainer", t, step, data, &err), 0);
        free(data);
        n += 2;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s DUEL_BINARY SOURCE_DIR [runs]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *bin = argv[1], *src = argv[2];
    int runs = argc > 3 ? atoi(argv[3]) : 5;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    char config_on[700], config_off[700];
    snprintf(config_on, sizeof config_on, "%s/stats-on.json", redis.dir);
    snprintf(config_off, sizeof config_off, "%s/stats-off.json", redis.dir);
    write_config(config_on, 5000);
    write_config(config_off, 0);

    /* 1. The serving path with and without the stats, interleaved. */
    enum { ASKS = 16 };
    double ttd[2][64], tfd[2][64];
    for (int r = 0; r < runs && r < 64; r++) {
        for (int on = 0; on < 2; on++) {
            int mode = r % 2 ? 1 - on : on; /* alternate which goes first */
            int port = tu_free_port();
            pid_t pid = start_server(bin, src, port, &redis, mode ? config_on : config_off, true);
            run_duels(port, 2, &ttd[mode][r], &tfd[mode][r]); /* warm-up: caches, first pages */
            run_duels(port, ASKS, &ttd[mode][r], &tfd[mode][r]);
            bench_serve_stop(pid);
            printf("run %d stats %-3s: time to duel p50 %.1f ms, first delta p50 %.1f ms\n", r,
                   mode ? "on" : "off", ttd[mode][r], tfd[mode][r]);
        }
    }
    double off = bench_pct(ttd[0], runs, 0.5), on = bench_pct(ttd[1], runs, 0.5);
    double off_f = bench_pct(tfd[0], runs, 0.5), on_f = bench_pct(tfd[1], runs, 0.5);
    printf("time to duel, median of %d runs' p50 (%d asks each, models/default, M=4): stats off %.1f "
           "ms, on %.1f ms (on/off %.3f); first delta off %.1f ms, on %.1f ms (on/off %.3f)\n",
           runs, ASKS, off, on, on / off, off_f, on_f, on_f / off_f);

    /* 2. A day of duel:stats. */
    redisContext *c = tu_redis_connect(&redis);
    freeReplyObject(redisCommand(c, "DEL duel:stats"));
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    double t0 = tu_now();
    long long written = fill_day(c, &rng);
    double t_fill = tu_now() - t0;
    redisReply *r = redisCommand(c, "XLEN duel:stats");
    long long len = r->integer;
    freeReplyObject(r);
    r = redisCommand(c, "MEMORY USAGE duel:stats SAMPLES 0");
    long long bytes = r->integer;
    freeReplyObject(r);
    printf("duel:stats, a day of one gateway and one trainer at 5 s: %lld entries written in %.1f s, "
           "%lld kept (MAXLEN ~ 40000), %.1f MiB in Redis, %.0f bytes per entry\n",
           written, t_fill, len, bytes / 1048576.0, (double)bytes / (double)len);
    /* the console thread's work, in this process: read everything, render the three windows */
    stats_view *view = stats_view_create();
    char last[STATS_STORE_ID_MAX] = "";
    long long added = 0;
    duel_error err = {0};
    t0 = tu_now();
    assert_int_equal(stats_store_read(c, "duel:", duel_time_unix_ms() - 86400LL * 1000, last, 0, view, &added,
                                      NULL, &err), 0);
    double t_read = tu_now() - t0;
    double render[STATS_VIEW_WINDOWS];
    size_t size[STATS_VIEW_WINDOWS];
    for (int w = 0; w < STATS_VIEW_WINDOWS; w++) {
        double best = 1e9;
        for (int k = 0; k < 20; k++) {
            double ta = tu_now();
            json_t *o = stats_view_render(view, stats_view_windows_s[w], duel_time_unix_ms());
            char *text = json_dumps(o, JSON_COMPACT);
            double dt = tu_now() - ta;
            size[w] = strlen(text);
            free(text);
            json_decref(o);
            if (dt < best) best = dt;
        }
        render[w] = best;
    }
    printf("console thread: read %lld entries in %.2f s; render 15 min %.2f ms, 1 h %.2f ms, 24 h %.2f ms "
           "(24 h document %zu bytes)\n",
           added, t_read, render[0] * 1e3, render[1] * 1e3, render[2] * 1e3, size[2]);
    stats_view_free(view);
    redisFree(c);
    /* /api/stats?window=86400 as a client sees it */
    int port = tu_free_port();
    double t_start = tu_now();
    pid_t pid = start_server(bin, src, port, &redis, config_on, false);
    size_t body = 0;
    double t_first = 0;
    for (;;) {
        if (get_api(port, "/api/stats?window=86400", &body) == 200) {
            t_first = tu_now() - t_start;
            break;
        }
        tu_sleep_ms(20);
    }
    enum { REQUESTS = 200 };
    double lat[REQUESTS];
    for (int i = 0; i < REQUESTS; i++) {
        double ta = tu_now();
        assert_int_equal(get_api(port, "/api/stats?window=86400", &body), 200);
        lat[i] = (tu_now() - ta) * 1e3;
    }
    printf("/api/stats?window=86400: first answer %.2f s after the gateway started (it reads the day "
           "from Redis first); then %d requests: p50 %.2f ms, p99 %.2f ms (%zu bytes each)\n",
           t_first, REQUESTS, bench_pct(lat, REQUESTS, 0.5), bench_pct(lat, REQUESTS, 0.99), body);
    bench_serve_stop(pid);
    tu_redis_stop(&redis, SIGTERM);
    return 0;
}
