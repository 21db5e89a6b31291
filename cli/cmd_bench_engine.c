/* cmd_bench_engine.c: `duel bench engine`: the serving engine (inference/engine.h) on one model,
 * driven through its queues exactly as a server would. Measures
 *   - aggregate decode tokens/s at several numbers of concurrent sequences (independent
 *     requests, M = 1), and for one request of M = 8 forked candidates, over --rounds rounds
 *     (medians; each round's ratios to one sequence come from runs seconds apart, which is what
 *     makes them comparable on a shared, loaded machine), with the load average around them;
 *   - time to duel: submit -> every candidate of an M-candidate request finished (p50, p95),
 *     with the prompt positions computed (equal to the prompt length: prefilled once);
 *   - KV bytes per token;
 *   - the prefix cache's hit rate over a multi-turn conversation replay: each turn's prompt is
 *     the previous prompt, the chosen answer and a new user message; hit rate = prompt positions
 *     attached from the cache / history positions (previous prompt + answer), over turns 2..T.
 * With --duel, only the time to duel instead, with and without the duel path: each of --duels
 * prompts runs once as a plain M-candidate request (hidden states wanted) and once as a duel
 * request (same seeds, so the same candidates) with an ERM freshly initialised from seed 42
 * (20 heads, hidden 128), features from --duel-features (the model as its own reference, or
 * the policy's hidden states); reported: both p50s, the overhead, and the DUEL_READY event's
 * features / scoring / selection times.
 * Progress goes to stderr, the figures to stdout; with --json the last stdout line is one JSON
 * object holding them all. Prompts are random token ids (the model's weights decide nothing
 * here but the stop time, and no stop token is used). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_json.h"
#include "cli.h"
#include "compute.h"
#include "duel.h"
#include "engine.h"
#include "erm.h"
#include "machine_limits.h"
#include "model.h"
#include "rng.h"
#include "timer.h"

int bench_engine(int argc, char **argv);

#define BENCH_MAX_LEVELS 16
#define BENCH_ENGINE_PROBE_SGEMM 256 /* the probe's sgemm side (unused here: bandwidth only) */

typedef struct bench_engine_options {
    long long prompt, decode, duel_m, duel_new, duels, turns, turn_user, turn_answer, kv_mb,
        batch_tokens, rounds;
    const char *levels;
} bench_engine_options;

static int32_t *random_tokens(duel_rng *rng, int n, int vocab) {
    int32_t *t = malloc((size_t)n * sizeof *t);
    if (t)
        for (int i = 0; i < n; i++) t[i] = (int32_t)duel_rng_below(rng, (uint64_t)vocab);
    return t;
}

/* Waits for the next event; NULL (with a message) after a minute of silence. */
static engine_event *next_event(engine *e) {
    engine_event *ev = NULL;
    engine_poll(e, 60.0, &ev);
    if (!ev) fprintf(stderr, "duel bench engine: no event from the engine in 60 s\n");
    return ev;
}

/* Decode throughput with n concurrent sequences: n requests of M = 1 (or one request of M = n
 * when forked), each decoding `decode` tokens. Tokens/s counts the tokens sampled after every
 * sequence had its first token, over the time from then to the end. */
static int measure_decode(engine *e, int vocab, int n, bool forked, const bench_engine_options *o,
                          duel_rng *rng, double *tokens_per_s) {
    int requests = forked ? 1 : n;
    int32_t **prompts = calloc((size_t)requests, sizeof *prompts);
    int *started = calloc((size_t)requests, sizeof *started);
    int status = -1;
    if (!prompts || !started) goto done;
    duel_error err = {0};
    for (int i = 0; i < requests; i++) {
        if (!(prompts[i] = random_tokens(rng, (int)o->prompt, vocab))) goto done;
        engine_request r = {.tokens = prompts[i], .num_tokens = (int)o->prompt,
                            .num_candidates = forked ? n : 1, .sampling = {0, 1, 0},
                            .seed = (uint64_t)i, .max_new_tokens = (int)o->decode,
                            .want_progress = true, .user = (void *)(intptr_t)i};
        uint64_t id;
        if (engine_submit(e, &r, &id, &err)) {
            fprintf(stderr, "duel bench engine: %s\n", err.message);
            goto done;
        }
    }
    int all_started = 0, finished = 0, need_started = n;
    long long after = 0;
    double t_start = 0, t_end = 0;
    while (finished < requests) {
        engine_event *ev = next_event(e);
        if (!ev) goto done;
        int i = (int)(intptr_t)ev->user;
        if (ev->kind == ENGINE_EVENT_PROGRESS) {
            if (all_started == need_started) after += ev->count;
            for (int k = 0; k < ev->count && all_started < need_started; k++) {
                /* forked: the fork step samples every candidate's first token at once */
                started[i]++;
                if (forked ? started[i] <= n : started[i] == 1) all_started++;
                if (all_started == need_started) t_start = duel_time_seconds();
            }
        } else if (ev->kind == ENGINE_EVENT_FINISHED) {
            finished++;
            t_end = duel_time_seconds();
        } else if (ev->kind != ENGINE_EVENT_CANDIDATE) {
            fprintf(stderr, "duel bench engine: request failed: %s\n",
                    ev->message ? ev->message : "?");
            engine_event_free(ev);
            goto done;
        }
        engine_event_free(ev);
    }
    *tokens_per_s = t_end > t_start ? (double)after / (t_end - t_start) : 0;
    status = 0;
done:
    for (int i = 0; prompts && i < requests; i++) free(prompts[i]);
    free(prompts);
    free(started);
    return status;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *v, int n, double q) {
    qsort(v, (size_t)n, sizeof *v, compare_double);
    double pos = q * (n - 1);
    int lo = (int)pos;
    return lo + 1 < n ? v[lo] + (pos - lo) * (v[lo + 1] - v[lo]) : v[lo];
}

/* Runs one request to its end; returns its FINISHED event (caller frees) and candidate 0's
 * tokens in *answer (malloc'd). */
static engine_event *run_one_duel(engine *e, const engine_request *r, int32_t **answer,
                                  int *n_answer, engine_event **ready);
static engine_event *run_one(engine *e, const engine_request *r, int32_t **answer, int *n_answer) {
    return run_one_duel(e, r, answer, n_answer, NULL);
}

/* run_one that also hands back a duel request's DUEL_READY event in *ready (caller frees). */
static engine_event *run_one_duel(engine *e, const engine_request *r, int32_t **answer,
                                  int *n_answer, engine_event **ready) {
    duel_error err = {0};
    uint64_t id;
    if (engine_submit(e, r, &id, &err)) {
        fprintf(stderr, "duel bench engine: %s\n", err.message);
        return NULL;
    }
    for (;;) {
        engine_event *ev = next_event(e);
        if (!ev) return NULL;
        if (ev->kind == ENGINE_EVENT_CANDIDATE && ev->candidate == 0 && answer) {
            *answer = ev->tokens;
            *n_answer = ev->count;
            ev->tokens = NULL;
        }
        if (ev->kind == ENGINE_EVENT_DUEL_READY && ready) {
            engine_event_free(*ready);
            *ready = ev;
            continue;
        }
        if (ev->kind == ENGINE_EVENT_FINISHED) return ev;
        if (ev->kind == ENGINE_EVENT_ERROR || ev->kind == ENGINE_EVENT_CANCELLED) {
            fprintf(stderr, "duel bench engine: request failed: %s\n",
                    ev->message ? ev->message : "cancelled");
            engine_event_free(ev);
            return NULL;
        }
        engine_event_free(ev);
    }
}

/* --duel: time to duel with and without ERM features + scoring + selection. */
static int bench_duel(engine *e, int vocab, const bench_engine_options *o, duel_rng *rng,
                      const char *features, json_t *out) {
    int n = (int)o->duels;
    double *plain = calloc((size_t)n, sizeof *plain), *with = calloc((size_t)n, sizeof *with);
    double *feat = calloc((size_t)n, sizeof *feat), *score = calloc((size_t)n, sizeof *score);
    double *sel = calloc((size_t)n, sizeof *sel);
    int rc = -1;
    if (!plain || !with || !feat || !score || !sel) goto done;
    /* A warm-up duel (page faults, BLAS threads), not timed. */
    for (int d = -1; d < n; d++) {
        fprintf(stderr, "duel %d/%d (M = %lld, %lld new tokens), plain and scored...\n", d + 1, n,
                o->duel_m, o->duel_new);
        int32_t *prompt = random_tokens(rng, (int)o->prompt, vocab);
        if (!prompt) goto done;
        engine_request r = {.tokens = prompt, .num_tokens = (int)o->prompt,
                            .num_candidates = (int)o->duel_m, .sampling = {1.0f, 1.0f, 0},
                            .seed = (uint64_t)(d + 1000), .max_new_tokens = (int)o->duel_new,
                            .want_hidden = true};
        engine_event *ev = run_one(e, &r, NULL, NULL);
        r.duel = true;
        r.strategy = DUEL_STRATEGY_EE_TS;
        engine_event *ready = NULL;
        engine_event *ev2 = ev ? run_one_duel(e, &r, NULL, NULL, &ready) : NULL;
        free(prompt);
        if (!ev || !ev2 || !ready) {
            if (ev2 && !ready) fprintf(stderr, "duel bench engine: no duel_ready event\n");
            engine_event_free(ev);
            engine_event_free(ev2);
            engine_event_free(ready);
            goto done;
        }
        if (d >= 0) {
            plain[d] = ev->timings.total_ms;
            with[d] = ev2->timings.total_ms;
            feat[d] = ready->features_ms;
            score[d] = ready->score_ms;
            sel[d] = ready->select_ms;
        }
        engine_event_free(ev);
        engine_event_free(ev2);
        engine_event_free(ready);
    }
    double p_plain = percentile(plain, n, 0.5), p_with = percentile(with, n, 0.5);
    double p_feat = percentile(feat, n, 0.5), p_score = percentile(score, n, 0.5),
           p_sel = percentile(sel, n, 0.5);
    printf("time to duel (M = %lld, %lld new tokens, %lld-token prompt, p50 of %d):\n", o->duel_m,
           o->duel_new, o->prompt, n);
    printf("    without ERM scoring + selection: %.1f ms\n", p_plain);
    printf("    with (%s features, ee_ts):  %.1f ms (%+.2f%%)\n", features, p_with,
           100 * (p_with - p_plain) / p_plain);
    printf("    of which features %.2f ms, ERM scoring %.3f ms, selection %.3f ms "
           "(scoring + selection %.3f%% of the plain duel)\n",
           p_feat, p_score, p_sel, 100 * (p_score + p_sel) / p_plain);
    json_t *td = json_object();
    json_object_set_new(td, "m", json_integer(o->duel_m));
    json_object_set_new(td, "new_tokens", json_integer(o->duel_new));
    json_object_set_new(td, "features", json_string(features));
    json_object_set_new(td, "plain_p50_ms", json_real(p_plain));
    json_object_set_new(td, "duel_p50_ms", json_real(p_with));
    json_object_set_new(td, "features_p50_ms", json_real(p_feat));
    json_object_set_new(td, "score_p50_ms", json_real(p_score));
    json_object_set_new(td, "select_p50_ms", json_real(p_sel));
    json_object_set_new(out, "duel_overhead", td);
    rc = 0;
done:
    free(plain);
    free(with);
    free(feat);
    free(score);
    free(sel);
    return rc;
}

/* The replay's default number of turns: 8, or as many as the model's context holds. */
#define BENCH_DEFAULT_TURNS 8

/* Checks the options against the model before any work (a late failure threw away minutes of
 * measurements): every run's sequences must fit the context. Fills in the replay's default
 * number of turns. CLI_EXIT_OK or a usage error naming the options. */
static int check_against_model(const cli_command *cmd, bench_engine_options *o, bool duel,
                               bool turns_given, const model_config *c) {
    long long ctx = c->max_position_embeddings;
    if (o->prompt + o->decode > ctx)
        return cli_usage_error(cmd, "--prompt + --decode = %lld tokens exceed the model's context "
                                    "(%lld)", o->prompt + o->decode, ctx);
    if (o->prompt + o->duel_new > ctx)
        return cli_usage_error(cmd, "--prompt + --duel-new = %lld tokens exceed the model's "
                                    "context (%lld)", o->prompt + o->duel_new, ctx);
    if (duel) return CLI_EXIT_OK; /* --duel runs no replay */
    long long per_turn = o->turn_user + o->turn_answer;
    if (!turns_given) {
        o->turns = ctx / per_turn < BENCH_DEFAULT_TURNS ? ctx / per_turn : BENCH_DEFAULT_TURNS;
        if (o->turns < 2)
            return cli_usage_error(cmd, "--turn-user + --turn-answer = %lld tokens: the replay's 2 "
                                        "turns need %lld, more than the model's context (%lld)",
                                   per_turn, 2 * per_turn, ctx);
    }
    if (o->turns * per_turn > ctx)
        return cli_usage_error(cmd, "--turns x (--turn-user + --turn-answer) = %lld exceeds the "
                                    "model's context (%lld)", o->turns * per_turn, ctx);
    return CLI_EXIT_OK;
}

/* The longest sequence any run holds, in tokens (one candidate; forks share its prompt). */
static long long longest_sequence(const bench_engine_options *o, bool duel) {
    long long n = o->prompt + (o->decode > o->duel_new ? o->decode : o->duel_new);
    long long replay = o->turns * (o->turn_user + o->turn_answer);
    return !duel && replay > n ? replay : n;
}

static int parse_levels(const char *s, int *levels, int *n) {
    *n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096 || *n == BENCH_MAX_LEVELS) return -1;
        levels[(*n)++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return *n ? 0 : -1;
}

int bench_engine(int argc, char **argv) {
    const char *dir = NULL, *weights_name = "f32", *kv_dtype = "f32";
    bench_engine_options o = {.prompt = 32, .decode = 32, .duel_m = 8, .duel_new = 64,
                              .duels = 8, .turns = 8, .turn_user = 24, .turn_answer = 48,
                              .kv_mb = 512, .batch_tokens = 256, .rounds = 1,
                              .levels = "1,8,32,128"};
    bool json = false, duel = false, turns_given = false;
    const char *duel_features = "reference", *compute = "auto";
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &dir, "DIR", "model directory; required", 0, 0, false, NULL},
        {"--weights", CLI_OPT_STRING, &weights_name, "FMT",
         "weight storage: f32 (default), bf16 or q8", 0, 0, false, NULL},
        {"--kv-dtype", CLI_OPT_STRING, &kv_dtype, "T", "KV cache storage: f32 (default) or bf16",
         0, 0, false, NULL},
        {"--concurrency", CLI_OPT_STRING, &o.levels, "LIST",
         "numbers of concurrent sequences for the decode rate (default 1,8,32,128)", 0, 0, false,
         NULL},
        {"--prompt", CLI_OPT_INT, &o.prompt, "N", "prompt tokens of the decode runs (default 32)",
         1, 1e5, false, NULL},
        {"--decode", CLI_OPT_INT, &o.decode, "N",
         "tokens each sequence decodes in the decode runs (default 32)", 2, 1e5, false, NULL},
        {"--rounds", CLI_OPT_INT, &o.rounds, "N",
         "rounds of the decode runs, each over every level and the forked M (default 1); "
         "rates are medians, ratios to one sequence are taken within each round", 1, 1000,
         false, NULL},
        {"--duel-m", CLI_OPT_INT, &o.duel_m, "M", "candidates per duel (default 8)", 2, 1024,
         false, NULL},
        {"--duel-new", CLI_OPT_INT, &o.duel_new, "N", "new tokens per candidate (default 64)", 1,
         1e5, false, NULL},
        {"--duels", CLI_OPT_INT, &o.duels, "N", "duels timed, one at a time (default 8)", 1, 1e4,
         false, NULL},
        {"--turns", CLI_OPT_INT, &o.turns, "N",
         "turns of the conversation replay (default 8, or as many as fit the model's context)",
         2, 1000, false, &turns_given},
        {"--turn-user", CLI_OPT_INT, &o.turn_user, "N",
         "new user tokens per turn (default 24)", 1, 1e5, false, NULL},
        {"--turn-answer", CLI_OPT_INT, &o.turn_answer, "N",
         "answer tokens per turn (default 48)", 1, 1e5, false, NULL},
        {"--kv-mb", CLI_OPT_INT, &o.kv_mb, "MIB", "KV pool memory budget (default 512)", 1,
         1 << 20, false, NULL},
        {"--batch-tokens", CLI_OPT_INT, &o.batch_tokens, "N",
         "token budget of one engine step (default 256)", 1, 1e6, false, NULL},
        {"--duel", CLI_OPT_FLAG, &duel, NULL,
         "only time to duel, with and without ERM features + scoring + selection", 0, 0, false,
         NULL},
        {"--duel-features", CLI_OPT_STRING, &duel_features, "SRC",
         "--duel: reference (the model as its own frozen reference, default) or policy", 0, 0,
         false, NULL},
        {"--compute", CLI_OPT_STRING, &compute, "NAME",
         "compute backend: auto (CUDA when built in and a GPU answers, else the CPU; default), "
         "cpu or cuda", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL,
         "print the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "bench engine", "--model DIR [options]",
        "Measures the serving engine (continuous batching over the paged KV cache) through its\n"
        "queues: aggregate greedy decode tokens/s at each --concurrency level (independent\n"
        "requests) and for one request of --duel-m forked candidates; time to duel (submit ->\n"
        "all --duel-m candidates of --duel-new tokens finished; p50 and p95 of --duels runs)\n"
        "with the prompt positions computed; KV bytes per token; and the prefix cache's hit\n"
        "rate over a --turns conversation replay (cached prompt positions / history positions).\n"
        "Every option is checked against the model (its context, the KV budget) before any run.\n"
        "--duel measures only the time to duel with and without the duel path (ERM features,\n"
        "scoring with a fresh seeded ERM, ee_ts selection).",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (!dir) return cli_usage_error(&cmd, "--model DIR is required");
    duel_error err = {0};
    model_load_options lopt = {.weights = WEIGHT_F32};
    int kv_bytes = 4;
    if (weight_format_parse(weights_name, &lopt.weights, &err))
        return cli_usage_error(&cmd, "--weights: %s", err.message);
    if (kv_dtype_parse(kv_dtype, &kv_bytes, &err))
        return cli_usage_error(&cmd, "--kv-dtype: %s", err.message);
    int n_providers = 0;
    const compute_provider *const *providers = cli_compute_providers(&n_providers);
    if (!compute_name_known(compute, providers, n_providers))
        return cli_usage_error(&cmd, "--compute wants auto, cpu or cuda, got '%s'", compute);
    engine_feature_source feature_source;
    if (engine_features_parse(duel_features, &feature_source, &err))
        return cli_usage_error(&cmd, "--duel-features: %s", err.message);
    bool policy_features = feature_source == ENGINE_FEATURES_POLICY;
    int levels[BENCH_MAX_LEVELS], n_levels;
    if (parse_levels(o.levels, levels, &n_levels))
        return cli_usage_error(&cmd, "--concurrency wants a comma-separated list of 1..4096, "
                                     "got '%s'", o.levels);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "duel bench engine: model directory '%s' does not exist\n", dir);
        return CLI_EXIT_FAILURE;
    }
    fprintf(stderr, "loading %s (%s weights)...\n", dir, weights_name);
    model *m = NULL;
    if (model_load_with(dir, &lopt, &m, &err)) {
        fprintf(stderr, "duel bench engine: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    const model_config *c = model_get_config(m);
    int vocab = c->vocab_size;
    if ((rc = check_against_model(&cmd, &o, duel, turns_given, c))) {
        model_free(m);
        return rc;
    }
    erm *scorer = NULL;
    if (duel) {
        erm_config ec = {ERM_DEFAULT_NUM_HEADS, 2 * c->hidden_size, ERM_DEFAULT_HIDDEN};
        duel_rng erm_rng;
        duel_rng_seed(&erm_rng, 42);
        if (erm_create(&ec, &erm_rng, &scorer, &err)) {
            fprintf(stderr, "duel bench engine: %s\n", err.message);
            model_free(m);
            return CLI_EXIT_FAILURE;
        }
    }
    engine_model_params mp = {"bench", m, NULL};
    engine_params ep = {.models = &mp, .num_models = 1,
                        .kv_memory_bytes = (size_t)o.kv_mb << 20,
                        .kv_bytes_per_element = kv_bytes,
                        .max_batch_tokens = (int)o.batch_tokens,
                        .max_candidates = (int)o.duel_m,
                        .erm = scorer,
                        .features = policy_features ? ENGINE_FEATURES_POLICY
                                                    : ENGINE_FEATURES_REFERENCE,
                        .backend = compute,
                        .providers = providers,
                        .num_providers = n_providers};
    engine *e = NULL;
    if (engine_create(&ep, &e, &err)) {
        fprintf(stderr, "duel bench engine: %s\n", err.message);
        erm_free(scorer);
        model_free(m);
        return CLI_EXIT_FAILURE;
    }
    int status = CLI_EXIT_FAILURE;
    engine_stats es;
    engine_stats_get(e, &es);
    long long longest = longest_sequence(&o, duel);
    if ((longest + es.block_size - 1) / es.block_size > es.kv_blocks) {
        status = cli_usage_error(&cmd, "--kv-mb %lld holds %d blocks of %d tokens, fewer than the "
                                       "longest sequence (%lld tokens) needs", o.kv_mb,
                                 es.kv_blocks, es.block_size, longest);
        engine_destroy(e);
        erm_free(scorer);
        model_free(m);
        return status;
    }
    json_t *out = json_object();
    duel_rng rng;
    duel_rng_seed(&rng, 42);
    printf("model: %s (%d layers, hidden %d, %d kv heads x %d; %s weights, %s KV), compute "
           "backend %s\n",
           dir, c->num_layers, c->hidden_size, c->num_kv_heads, c->head_dim, weights_name,
           kv_dtype, engine_backend_name(e));
    json_object_set_new(out, "compute", json_string(engine_backend_name(e)));
    printf("KV: %zu bytes per token, %d blocks of %d tokens (%lld MiB budget)\n",
           es.kv_bytes_per_token, es.kv_blocks, es.block_size, o.kv_mb);
    json_object_set_new(out, "model", json_string(dir));
    json_object_set_new(out, "weights", json_string(weights_name));
    json_object_set_new(out, "kv_dtype", json_string(kv_dtype));
    json_object_set_new(out, "kv_bytes_per_token", json_integer((json_int_t)es.kv_bytes_per_token));
    json_object_set_new(out, "kv_blocks", json_integer(es.kv_blocks));

    if (duel) {
        if (bench_duel(e, vocab, &o, &rng, duel_features, out)) goto done;
        goto finish;
    }

    /* Decode rates. A warm-up first (page faults, BLAS threads). Then --rounds rounds, each
     * over every level and the forked M back to back, so that on a shared machine the ratios to
     * one sequence compare runs seconds apart; rates are medians over the rounds. */
    {
        double rate;
        if (measure_decode(e, vocab, 1, false, &o, &rng, &rate)) goto done;
        int rounds = (int)o.rounds, cols = n_levels + 1; /* the levels, then the forked M */
        double *r = calloc((size_t)rounds * (size_t)cols, sizeof *r);
        double *tmp = calloc((size_t)rounds, sizeof *tmp);
        if (!r || !tmp) {
            free(r);
            free(tmp);
            goto done;
        }
        int one = -1; /* column of the 1-sequence level */
        for (int i = 0; i < n_levels; i++)
            if (levels[i] == 1) one = i;
        double load_start[3] = {0, 0, 0}, load_end[3] = {0, 0, 0};
        getloadavg(load_start, 3);
        /* The read bandwidth, sampled before every round and after the last (best sample), for
         * one sequence's decode as a fraction of it (it reads every weight once per token). */
        machine_probe *probe = NULL;
        double read_gbps = 0;
        if (machine_probe_create(BENCH_ENGINE_PROBE_SGEMM, (size_t)1 << 30, 2, &probe, &err))
            fprintf(stderr, "duel bench engine: no bandwidth probe: %s\n", err.message);
        bool ok = true;
        for (int k = 0; k <= rounds && ok; k++) {
            for (int j = 0; probe && j < 2; j++) {
                double g = 0;
                if (machine_probe_bandwidth(probe, &g, &err) == 0 && g > read_gbps) read_gbps = g;
            }
            if (k == rounds) break;
            for (int i = 0; i < cols && ok; i++) {
                bool forked = i == n_levels;
                int n = forked ? (int)o.duel_m : levels[i];
                if (forked)
                    fprintf(stderr, "decode (round %d/%d): one request of M = %d forked "
                                    "candidates...\n", k + 1, rounds, n);
                else
                    fprintf(stderr, "decode (round %d/%d): %d concurrent sequences...\n", k + 1,
                            rounds, n);
                ok = measure_decode(e, vocab, n, forked, &o, &rng, &r[k * cols + i]) == 0;
            }
        }
        getloadavg(load_end, 3);
        machine_probe_free(probe);
        if (!ok) {
            free(r);
            free(tmp);
            goto done;
        }
        json_t *rates = json_object(), *ratios = json_object();
        json_object_set_new(out, "decode_tokens_per_s", rates);
        json_object_set_new(out, "decode_rounds", json_integer(rounds));
        json_t *load = json_array();
        json_array_append_new(load, json_real(load_start[0]));
        json_array_append_new(load, json_real(load_end[0]));
        json_object_set_new(out, "decode_load_average_1min", load);
        printf("decode: %d round%s, load average (1 min) %.2f at the start, %.2f at the end\n",
               rounds, rounds == 1 ? "" : "s", load_start[0], load_end[0]);
        for (int i = 0; i < cols; i++) {
            bool forked = i == n_levels;
            for (int k = 0; k < rounds; k++) tmp[k] = r[k * cols + i];
            double med = percentile(tmp, rounds, 0.5);
            if (forked)
                printf("decode, one request of M = %lld forked candidates: %.1f tokens/s",
                       o.duel_m, med);
            else
                printf("decode, %4d concurrent sequences: %9.1f tokens/s", levels[i], med);
            if (!forked && levels[i] == 1 && read_gbps > 0) {
                double gbps = med * (double)model_weight_bytes(m) / 1e9;
                printf(" (%.2f GB/s of %s weights: %.0f%% of the read bandwidth, %.2f GB/s)", gbps,
                       weights_name, 100 * gbps / read_gbps, read_gbps);
                json_object_set_new(out, "read_gb_per_s", json_real(read_gbps));
                json_object_set_new(out, "decode_weight_bytes_per_token",
                                    json_real((double)model_weight_bytes(m)));
                json_object_set_new(out, "decode_fraction_of_bandwidth", json_real(gbps / read_gbps));
            }
            if (forked) {
                json_object_set_new(out, "decode_tokens_per_s_forked_m", json_real(med));
            } else {
                char key[16];
                snprintf(key, sizeof key, "%d", levels[i]);
                json_object_set_new(rates, key, json_real(med));
            }
            if (one >= 0 && i != one) {
                for (int k = 0; k < rounds; k++)
                    tmp[k] = r[k * cols + one] > 0 ? r[k * cols + i] / r[k * cols + one] : 0;
                double lo = percentile(tmp, rounds, 0), mid = percentile(tmp, rounds, 0.5),
                       hi = percentile(tmp, rounds, 1);
                if (rounds == 1) printf(" (%.2fx one sequence)", mid);
                else printf(" (%.2fx one sequence, median of rounds; %.2f-%.2fx)", mid, lo, hi);
                json_t *q = json_object();
                json_object_set_new(q, "median", json_real(mid));
                json_object_set_new(q, "min", json_real(lo));
                json_object_set_new(q, "max", json_real(hi));
                if (forked) {
                    json_object_set_new(out, "decode_ratio_forked_m", q);
                } else {
                    char key[16];
                    snprintf(key, sizeof key, "%d", levels[i]);
                    json_object_set_new(ratios, key, q);
                }
            }
            printf("\n");
        }
        if (one >= 0) json_object_set_new(out, "decode_ratio_to_one", ratios);
        else json_decref(ratios);
        free(r);
        free(tmp);
    }

    /* Time to duel, one duel at a time on an idle engine. */
    {
        double *total = calloc((size_t)o.duels, sizeof *total);
        double *first = calloc((size_t)o.duels, sizeof *first);
        long long computed = 0, prompt_tokens = 0;
        if (!total || !first) {
            free(total);
            free(first);
            goto done;
        }
        bool ok = true;
        for (long long d = 0; d < o.duels && ok; d++) {
            fprintf(stderr, "duel %lld/%lld (M = %lld, %lld new tokens)...\n", d + 1, o.duels,
                    o.duel_m, o.duel_new);
            int32_t *prompt = random_tokens(&rng, (int)o.prompt, vocab);
            engine_request r = {.tokens = prompt, .num_tokens = (int)o.prompt,
                                .num_candidates = (int)o.duel_m, .sampling = {1.0f, 1.0f, 0},
                                .seed = (uint64_t)d, .max_new_tokens = (int)o.duel_new,
                                .want_hidden = true};
            engine_event *ev = prompt ? run_one(e, &r, NULL, NULL) : NULL;
            free(prompt);
            if (!ev) {
                ok = false;
                break;
            }
            total[d] = ev->timings.total_ms;
            first[d] = ev->timings.first_token_ms;
            computed += ev->counts.prompt_computed;
            prompt_tokens += ev->counts.prompt_tokens;
            engine_event_free(ev);
        }
        if (ok) {
            double p50 = percentile(total, (int)o.duels, 0.5),
                   p95 = percentile(total, (int)o.duels, 0.95),
                   f50 = percentile(first, (int)o.duels, 0.5);
            printf("time to duel (M = %lld, %lld new tokens, %lld-token prompt): p50 %.0f ms, "
                   "p95 %.0f ms (first tokens at p50 %.0f ms)\n",
                   o.duel_m, o.duel_new, o.prompt, p50, p95, f50);
            printf("    prompt positions computed: %lld for %lld prompt tokens over %lld duels "
                   "(prefilled once per duel, not M times)\n",
                   computed, prompt_tokens, o.duels);
            json_t *td = json_object();
            json_object_set_new(td, "m", json_integer(o.duel_m));
            json_object_set_new(td, "new_tokens", json_integer(o.duel_new));
            json_object_set_new(td, "p50_ms", json_real(p50));
            json_object_set_new(td, "p95_ms", json_real(p95));
            json_object_set_new(td, "first_token_p50_ms", json_real(f50));
            json_object_set_new(td, "prompt_tokens", json_integer(prompt_tokens));
            json_object_set_new(td, "prompt_positions_computed", json_integer(computed));
            json_object_set_new(out, "time_to_duel", td);
        }
        free(total);
        free(first);
        if (!ok) goto done;
    }

    /* Multi-turn replay: every turn a duel of M candidates; candidate 0 is the chosen answer. */
    {
        int cap = (int)(o.turns * (o.turn_user + o.turn_answer)); /* fits: check_against_model */
        int32_t *conv = malloc((size_t)cap * sizeof *conv);
        if (!conv) goto done;
        int len = 0;
        long long history = 0, cached = 0;
        bool ok = true;
        for (long long t = 0; t < o.turns && ok; t++) {
            int prev = len;
            for (long long i = 0; i < o.turn_user; i++)
                conv[len++] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
            engine_request r = {.tokens = conv, .num_tokens = len,
                                .num_candidates = (int)o.duel_m, .sampling = {1.0f, 1.0f, 0},
                                .seed = (uint64_t)t, .max_new_tokens = (int)o.turn_answer,
                                .want_hidden = true};
            int32_t *answer = NULL;
            int n_answer = 0;
            engine_event *ev = run_one(e, &r, &answer, &n_answer);
            if (!ev) {
                ok = false;
                break;
            }
            if (t > 0) {
                history += prev;
                cached += ev->counts.cached_tokens;
            }
            fprintf(stderr, "turn %lld: prompt %d tokens, history %d, cached %lld\n", t + 1, len,
                    prev, (long long)ev->counts.cached_tokens);
            engine_event_free(ev);
            for (int i = 0; i < n_answer && len < cap; i++) conv[len++] = answer[i];
            free(answer);
        }
        free(conv);
        if (!ok) goto done;
        double hit = history ? (double)cached / (double)history : 0;
        printf("prefix cache, %lld-turn replay (M = %lld): %lld of %lld history tokens reused "
               "(%.1f%%)\n",
               o.turns, o.duel_m, cached, history, 100 * hit);
        json_object_set_new(out, "prefix_cache_hit_rate", json_real(hit));
        json_object_set_new(out, "prefix_cache_history_tokens", json_integer(history));
    }
finish:
    engine_stats_get(e, &es);
    printf("engine: %llu steps, %llu tokens run, %llu preemptions\n",
           (unsigned long long)es.steps, (unsigned long long)es.tokens,
           (unsigned long long)es.preemptions);
    json_object_set_new(out, "preemptions", json_integer((json_int_t)es.preemptions));
    if (json) {
        json_t *o = out;
        out = NULL;
        if (bench_json_print("engine", o)) goto done;
    }
    status = CLI_EXIT_OK;
done:
    json_decref(out);
    engine_destroy(e);
    erm_free(scorer);
    model_free(m);
    return status;
}
