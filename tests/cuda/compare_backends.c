/* compare_backends.c: a tool (not a ctest test) that checks one compute backend against another
 * on a real model directory, for ops/bench_cuda.sh: the CUDA engine against the CPU engine on
 * the default model and on random SmolLM2-135M- and Llama-3.2-1B-shaped models (the script's
 * dry run on a machine without a GPU compares the CPU with the test double, "reference").
 *
 *   greedy: each backend decodes --steps tokens greedily from the same random prompt through the
 *     compute interface (its own sampling: argmax on the device for CUDA); the token sequences
 *     must be identical, or part only where backend a's top two logits are within --tol of each
 *     other (a near tie that bf16 may break either way). Backend b then decodes a's tokens
 *     (teacher forcing), and its logits at every step are compared with a's: relative error
 *     ||b - a|| / ||a|| per step, the largest must be under --tol (2e-2 suits bf16 against f32).
 *   duels: --duels duel requests (ee_ts, M = --m, temperature 1, seeds 1..) through the engine on
 *     each backend, the model as its own frozen reference, one seeded ERM: the pair and its
 *     placement must be the same wherever the candidates came out the same (a sampled token can
 *     move across a bucket boundary under bf16; those duels are counted, not failed) and their
 *     rewards are not tied (a fresh ERM often scores candidates alike within 1e-4: rounding then
 *     picks; counted too), and the features must agree within --tol.
 * Prints one line per finding and, with --json, one JSON object as the last line. Exit 0 when
 * every check holds, 1 otherwise, 2 for a bad command line. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute.h"
#include "compute_reference.h"
#include "cuda_compute.h"
#include "engine.h"
#include "erm.h"
#include "model.h"
#include "timer.h"

typedef struct options {
    const char *model_dir, *a, *b;
    int steps, prompt_len, duels, m, new_tokens;
    double tol;
    bool json;
} options;

static const compute_provider *const *providers(void) {
    static const compute_provider *list[2];
    list[0] = compute_reference_provider();
    list[1] = cuda_compute_provider();
    return list;
}

static int die(const char *what, const duel_error *err) {
    fprintf(stderr, "compare_backends: %s: %s\n", what, err ? err->message : "");
    return 1;
}

/* Decodes o->steps tokens greedily on backend `name` after prompt; when forced is not NULL it
 * feeds those tokens instead of its own (teacher forcing). tokens_out [steps], logits_out
 * [steps][V] (the logits each token was chosen from). */
static int greedy(const options *o, const char *name, model *m, const int32_t *prompt,
                  const int32_t *forced, int32_t *tokens_out, float *logits_out, double *seconds) {
    compute_backend *b = NULL;
    duel_error err = {0};
    if (compute_open(name, providers(), 2, &b, NULL, &err)) return die("open", &err);
    const model_config *c = model_get_config(m);
    const int V = model_output_size(m), total = o->prompt_len + o->steps, bs = 16;
    kv_pool_params pp = {.num_layers = c->num_layers, .num_kv_heads = c->num_kv_heads,
                         .head_dim = c->head_dim, .block_size = bs,
                         .num_blocks = (total + bs - 1) / bs + 1, .allocate_storage = true};
    kv_pool *pool = NULL;
    compute_arm *arm = NULL;
    int rc = DUEL_OK;
    if ((rc = compute_pool_prepare(b, &pp, &err)) || (rc = kv_pool_create(&pp, &pool, &err)) ||
        (rc = compute_pool_attach(b, pool, &err)) || (rc = compute_arm_load(b, m, &arm, &err))) {
        compute_destroy(b);
        kv_pool_destroy(pool);
        return die(name, &err);
    }
    kv_sequence seq;
    kv_sequence_init(&seq, 1);
    sampler_params greedy_params = {0, 1, 0};
    int32_t next = 0;
    double t0 = duel_time_seconds();
    for (int t = 0; !rc && t < o->steps; t++) {
        const int32_t *in = t == 0 ? prompt : &next;
        int n = t == 0 ? o->prompt_len : 1;
        compute_entry e = {&seq, in, n, seq.num_tokens, 0, NULL, NULL, NULL};
        compute_sample s = {.logits_row = 0, .vocab = V, .params = &greedy_params, .forced = -1};
        if ((rc = kv_sequence_reserve(pool, &seq, n, NULL, &err)) ||
            (rc = compute_step_begin(b, 1, V, &err)) ||
            (rc = compute_copy_pending(b, pool, &err)) ||
            (rc = compute_forward(b, arm, pool, &e, 1, &err)) ||
            (rc = kv_sequence_commit(pool, &seq, in, n, &err)) ||
            (rc = compute_read_logits(b, 0, logits_out + (size_t)t * V, &err)) ||
            (rc = compute_sample_rows(b, &s, 1, &err)))
            break;
        if (s.status) {
            rc = s.status;
            break;
        }
        tokens_out[t] = s.token;
        next = forced ? forced[t] : s.token;
    }
    *seconds = duel_time_seconds() - t0;
    kv_sequence_free(pool, &seq);
    compute_arm_unload(b, arm);
    compute_pool_detach(b, pool);
    kv_pool_destroy(pool);
    compute_destroy(b);
    if (rc) return die(name, &err);
    return 0;
}

static double rel_err(const float *b, const float *a, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) return INFINITY;
        num += ((double)b[i] - a[i]) * ((double)b[i] - a[i]);
        den += (double)a[i] * a[i];
    }
    return den > 0 ? sqrt(num / den) : (num > 0 ? INFINITY : 0);
}

static void top2(const float *x, int n, float *top, float *second) {
    *top = *second = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (x[i] > *top) *second = *top, *top = x[i];
        else if (x[i] > *second) *second = x[i];
    }
}

typedef struct duel_result {
    int32_t *tokens; /* [m][new_tokens] */
    int *counts;
    duel_pair pair;
    duel_placement placement;
    float *features; /* [m][d_feat] */
    int d_feat;
    float *rewards;  /* [m][heads] */
    int heads;
    double ms;
} duel_result;

/* Whether two candidates' rewards under some head are within rounding of each other: the pair
 * may then go either way on two backends (a fresh ERM often scores candidates alike). */
static bool rewards_near_tie(const float *r, int m, int heads) {
    for (int i = 0; i < m; i++)
        for (int j = i + 1; j < m; j++)
            for (int e = 0; e < heads; e++) {
                double a = r[i * heads + e], b = r[j * heads + e];
                if (fabs(a - b) <= 1e-4 * (1 + fabs(a))) return true;
            }
    return false;
}

static int run_duels(const options *o, const char *name, model *m, const erm *scorer,
                     const int32_t *prompt, duel_result *out) {
    engine_model_params mp = {"model", m, NULL};
    engine_params ep = {.models = &mp, .num_models = 1, .kv_memory_bytes = (size_t)1 << 30,
                        .max_candidates = o->m, .erm = scorer, .backend = name,
                        .providers = providers(), .num_providers = 2};
    engine *e = NULL;
    duel_error err = {0};
    if (engine_create(&ep, &e, &err)) return die(name, &err);
    int status = 0;
    for (int d = 0; d < o->duels && !status; d++) {
        engine_request req = {.tokens = prompt, .num_tokens = o->prompt_len,
                              .num_candidates = o->m, .sampling = {1.0f, 1.0f, 0},
                              .seed = (uint64_t)d + 1, .max_new_tokens = o->new_tokens,
                              .duel = true, .strategy = DUEL_STRATEGY_EE_TS};
        uint64_t id;
        double t0 = duel_time_seconds();
        if (engine_submit(e, &req, &id, &err)) {
            status = die("submit", &err);
            break;
        }
        duel_result *r = &out[d];
        for (;;) {
            engine_event *ev = NULL;
            engine_poll(e, 300, &ev);
            if (!ev) {
                fprintf(stderr, "compare_backends: %s: no event in 300 s\n", name);
                status = 1;
                break;
            }
            engine_event_kind k = ev->kind;
            if (k == ENGINE_EVENT_CANDIDATE) {
                int n = ev->count < o->new_tokens ? ev->count : o->new_tokens;
                memcpy(r->tokens + (size_t)ev->candidate * o->new_tokens, ev->tokens,
                       (size_t)n * sizeof(int32_t));
                r->counts[ev->candidate] = n;
            } else if (k == ENGINE_EVENT_DUEL_READY) {
                r->pair = ev->pair;
                r->placement = ev->placement;
                free(r->features);
                r->features = malloc((size_t)ev->count * ev->d_feat * sizeof *r->features);
                if (r->features)
                    memcpy(r->features, ev->features, (size_t)ev->count * ev->d_feat * sizeof(float));
                r->d_feat = ev->d_feat;
                free(r->rewards);
                r->rewards = malloc((size_t)ev->count * ev->num_heads * sizeof *r->rewards);
                if (r->rewards)
                    memcpy(r->rewards, ev->rewards, (size_t)ev->count * ev->num_heads * sizeof(float));
                r->heads = ev->num_heads;
            } else if (k == ENGINE_EVENT_ERROR || k == ENGINE_EVENT_CANCELLED) {
                fprintf(stderr, "compare_backends: %s: duel %d: %s\n", name, d,
                        ev->message ? ev->message : "cancelled");
                status = 1;
            }
            engine_event_free(ev);
            if (k == ENGINE_EVENT_FINISHED || status) break;
        }
        r->ms = (duel_time_seconds() - t0) * 1e3;
    }
    engine_destroy(e);
    return status;
}

int main(int argc, char **argv) {
    options o = {NULL, "cpu", "cuda", 64, 16, 8, 4, 32, 2e-2, false};
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--json")) o.json = true;
        else if (!v) break;
        else if (!strcmp(argv[i], "--model")) o.model_dir = v, i++;
        else if (!strcmp(argv[i], "--a")) o.a = v, i++;
        else if (!strcmp(argv[i], "--b")) o.b = v, i++;
        else if (!strcmp(argv[i], "--steps")) o.steps = atoi(v), i++;
        else if (!strcmp(argv[i], "--prompt-len")) o.prompt_len = atoi(v), i++;
        else if (!strcmp(argv[i], "--duels")) o.duels = atoi(v), i++;
        else if (!strcmp(argv[i], "--m")) o.m = atoi(v), i++;
        else if (!strcmp(argv[i], "--new")) o.new_tokens = atoi(v), i++;
        else if (!strcmp(argv[i], "--tol")) o.tol = atof(v), i++;
        else break;
    }
    if (!o.model_dir || o.steps < 1 || o.prompt_len < 1 || o.duels < 0 || o.m < 2 ||
        o.new_tokens < 1 || !(o.tol > 0)) {
        fprintf(stderr, "usage: compare_backends --model DIR [--a cpu] [--b cuda] [--steps 64] "
                        "[--prompt-len 16] [--duels 8] [--m 4] [--new 32] [--tol 0.02] [--json]\n");
        return 2;
    }
    duel_error err = {0};
    model *m = NULL;
    if (model_load(o.model_dir, &m, &err)) return die(o.model_dir, &err);
    const model_config *c = model_get_config(m);
    const int V = model_output_size(m);
    if (o.prompt_len + o.steps > c->max_position_embeddings) {
        fprintf(stderr, "compare_backends: prompt + steps exceed the context of %d\n",
                c->max_position_embeddings);
        model_free(m);
        return 2;
    }
    int32_t *prompt = malloc((size_t)o.prompt_len * sizeof *prompt);
    int32_t *tok_a = malloc((size_t)o.steps * sizeof *tok_a), *tok_b = malloc((size_t)o.steps * sizeof *tok_b);
    int32_t *tok_tf = malloc((size_t)o.steps * sizeof *tok_tf);
    float *lg_a = malloc((size_t)o.steps * V * sizeof *lg_a), *lg_b = malloc((size_t)o.steps * V * sizeof *lg_b);
    if (!prompt || !tok_a || !tok_b || !tok_tf || !lg_a || !lg_b) {
        fprintf(stderr, "compare_backends: out of memory\n");
        return 1;
    }
    duel_rng rng;
    duel_rng_seed(&rng, 2024);
    for (int i = 0; i < o.prompt_len; i++)
        prompt[i] = (int32_t)duel_rng_below(&rng, (uint64_t)c->vocab_size);
    double sec_a = 0, sec_b = 0, sec_tf = 0;
    int failed = greedy(&o, o.a, m, prompt, NULL, tok_a, lg_a, &sec_a);
    if (!failed) failed = greedy(&o, o.b, m, prompt, NULL, tok_b, lg_b, &sec_b);
    int diverge = -1;
    for (int t = 0; !failed && t < o.steps && diverge < 0; t++)
        if (tok_a[t] != tok_b[t]) diverge = t;
    double margin = 0;
    bool near_tie = false;
    if (diverge >= 0) {
        float top, second;
        top2(lg_a + (size_t)diverge * V, V, &top, &second);
        margin = (double)top - second;
        near_tie = margin <= o.tol * (1 + fabs((double)top));
    }
    /* b on a's tokens: its logits at every step against a's. */
    if (!failed) failed = greedy(&o, o.b, m, prompt, tok_a, tok_tf, lg_b, &sec_tf);
    double worst = 0, sum = 0;
    int worst_step = 0;
    for (int t = 0; !failed && t < o.steps; t++) {
        double e = rel_err(lg_b + (size_t)t * V, lg_a + (size_t)t * V, V);
        sum += e;
        if (!(e <= worst)) worst = e, worst_step = t;
    }
    bool greedy_ok = !failed && (diverge < 0 || near_tie);
    bool logits_ok = !failed && worst < o.tol;
    printf("%s: greedy %d steps, %s vs %s: %s", o.model_dir, o.steps, o.a, o.b,
           diverge < 0 ? "identical" : near_tie ? "part at a near tie" : "PART");
    if (diverge >= 0) printf(" (step %d, %s's top-2 margin %.3g)", diverge, o.a, margin);
    printf("; logits rel. err. max %.3g (step %d), mean %.3g (tolerance %.3g)%s\n", worst,
           worst_step, o.steps ? sum / o.steps : 0, o.tol, logits_ok ? "" : " FAIL");
    printf("greedy decode: %s %.1f tokens/s, %s %.1f tokens/s (one sequence, through the "
           "compute interface)\n", o.a, o.steps / (sec_a > 0 ? sec_a : 1), o.b,
           o.steps / (sec_b > 0 ? sec_b : 1));

    /* Duels through the engine. */
    int pairs_equal = 0, same_candidates = 0, pair_mismatch = 0, tied = 0;
    double feat_err = 0;
    double ms_a = 0, ms_b = 0;
    if (!failed && o.duels > 0) {
        erm_config ec = {ERM_DEFAULT_NUM_HEADS, 2 * c->hidden_size, ERM_DEFAULT_HIDDEN};
        duel_rng erng;
        duel_rng_seed(&erng, 42);
        erm *scorer = NULL;
        if (erm_create(&ec, &erng, &scorer, &err)) return die("erm", &err);
        duel_result *ra = calloc((size_t)o.duels, sizeof *ra), *rb = calloc((size_t)o.duels, sizeof *rb);
        for (int d = 0; d < o.duels; d++) {
            ra[d].tokens = calloc((size_t)o.m * o.new_tokens, sizeof(int32_t));
            rb[d].tokens = calloc((size_t)o.m * o.new_tokens, sizeof(int32_t));
            ra[d].counts = calloc((size_t)o.m, sizeof(int));
            rb[d].counts = calloc((size_t)o.m, sizeof(int));
        }
        failed = run_duels(&o, o.a, m, scorer, prompt, ra) || run_duels(&o, o.b, m, scorer, prompt, rb);
        for (int d = 0; !failed && d < o.duels; d++) {
            bool same = !memcmp(ra[d].counts, rb[d].counts, (size_t)o.m * sizeof(int)) &&
                        !memcmp(ra[d].tokens, rb[d].tokens, (size_t)o.m * o.new_tokens * sizeof(int32_t));
            bool pair = ra[d].placement.a == rb[d].placement.a && ra[d].placement.b == rb[d].placement.b;
            same_candidates += same;
            pairs_equal += pair;
            if (same && ra[d].features && rb[d].features) {
                double e = rel_err(rb[d].features, ra[d].features, o.m * ra[d].d_feat);
                if (!(e <= feat_err)) feat_err = e;
            }
            bool tie = ra[d].rewards && rewards_near_tie(ra[d].rewards, o.m, ra[d].heads);
            tied += same && !pair && tie;
            pair_mismatch += same && !pair && !tie;
            ms_a += ra[d].ms;
            ms_b += rb[d].ms;
        }
        printf("duels: %d of %d with the same candidates, %d of %d the same pair (%d differ "
               "with the same candidates and rewards not tied, %d at a near tie), features rel. "
               "err. max %.3g; mean time to duel %s %.1f ms, %s %.1f ms\n",
               same_candidates, o.duels, pairs_equal, o.duels, pair_mismatch, tied, feat_err, o.a,
               ms_a / o.duels, o.b, ms_b / o.duels);
        for (int d = 0; d < o.duels; d++) {
            free(ra[d].tokens), free(rb[d].tokens), free(ra[d].counts), free(rb[d].counts);
            free(ra[d].features), free(rb[d].features), free(ra[d].rewards), free(rb[d].rewards);
        }
        free(ra);
        free(rb);
        erm_free(scorer);
    }
    bool duels_ok = !failed && pair_mismatch == 0 && feat_err < o.tol;
    if (o.json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:i, s:b, s:i, s:f, s:b, s:f, s:i, s:f, s:f, s:f, "
                              "s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:b}",
                              "model", o.model_dir, "a", o.a, "b", o.b, "greedy_steps", o.steps,
                              "greedy_identical", diverge < 0, "first_divergence", diverge,
                              "divergence_margin", margin, "divergence_near_tie", near_tie,
                              "logits_rel_err_max", isfinite(worst) ? worst : -1.0,
                              "logits_rel_err_worst_step", worst_step,
                              "logits_rel_err_mean", o.steps ? sum / o.steps : 0.0,
                              "greedy_tokens_per_s_a", o.steps / (sec_a > 0 ? sec_a : 1),
                              "greedy_tokens_per_s_b", o.steps / (sec_b > 0 ? sec_b : 1),
                              "duels", o.duels, "duels_same_candidates", same_candidates,
                              "duels_same_pair", pairs_equal, "duels_pair_mismatch", pair_mismatch,
                              "duels_tied", tied,
                              "features_rel_err_max", isfinite(feat_err) ? feat_err : -1.0,
                              "time_to_duel_ms_a", o.duels ? ms_a / o.duels : 0.0,
                              "time_to_duel_ms_b", o.duels ? ms_b / o.duels : 0.0,
                              "pass", greedy_ok && logits_ok && duels_ok);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (text) printf("%s\n", text);
        free(text);
        json_decref(j);
    }
    free(prompt), free(tok_a), free(tok_b), free(tok_tf), free(lg_a), free(lg_b);
    model_free(m);
    return greedy_ok && logits_ok && duels_ok ? 0 : 1;
}
