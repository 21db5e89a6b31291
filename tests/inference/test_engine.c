/* test_engine.c: the engine's equivalences and bad inputs on the random models of the
 * fwd_make_models fixture (CPU backend).
 *
 * The equivalences run the scheduler over the real batched forward with a recording wrapper
 * that keeps every logits row it produces, keyed by the whole token prefix it was computed for,
 * so that two runs can be compared position by position:
 *   (1) a batch of mixed requests gives the tokens each request gives alone;
 *   (2) forked candidates equal independent runs of the same prompt with seeds seed + i;
 *   (3) a prefix-cache hit (a conversation's next turn) gives the logits of a cold run;
 *   (4) a pool small enough to force preemption gives the outputs of an unconstrained run.
 * Logits of the same prefix must agree within relative error 1e-5. Tokens must agree, except
 * that a divergence right after a near-tie (top-2 logit gap under 1e-4, where GEMM-vs-GEMV
 * rounding may flip the argmax) is detected and reported, not failed; the candidate's later
 * tokens are then not compared.
 * Then the engine thread: a duel request through the queues (prefilled once, M candidates with
 * text, log-probabilities and hidden states checked against model_forward), two arms batched in
 * one loop, progress events, cancel, and the bad inputs of engine_submit/engine_cancel with the
 * engine still serving afterwards. */
#include "test_helpers.h"

#include "engine.h"
#include "kv_cache.h"
#include "model.h"
#include "scheduler.h"
#include "tokenizer.h"

#define LOGIT_TOL 1e-5
#define NEAR_TIE 1e-4

static void model_dir(const char *name, char *out, size_t cap) {
    const char *build = test_env("DUEL_BUILD_DIR", NULL);
    if (!build) fail_msg("DUEL_BUILD_DIR is not set (run through ctest)");
    snprintf(out, cap, "%s/test-models/%s", build, name);
}

static model *load_model(const char *name) {
    char dir[1024];
    model_dir(name, dir, sizeof dir);
    model *m = NULL;
    duel_error err = {0};
    if (model_load(dir, &m, &err)) fail_msg("model_load %s: %s", name, err.message);
    return m;
}

/* ---- recording forward --------------------------------------------------------------------- */

typedef struct logits_record {
    uint64_t key;
    float *logits;
} logits_record;

/* A compute backend that runs the CPU backend and records every logits row it produced, keyed
 * by (model, the sequence's tokens so far). */
typedef struct recorder {
    compute_backend base;
    compute_backend *cpu;
    compute_arm *arms[4]; /* the CPU backend's, by model index */
    int n_arms;
    model **models;
    int vocab;
    logits_record *recs;
    int n, cap;
} recorder;

static uint64_t prefix_key(int model_index, const int32_t *tokens, int64_t n) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)model_index;
    for (int64_t i = 0; i < n; i++) h = (h ^ (uint32_t)tokens[i]) * 1099511628211ull;
    return (h ^ (uint64_t)n) * 1099511628211ull;
}

static const float *recorder_find(const recorder *r, uint64_t key) {
    for (int i = r->n - 1; i >= 0; i--)
        if (r->recs[i].key == key) return r->recs[i].logits;
    return NULL;
}

static int recording_forward(compute_backend *b, compute_arm *arm, kv_pool *pool,
                             const compute_entry *entries, int n, duel_error *err) {
    recorder *r = (recorder *)b;
    int model_index = 0;
    while (model_index < r->n_arms && r->arms[model_index] != arm) model_index++;
    assert_true(model_index < r->n_arms);
    int rc = compute_forward(r->cpu, arm, pool, entries, n, err);
    if (rc) return rc;
    int bs = kv_pool_block_size(pool);
    float *row = malloc((size_t)r->vocab * sizeof *row);
    for (int i = 0; i < n; i++) {
        const compute_entry *e = &entries[i];
        if (e->logits_row < 0) continue;
        assert_int_equal(compute_read_logits(r->cpu, e->logits_row, row, err), 0);
        int64_t len = e->start + e->n_tokens;
        int32_t *prefix = malloc((size_t)len * sizeof *prefix);
        for (int64_t p = 0; p < e->start; p++)
            prefix[p] = kv_pool_block_tokens(pool, e->seq->blocks[p / bs])[p % bs];
        memcpy(prefix + e->start, e->tokens, (size_t)e->n_tokens * sizeof *prefix);
        if (r->n == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 256;
            r->recs = realloc(r->recs, (size_t)r->cap * sizeof *r->recs);
        }
        float *copy = malloc((size_t)r->vocab * sizeof *copy);
        memcpy(copy, row, (size_t)r->vocab * sizeof *copy);
        r->recs[r->n++] = (logits_record){prefix_key(model_index, prefix, len), copy};
        free(prefix);
    }
    free(row);
    return DUEL_OK;
}

static int recording_step_begin(compute_backend *b, int rows, int vocab, duel_error *err) {
    return compute_step_begin(((recorder *)b)->cpu, rows, vocab, err);
}

static int recording_sample(compute_backend *b, compute_sample *samples, int n,
                            duel_error *err) {
    return compute_sample_rows(((recorder *)b)->cpu, samples, n, err);
}

static int recording_read_logits(compute_backend *b, int row, float *out, duel_error *err) {
    return compute_read_logits(((recorder *)b)->cpu, row, out, err);
}

static const compute_ops recording_ops = {.name = "recording",
                                          .step_begin = recording_step_begin,
                                          .forward = recording_forward,
                                          .sample = recording_sample,
                                          .read_logits = recording_read_logits};

static void recorder_open(recorder *r, model **models, int n_models) {
    r->base.ops = &recording_ops;
    duel_error err = {0};
    assert_int_equal(compute_open("cpu", NULL, 0, &r->cpu, NULL, &err), 0);
    r->models = models;
    r->n_arms = n_models;
    for (int i = 0; i < n_models; i++)
        assert_int_equal(compute_arm_load(r->cpu, models[i], &r->arms[i], &err), 0);
    r->vocab = model_output_size(models[0]);
}

static void recorder_close(recorder *r) {
    for (int i = 0; i < r->n_arms; i++) compute_arm_unload(r->cpu, r->arms[i]);
    r->n_arms = 0;
    compute_destroy(r->cpu);
    r->cpu = NULL;
}

static void recorder_free(recorder *r) {
    for (int i = 0; i < r->n; i++) free(r->recs[i].logits);
    free(r->recs);
}

/* ---- running requests through a scheduler over real models ---------------------------------- */

typedef struct run_candidate {
    int32_t tokens[256];
    int count;
    double logprob_sum;
} run_candidate;

typedef struct run_result {
    run_candidate cand[8];
    int M;
    sched_request_stats stats;
    bool done;
} run_result;

typedef struct run_ctx {
    run_result *results; /* by request index (user) */
} run_ctx;

static void collect(void *vctx, const sched_event *ev) {
    run_ctx *ctx = vctx;
    run_result *res = &ctx->results[(uintptr_t)ev->user];
    if (ev->kind == SCHED_EVENT_CANDIDATE) {
        run_candidate *c = &res->cand[ev->candidate];
        assert_true(ev->count <= 256);
        memcpy(c->tokens, ev->tokens, (size_t)ev->count * sizeof *c->tokens);
        c->count = ev->count;
        c->logprob_sum = ev->logprob_sum;
    } else if (ev->kind == SCHED_EVENT_DONE) {
        if (ev->status) fail_msg("request failed: %s", ev->message);
        assert_false(ev->cancelled);
        res->stats = *ev->stats;
        res->done = true;
    }
}

typedef struct run_setup {
    int num_blocks;   /* pool size in blocks of 16 */
    int batch_tokens;
    int max_running;
} run_setup;

/* Runs reqs[0..n) (all submitted at once unless one_at_a_time) and fills results. */
static void run_requests(model **models, int n_models, const sched_request_params *reqs, int n,
                         const run_setup *setup, bool one_at_a_time, recorder *rec,
                         run_result *results, sched_stats *stats_out) {
    const model_config *c = model_get_config(models[0]);
    kv_pool_params pp = {.num_layers = c->num_layers, .num_kv_heads = c->num_kv_heads,
                         .head_dim = c->head_dim, .num_blocks = setup->num_blocks,
                         .allocate_storage = true};
    kv_pool *pool = NULL;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&pp, &pool, &err), 0);
    assert_true(n_models <= 4);
    recorder_open(rec, models, n_models);
    sched_model_info infos[4];
    for (int i = 0; i < n_models; i++)
        infos[i] = (sched_model_info){rec->arms[i], (uint64_t)i + 1, model_output_size(models[i]),
                                      model_get_config(models[i])->hidden_size,
                                      model_get_config(models[i])->max_position_embeddings};
    sched_params sp = {.max_batch_tokens = setup->batch_tokens, .max_running = setup->max_running};
    scheduler *s = NULL;
    assert_int_equal(sched_create(&sp, pool, infos, n_models, &rec->base, &s, &err), 0);
    run_ctx ctx = {results};
    memset(results, 0, (size_t)n * sizeof *results);
    for (int i = 0; i < n; i++) {
        sched_request_params p = reqs[i];
        p.user = (void *)(uintptr_t)i;
        results[i].M = p.num_candidates;
        uint64_t id;
        if (sched_submit(s, &p, &id, &err)) fail_msg("submit %d: %s", i, err.message);
        if (one_at_a_time)
            while (sched_has_work(s)) {
                if (sched_step(s, collect, &ctx, &err) < 0) fail_msg("%s", err.message);
            }
    }
    while (sched_has_work(s)) {
        if (sched_step(s, collect, &ctx, &err) < 0) fail_msg("%s", err.message);
        if (sched_check(s, &err)) fail_msg("%s", err.message);
    }
    for (int i = 0; i < n; i++) assert_true(results[i].done);
    if (stats_out) sched_stats_get(s, stats_out);
    sched_destroy(s);
    recorder_close(rec);
    kv_pool_stats ps;
    kv_pool_stats_get(pool, &ps);
    assert_int_equal(ps.used_blocks, 0);
    kv_pool_destroy(pool);
}

static double top2_gap(const float *logits, int V) {
    float a = -INFINITY, b = -INFINITY;
    for (int v = 0; v < V; v++) {
        if (logits[v] > a) {
            b = a;
            a = logits[v];
        } else if (logits[v] > b) {
            b = logits[v];
        }
    }
    return (double)a - b;
}

/* Compares candidate `ca` of run A with `cb` of run B (same model, same prompt): tokens equal
 * up to a reported near-tie, logits of every shared prefix within LOGIT_TOL. Returns the number
 * of near-ties reported (0 or 1). */
static int compare_candidate(const char *what, int model_index, const int32_t *prompt,
                             int prompt_len, const run_candidate *ca, const recorder *ra,
                             const run_candidate *cb, const recorder *rb, int V) {
    int32_t seq[2048];
    memcpy(seq, prompt, (size_t)prompt_len * sizeof *seq);
    for (int t = 0;; t++) {
        if (t == ca->count && t == cb->count) break;
        if (t == ca->count || t == cb->count)
            fail_msg("%s: lengths differ (%d vs %d) with equal tokens up to %d", what, ca->count,
                     cb->count, t);
        /* The logits that chose token t were computed over prompt + tokens[0..t). */
        uint64_t key = prefix_key(model_index, seq, prompt_len + t);
        const float *la = recorder_find(ra, key), *lb = recorder_find(rb, key);
        if (!la || !lb) fail_msg("%s: no logits recorded for position %d", what, prompt_len + t);
        double e = test_relative_error_f32(la, lb, (size_t)V);
        if (!(e < LOGIT_TOL))
            fail_msg("%s: logits at position %d differ by %g", what, prompt_len + t, e);
        if (ca->tokens[t] != cb->tokens[t]) {
            double gap = top2_gap(lb, V);
            if (gap < NEAR_TIE) {
                printf("%s: near-tie at position %d (top-2 gap %.3g): tokens %d vs %d; "
                       "reported, not compared further\n",
                       what, prompt_len + t, gap, ca->tokens[t], cb->tokens[t]);
                return 1;
            }
            fail_msg("%s: token %d differs (%d vs %d) without a near-tie (gap %g)", what, t,
                     ca->tokens[t], cb->tokens[t], gap);
        }
        seq[prompt_len + t] = ca->tokens[t];
    }
    return 0;
}

static int32_t *random_prompt(duel_rng *rng, int len, int vocab) {
    int32_t *p = malloc((size_t)len * sizeof *p);
    for (int i = 0; i < len; i++) p[i] = (int32_t)duel_rng_below(rng, (uint64_t)vocab - 3);
    return p;
}

/* (1) mixed batch vs alone, and (4) preemption vs unconstrained, greedy, two models. */
static void test_batch_and_preemption_equal_alone(void **state) {
    (void)state;
    const char *names[] = {"tiny-llama-f32", "tiny-neox-f32", "tiny-llama-bias-f32"};
    for (int k = 0; k < 3; k++) {
        model *m = load_model(names[k]);
        int V = model_output_size(m);
        duel_rng rng;
        duel_rng_seed(&rng, 100 + (uint64_t)k);
        enum { N = 8 };
        sched_request_params reqs[N];
        int32_t *prompts[N];
        for (int i = 0; i < N; i++) {
            int len = 1 + (int)duel_rng_below(&rng, 60);
            prompts[i] = random_prompt(&rng, len, V);
            reqs[i] = (sched_request_params){.prompt = prompts[i],
                                             .prompt_len = len,
                                             .num_candidates = 1 + (int)duel_rng_below(&rng, 3),
                                             .sampling = {0, 1, 0},
                                             .seed = (uint64_t)i,
                                             .max_new_tokens = 5 + (int)duel_rng_below(&rng, 30)};
        }
        run_result alone[N], batch[N], tight[N];
        recorder ra = {0}, rb = {0}, rt = {0};
        run_setup roomy = {512, 256, 256};
        run_requests(&m, 1, reqs, N, &roomy, true, &ra, alone, NULL);
        run_requests(&m, 1, reqs, N, &roomy, false, &rb, batch, NULL);
        /* 9 blocks of 16: one candidate (<= 90 tokens, 6 blocks) fits; several do not. */
        run_setup small = {9, 24, 64};
        sched_stats ts;
        run_requests(&m, 1, reqs, N, &small, false, &rt, tight, &ts);
        assert_true(ts.preemptions > 0);
        int ties = 0;
        char what[256];
        for (int i = 0; i < N; i++)
            for (int c = 0; c < reqs[i].num_candidates; c++) {
                snprintf(what, sizeof what, "%s request %d candidate %d batch-vs-alone", names[k], i, c);
                ties += compare_candidate(what, 0, prompts[i], reqs[i].prompt_len,
                                          &batch[i].cand[c], &rb, &alone[i].cand[c], &ra, V);
                snprintf(what, sizeof what, "%s request %d candidate %d preempted-vs-alone",
                         names[k], i, c);
                ties += compare_candidate(what, 0, prompts[i], reqs[i].prompt_len,
                                          &tight[i].cand[c], &rt, &alone[i].cand[c], &ra, V);
                /* Greedy: every candidate of a request is the same. */
                ties += compare_candidate(what, 0, prompts[i], reqs[i].prompt_len,
                                          &alone[i].cand[c], &ra, &alone[i].cand[0], &ra, V);
            }
        printf("%s: %d requests, %llu preemptions under the small pool, %d near-ties\n",
               names[k], N, (unsigned long long)ts.preemptions, ties);
        /* Prefilled once when nothing was preempted: every prompt position computed once. */
        for (int i = 0; i < N; i++)
            assert_int_equal(batch[i].stats.prompt_computed,
                             reqs[i].prompt_len - batch[i].stats.cached_tokens);
        for (int i = 0; i < N; i++) free(prompts[i]);
        recorder_free(&ra), recorder_free(&rb), recorder_free(&rt);
        model_free(m);
    }
}

/* (2) forked candidates (sampling) equal independent runs with seeds seed + i. */
static void test_forks_equal_independent_runs(void **state) {
    (void)state;
    model *m = load_model("tiny-llama-qwen2-f32");
    int V = model_output_size(m);
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    int32_t *prompt = random_prompt(&rng, 37, V);
    enum { M = 6 };
    sched_request_params fork = {.prompt = prompt, .prompt_len = 37, .num_candidates = M,
                                 .sampling = {0.9f, 0.95f, 50}, .seed = 1000,
                                 .max_new_tokens = 24};
    sched_request_params singles[M];
    for (int i = 0; i < M; i++) {
        singles[i] = fork;
        singles[i].num_candidates = 1;
        singles[i].seed = fork.seed + (uint64_t)i;
    }
    run_result rf[1], rs[M];
    recorder recf = {0}, recs = {0};
    run_setup roomy = {256, 256, 256};
    run_requests(&m, 1, &fork, 1, &roomy, false, &recf, rf, NULL);
    run_requests(&m, 1, singles, M, &roomy, true, &recs, rs, NULL);
    /* Prefilled once for all M. */
    assert_int_equal(rf[0].stats.prompt_computed, 37);
    int distinct = 0;
    for (int i = 0; i < M; i++) {
        const run_candidate *a = &rf[0].cand[i], *b = &rs[i].cand[0];
        if (a->count != b->count || memcmp(a->tokens, b->tokens, (size_t)a->count * 4))
            fail_msg("candidate %d differs from the independent run with seed %llu", i,
                     (unsigned long long)singles[i].seed);
        assert_true(fabs(a->logprob_sum - b->logprob_sum) <= 1e-4 * fabs(b->logprob_sum) + 1e-4);
        if (i && (a->count != rf[0].cand[0].count ||
                  memcmp(a->tokens, rf[0].cand[0].tokens, (size_t)a->count * 4)))
            distinct++;
    }
    assert_true(distinct > 0); /* the seeds matter */
    free(prompt);
    recorder_free(&recf), recorder_free(&recs);
    model_free(m);
}

/* (3) prefix-cache hits give the logits of a cold run: turn 2 extends turn 1's prompt and answer. */
static void test_prefix_cache_hits_equal_cold(void **state) {
    (void)state;
    model *m = load_model("tiny-neox-seq-f32");
    int V = model_output_size(m);
    duel_rng rng;
    duel_rng_seed(&rng, 77);
    int32_t *turn1 = random_prompt(&rng, 50, V);
    sched_request_params r1 = {.prompt = turn1, .prompt_len = 50, .num_candidates = 1,
                               .sampling = {0, 1, 0}, .max_new_tokens = 20};
    run_result res1[1];
    recorder rec1 = {0};
    run_setup roomy = {256, 256, 256};
    run_requests(&m, 1, &r1, 1, &roomy, false, &rec1, res1, NULL);
    /* Turn 2: turn 1's prompt, its answer, 15 new tokens. */
    int32_t turn2[128];
    memcpy(turn2, turn1, 50 * sizeof *turn2);
    memcpy(turn2 + 50, res1[0].cand[0].tokens, (size_t)res1[0].cand[0].count * sizeof *turn2);
    int len2 = 50 + res1[0].cand[0].count;
    for (int i = 0; i < 15; i++) turn2[len2++] = (int32_t)duel_rng_below(&rng, (uint64_t)V - 3);
    sched_request_params both[2] = {r1, r1};
    both[1].prompt = turn2;
    both[1].prompt_len = len2;
    sched_request_params cold = both[1];
    run_result warm[2], coldres[1];
    recorder recw = {0}, recc = {0};
    run_requests(&m, 1, both, 2, &roomy, true, &recw, warm, NULL); /* turn 1 then turn 2 */
    run_requests(&m, 1, &cold, 1, &roomy, false, &recc, coldres, NULL);
    printf("prefix cache: turn 2 of %d tokens reused %lld cached tokens (cold: %lld)\n", len2,
           (long long)warm[1].stats.cached_tokens, (long long)coldres[0].stats.cached_tokens);
    /* Turn 1 committed its prompt and all but its last answer token: those full blocks hit. */
    assert_int_equal(warm[1].stats.cached_tokens, 16 * ((50 + res1[0].cand[0].count - 1) / 16));
    assert_int_equal(coldres[0].stats.cached_tokens, 0);
    compare_candidate("turn 2 warm-vs-cold", 0, turn2, len2, &warm[1].cand[0], &recw,
                      &coldres[0].cand[0], &recc, V);
    free(turn1);
    recorder_free(&rec1), recorder_free(&recw), recorder_free(&recc);
    model_free(m);
}

/* ---- the engine thread ---------------------------------------------------------------------- */

typedef struct engine_fixture {
    model *m[2];
    tokenizer *tok;
    engine *e;
} engine_fixture;

static void fixture_open(engine_fixture *f, int arms, int max_candidates, size_t kv_bytes) {
    memset(f, 0, sizeof *f);
    f->m[0] = load_model("tiny-llama-f32");
    f->m[1] = load_model("tiny-llama-bf16"); /* same shape, other weights */
    char dir[1024], path[1200];
    model_dir("tiny-llama-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    duel_error err = {0};
    if (tokenizer_load(path, &f->tok, &err)) fail_msg("%s", err.message);
    engine_model_params mp[2] = {{"policy", f->m[0], f->tok}, {"v2", f->m[1], f->tok}};
    engine_params ep = {.models = mp, .num_models = arms, .kv_memory_bytes = kv_bytes,
                        .max_candidates = max_candidates};
    if (engine_create(&ep, &f->e, &err)) fail_msg("engine_create: %s", err.message);
}

static void fixture_close(engine_fixture *f) {
    engine_destroy(f->e);
    model_free(f->m[0]);
    model_free(f->m[1]);
    tokenizer_free(f->tok);
}

static engine_event *wait_event(engine *e) {
    engine_event *ev = NULL;
    engine_poll(e, 30.0, &ev);
    if (!ev) fail_msg("no engine event within 30 s");
    return ev;
}

/* Greedy decode of prompt with model_forward over a contiguous cache: the obviously-correct
 * reference for the engine's tokens, hidden states and log-probabilities. */
static int greedy_reference(model *m, const int32_t *prompt, int len, int max_new, int32_t *out,
                            float *hidden_last, float *prompt_hidden, double *logprob_sum) {
    int V = model_output_size(m);
    model_kv_cache *kv = NULL;
    duel_error err = {0};
    assert_int_equal(model_kv_cache_create(m, len + max_new + 1, &kv, &err), 0);
    float *logits = malloc((size_t)V * sizeof *logits);
    assert_int_equal(model_forward(m, kv, prompt, len, logits, false, prompt_hidden, &err), 0);
    *logprob_sum = 0;
    int n = 0;
    for (;;) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        double max = logits[best], sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)logits[v] - max);
        *logprob_sum += -log(sum);
        out[n++] = best;
        if (n == max_new) break;
        assert_int_equal(model_forward(m, kv, &out[n - 1], 1, logits, false, NULL, &err), 0);
    }
    assert_int_equal(model_forward(m, kv, &out[n - 1], 1, NULL, false, hidden_last, &err), 0);
    free(logits);
    model_kv_cache_free(kv);
    return n;
}

static void test_engine_duel_request(void **state) {
    (void)state;
    engine_fixture f;
    fixture_open(&f, 1, 16, (size_t)4 << 20);
    const char *text = "<|im_start|>user\nWhat is a duel?<|im_end|>\n<|im_start|>assistant\n";
    int32_t *prompt = NULL;
    size_t len = 0;
    duel_error err = {0};
    assert_int_equal(tokenizer_encode(f.tok, text, strlen(text), true, &prompt, &len, &err), 0);
    enum { M = 8, NEW = 12 };
    engine_request req = {.arm = "policy", .tokens = prompt, .num_tokens = (int)len,
                          .num_candidates = M, .sampling = {0, 1, 0}, .seed = 3,
                          .max_new_tokens = NEW, .want_hidden = true, .want_progress = true,
                          .user = &f};
    uint64_t id = 0;
    assert_int_equal(engine_submit(f.e, &req, &id, &err), 0);
    assert_int_equal(id, 1);
    int32_t ref[NEW];
    int H = model_get_config(f.m[0])->hidden_size;
    float ref_hidden[256], ref_prompt_hidden[256];
    double ref_lp;
    assert_true(H <= 256);
    /* The engine thread owns f.m[0] now: the reference runs on a copy of its own. */
    model *refm = load_model("tiny-llama-f32");
    int n_ref = greedy_reference(refm, prompt, (int)len, NEW, ref, ref_hidden, ref_prompt_hidden,
                                 &ref_lp);
    model_free(refm);
    int candidates = 0, progress[M] = {0};
    int32_t streamed[M][NEW];
    for (;;) {
        engine_event *ev = wait_event(f.e);
        assert_int_equal(ev->request_id, id);
        assert_ptr_equal(ev->user, &f);
        if (ev->kind == ENGINE_EVENT_PROGRESS) {
            for (int i = 0; i < ev->count; i++) {
                int c = ev->candidates[i];
                assert_true(c >= 0 && c < M && progress[c] < NEW);
                streamed[c][progress[c]++] = ev->tokens[i];
            }
        } else if (ev->kind == ENGINE_EVENT_CANDIDATE) {
            candidates++;
            int c = ev->candidate;
            assert_int_equal(ev->count, n_ref);
            assert_int_equal(ev->finish_reason, ENGINE_FINISH_LENGTH);
            assert_int_equal(progress[c], ev->count);
            assert_memory_equal(streamed[c], ev->tokens, (size_t)ev->count * sizeof(int32_t));
            /* Tiny random models have no near-ties at these positions in practice; a mismatch
             * here would show as a token difference with its index. */
            for (int t = 0; t < n_ref; t++)
                if (ev->tokens[t] != ref[t])
                    fail_msg("candidate %d token %d: %d, model_forward greedy gives %d", c, t,
                             ev->tokens[t], ref[t]);
            assert_int_equal(ev->hidden_size, H);
            double e = test_relative_error_f32(ev->hidden, ref_hidden, (size_t)H);
            if (!(e < LOGIT_TOL)) fail_msg("candidate %d hidden state differs by %g", c, e);
            assert_true(fabs(ev->logprob_sum - ref_lp) < 1e-4 * fabs(ref_lp) + 1e-5);
            assert_non_null(ev->text);
            char *expect = NULL;
            size_t elen = 0;
            assert_int_equal(tokenizer_decode(f.tok, ref, (size_t)n_ref, true, &expect, &elen, &err), 0);
            assert_string_equal(ev->text, expect);
            free(expect);
            assert_true(ev->finish_ms > 0);
        } else {
            assert_int_equal(ev->kind, ENGINE_EVENT_FINISHED);
            assert_int_equal(candidates, M);
            /* The prompt was prefilled once for all M candidates. */
            assert_int_equal(ev->counts.prompt_tokens, (int)len);
            assert_int_equal(ev->counts.prompt_computed, (int64_t)len);
            assert_int_equal(ev->counts.generated_tokens, M * NEW);
            assert_true(ev->timings.total_ms >= ev->timings.first_token_ms &&
                        ev->timings.first_token_ms >= ev->timings.queued_ms &&
                        ev->timings.queued_ms >= 0);
            assert_int_equal(ev->hidden_size, H);
            assert_true(test_relative_error_f32(ev->hidden, ref_prompt_hidden, (size_t)H) <
                        LOGIT_TOL);
            engine_event_free(ev);
            break;
        }
        engine_event_free(ev);
    }
    engine_stats st;
    engine_stats_get(f.e, &st);
    assert_int_equal(st.requests_finished, 1);
    assert_int_equal(st.kv_bytes_per_token,
                     2 * 3 * 2 * 16 * sizeof(float)); /* layers x kv heads x head_dim */
    /* Cancel of the finished request and of ids never issued: clear errors. */
    assert_int_equal(engine_cancel(f.e, id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "already finished"));
    assert_int_equal(engine_cancel(f.e, 99, &err), DUEL_ENOTFOUND);
    assert_int_equal(engine_cancel(f.e, 0, &err), DUEL_ENOTFOUND);
    free(prompt);
    fixture_close(&f);
}

/* Two arms in one loop, each equal to its own greedy decode; the eos stop; a cancel. */
static void test_engine_two_arms_and_cancel(void **state) {
    (void)state;
    engine_fixture f;
    fixture_open(&f, 2, 8, (size_t)4 << 20);
    duel_rng rng;
    duel_rng_seed(&rng, 11);
    enum { N = 6, NEW = 10 };
    int32_t *prompts[N];
    int lens[N];
    uint64_t ids[N];
    duel_error err = {0};
    for (int i = 0; i < N; i++) {
        lens[i] = 3 + (int)duel_rng_below(&rng, 40);
        prompts[i] = random_prompt(&rng, lens[i], 512);
        engine_request req = {.arm = i % 2 ? "v2" : "policy", .tokens = prompts[i],
                              .num_tokens = lens[i], .num_candidates = 1 + i % 3,
                              .sampling = {0, 1, 0}, .max_new_tokens = NEW,
                              .user = (void *)(uintptr_t)i};
        assert_int_equal(engine_submit(f.e, &req, &ids[i], &err), 0);
    }
    /* A long request to cancel while it is queued or running. */
    int32_t *long_prompt = random_prompt(&rng, 30, 512);
    engine_request lr = {.tokens = long_prompt, .num_tokens = 30, .num_candidates = 4,
                         .sampling = {0.8f, 1, 0}, .max_new_tokens = 2000,
                         .user = (void *)(uintptr_t)N};
    uint64_t long_id;
    assert_int_equal(engine_submit(f.e, &lr, &long_id, &err), 0);
    /* References on copies of the models (the engine thread owns f.m[]). */
    model *refm[2] = {load_model("tiny-llama-f32"), load_model("tiny-llama-bf16")};
    int finished = 0, cancelled = 0, candidates[N] = {0};
    /* Cancelled at once: it needs ~2000 steps, the cancel is handled at the next one. */
    if (engine_cancel(f.e, long_id, &err)) fail_msg("cancel: %s", err.message);
    while (finished < N || !cancelled) {
        engine_event *ev = wait_event(f.e);
        int i = (int)(uintptr_t)ev->user;
        if (i == N) {
            assert_int_equal(ev->request_id, long_id);
            if (ev->kind == ENGINE_EVENT_CANCELLED) {
                cancelled++;
                assert_int_equal(ev->counts.prompt_tokens, 30);
            } else if (ev->kind != ENGINE_EVENT_PROGRESS && ev->kind != ENGINE_EVENT_CANDIDATE) {
                fail_msg("long request: event %d (%s)", ev->kind, ev->message ? ev->message : "");
            }
        } else if (ev->kind == ENGINE_EVENT_CANDIDATE) {
            int32_t ref[NEW];
            float h[256], ph[256];
            double lp;
            int n = greedy_reference(refm[i % 2], prompts[i], lens[i], NEW, ref, h, ph, &lp);
            assert_int_equal(ev->count, n);
            for (int t = 0; t < n; t++)
                if (ev->tokens[t] != ref[t])
                    fail_msg("request %d (arm %s) token %d: %d vs %d", i, i % 2 ? "v2" : "policy",
                             t, ev->tokens[t], ref[t]);
            assert_null(ev->hidden);
            candidates[i]++;
        } else {
            assert_int_equal(ev->kind, ENGINE_EVENT_FINISHED);
            assert_int_equal(candidates[i], 1 + i % 3);
            finished++;
        }
        engine_event_free(ev);
    }
    /* Nothing more for the cancelled request; cancelling again is an error. */
    assert_int_equal(engine_cancel(f.e, long_id, &err), DUEL_EINVAL);
    engine_event *ev = NULL;
    engine_poll(f.e, 0.2, &ev);
    assert_null(ev);
    engine_stats st;
    engine_stats_get(f.e, &st);
    assert_int_equal(st.requests_cancelled, 1);
    assert_int_equal(st.kv_used_blocks, 0);
    for (int i = 0; i < N; i++) free(prompts[i]);
    free(long_prompt);
    model_free(refm[0]);
    model_free(refm[1]);
    fixture_close(&f);
}

/* Fair admission (engine_admission.c): one user's burst does not queue in front of another
 * user. Twenty long requests of key 1, then one short request of key 2, with room for two
 * sequences running: the scheduler alone would run them in arrival order, and key 2 would end
 * after 19 of key 1's; held for fair admission, key 2 starts right after the few already in the
 * scheduler. A cancel of a request still held ends it with CANCELLED, and every request ends
 * once. */
static void test_engine_fair_admission(void **state) {
    (void)state;
    engine_fixture f;
    memset(&f, 0, sizeof f);
    f.m[0] = load_model("tiny-llama-f32");
    char dir[1024], path[1200];
    model_dir("tiny-llama-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    duel_error err = {0};
    if (tokenizer_load(path, &f.tok, &err)) fail_msg("%s", err.message);
    engine_model_params mp[1] = {{"policy", f.m[0], f.tok}};
    engine_params ep = {.models = mp, .num_models = 1, .kv_memory_bytes = (size_t)8 << 20,
                        .max_running = 2, .max_candidates = 4};
    if (engine_create(&ep, &f.e, &err)) fail_msg("engine_create: %s", err.message);
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    enum { BURST = 20, LONG = 60 };
    int32_t *prompt = random_prompt(&rng, 8, 512);
    uint64_t ids[BURST + 2];
    for (int i = 0; i < BURST + 2; i++) {
        bool newcomer = i == BURST; /* BURST + 1: one more of the burst, cancelled */
        engine_request req = {.tokens = prompt, .num_tokens = 8, .num_candidates = 1,
                              .sampling = {0, 1, 0}, .max_new_tokens = newcomer ? 4 : LONG,
                              .fairness_key = newcomer ? 2 : 1,
                              .user = (void *)(uintptr_t)i};
        assert_int_equal(engine_submit(f.e, &req, &ids[i], &err), 0);
    }
    /* the last of the burst is cancelled at once: it cannot have reached the scheduler */
    if (engine_cancel(f.e, ids[BURST + 1], &err)) fail_msg("cancel: %s", err.message);
    int ended[BURST + 2] = {0}, burst_done = 0, burst_done_when_newcomer_ended = -1;
    int n_ended = 0;
    while (n_ended < BURST + 2) {
        engine_event *ev = wait_event(f.e);
        int i = (int)(uintptr_t)ev->user;
        if (ev->kind == ENGINE_EVENT_FINISHED || ev->kind == ENGINE_EVENT_CANCELLED ||
            ev->kind == ENGINE_EVENT_ERROR) {
            ended[i]++;
            n_ended++;
            if (i == BURST + 1) assert_int_equal(ev->kind, ENGINE_EVENT_CANCELLED);
            else assert_int_equal(ev->kind, ENGINE_EVENT_FINISHED);
            if (i < BURST) burst_done++;
            if (i == BURST) burst_done_when_newcomer_ended = burst_done;
        }
        engine_event_free(ev);
    }
    for (int i = 0; i < BURST + 2; i++) assert_int_equal(ended[i], 1);
    printf("# fair admission: the newcomer ended after %d of the burst's %d requests\n",
           burst_done_when_newcomer_ended, BURST);
    assert_true(burst_done_when_newcomer_ended >= 0 && burst_done_when_newcomer_ended <= 6);
    engine_event *extra = NULL;
    engine_poll(f.e, 0.2, &extra); /* nothing more; the stats follow the last step */
    assert_null(extra);
    engine_stats st;
    engine_stats_get(f.e, &st);
    assert_int_equal(st.admission_queued, 0);
    assert_int_equal(st.requests_cancelled, 1);
    assert_int_equal(st.kv_used_blocks, 0);
    free(prompt);
    engine_destroy(f.e);
    model_free(f.m[0]);
    tokenizer_free(f.tok);
}

static void test_engine_bad_inputs(void **state) {
    (void)state;
    engine_fixture f;
    fixture_open(&f, 2, 8, (size_t)1 << 20);
    int ctx = model_get_config(f.m[0])->max_position_embeddings;
    int32_t *huge = calloc((size_t)ctx + 1, sizeof *huge);
    int32_t ok[4] = {1, 2, 3, 4};
    duel_error err = {0};
    uint64_t id = 7;
    engine_request good = {.tokens = ok, .num_tokens = 4, .num_candidates = 2,
                           .sampling = {0, 1, 0}, .max_new_tokens = 3};
    struct {
        const char *what, *message;
        int code;
        engine_request r;
    } cases[] = {
        {"prompt longer than the context", "does not fit the model's context", DUEL_ELIMIT, good},
        {"M = 0", "M = 0", DUEL_EINVAL, good},
        {"M above the limit", "outside 1..8", DUEL_EINVAL, good},
        {"unknown arm", "unknown or retired arm \"nope\" (resident: policy, v2)", DUEL_ENOTFOUND,
         good},
        {"empty prompt", "empty prompt", DUEL_EINVAL, good},
        {"token out of range", "outside the vocabulary", DUEL_EINVAL, good},
        {"max_new_tokens 0", "max_new_tokens", DUEL_EINVAL, good},
        {"top_p 0", "top_p", DUEL_EINVAL, good},
        {"too many stop tokens", "stop tokens", DUEL_EINVAL, good},
        {"candidate larger than the pool", "KV blocks", DUEL_ELIMIT, good},
    };
    int32_t bad_tok[2] = {1, 512};
    cases[0].r.tokens = huge;
    cases[0].r.num_tokens = ctx;
    cases[1].r.num_candidates = 0;
    cases[2].r.num_candidates = 9;
    cases[3].r.arm = "nope";
    cases[4].r.num_tokens = 0;
    cases[5].r.tokens = bad_tok;
    cases[5].r.num_tokens = 2;
    cases[6].r.max_new_tokens = 0;
    cases[7].r.sampling.top_p = 0;
    cases[8].r.stop_tokens = ok;
    cases[8].r.num_stop_tokens = 100;
    /* 1 MiB of KV at 768 bytes a token holds 85 blocks of 16: 2000 tokens need 125. */
    cases[9].r.tokens = huge;
    cases[9].r.num_tokens = 1500;
    cases[9].r.max_new_tokens = 500;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&err, 0, sizeof err);
        int rc = engine_submit(f.e, &cases[i].r, &id, &err);
        if (rc != cases[i].code || !strstr(err.message, cases[i].message))
            fail_msg("%s: rc %d, message '%s'", cases[i].what, rc, err.message);
        assert_int_equal(id, 0);
    }
    assert_int_equal(engine_submit(f.e, NULL, &id, &err), DUEL_EINVAL);
    assert_int_equal(engine_cancel(f.e, 1, &err), DUEL_ENOTFOUND); /* nothing issued yet */
    /* The engine keeps serving: a good request on each arm finishes. */
    for (int a = 0; a < 2; a++) {
        good.arm = a ? "v2" : NULL;
        assert_int_equal(engine_submit(f.e, &good, &id, &err), 0);
        assert_int_equal(id, (uint64_t)a + 1);
        int cands = 0;
        for (;;) {
            engine_event *ev = wait_event(f.e);
            assert_int_equal(ev->request_id, id);
            engine_event_kind kind = ev->kind;
            if (kind == ENGINE_EVENT_CANDIDATE) cands++;
            engine_event_free(ev);
            if (kind == ENGINE_EVENT_FINISHED) break;
            assert_int_equal(kind, ENGINE_EVENT_CANDIDATE);
        }
        assert_int_equal(cands, 2);
    }
    /* Engine creation errors. */
    engine *e2 = NULL;
    engine_model_params twice[2] = {{"a", f.m[0], NULL}, {"a", f.m[1], NULL}};
    engine_params ep = {.models = twice, .num_models = 2};
    assert_int_equal(engine_create(&ep, &e2, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "given twice"));
    ep.num_models = 0;
    assert_int_equal(engine_create(&ep, &e2, &err), DUEL_EINVAL);
    model *neox = load_model("tiny-neox-f32"); /* 2 layers, 4 kv heads: another KV shape */
    engine_model_params mixed[2] = {{"a", f.m[0], NULL}, {"b", neox, NULL}};
    ep = (engine_params){.models = mixed, .num_models = 2};
    assert_int_equal(engine_create(&ep, &e2, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "KV shape"));
    assert_null(e2);
    model_free(neox);
    free(huge);
    fixture_close(&f);
}


/* ---- hot-swap: arms added and retired while requests run ------------------------------------ */

static void *read_whole(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* tiny-llama-f32 with every weight scaled by its own factor in [0.5, 1.5): same shape, other
 * outputs. Written into a fresh temporary folder (out). */
static void write_perturbed_model(char *out, size_t cap) {
    char src[1024], path[1400];
    model_dir("tiny-llama-f32", src, sizeof src);
    test_make_temp_dir("engine-swap", out, cap);
    size_t len = 0;
    snprintf(path, sizeof path, "%s/config.json", src);
    char *config = read_whole(path, &len);
    snprintf(path, sizeof path, "%s/config.json", out);
    test_write_file(path, config, len);
    free(config);
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    unsigned char *st = read_whole(path, &len);
    uint64_t header = 0;
    memcpy(&header, st, 8); /* little-endian hosts */
    size_t data = 8 + (size_t)header;
    duel_rng rng;
    duel_rng_seed(&rng, 99);
    for (size_t at = data; at + 4 <= len; at += 4) {
        float v;
        memcpy(&v, st + at, 4);
        v *= 0.5f + (float)duel_rng_below(&rng, 1000) / 1000.0f;
        memcpy(st + at, &v, 4);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    test_write_file(path, st, len);
    free(st);
}

typedef struct swap_seen {
    int candidates, finished;
    int64_t cached_tokens;
    int32_t tokens[4][32];
    int counts[4];
} swap_seen;

/* An arm added while requests run on the arm it replaces, which is retired at once: in-flight
 * requests finish on the old weights, new ones use the new weights, submissions to the retired
 * arm fail, the old model comes back exactly once after its last request, no KV block leaks and
 * the prefix cache never attaches one model's blocks to another. */
static void test_engine_hot_swap(void **state) {
    (void)state;
    engine_fixture f;
    fixture_open(&f, 1, 8, (size_t)4 << 20); /* arm "policy": the reference, never retired */
    char pdir[1024];
    write_perturbed_model(pdir, sizeof pdir);
    model *old_m = f.m[1]; /* tiny-llama-bf16 as snapshot v1 */
    model *new_m = NULL;
    duel_error err = {0};
    if (model_load(pdir, &new_m, &err)) fail_msg("model_load %s: %s", pdir, err.message);
    engine_model_params v1 = {"v1", old_m, f.tok}, v2 = {"v2", new_m, f.tok};
    int owner_v1 = 1, owner_v2 = 2;
    assert_int_equal(engine_add_arm(f.e, &v1, NULL, &owner_v1, &err), 0);
    assert_int_equal(engine_add_arm(f.e, &v1, NULL, &owner_v1, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "already resident"));
    enum { NEW = 24, N_OLD = 3, N_NEW = 3 };
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    int32_t *shared = random_prompt(&rng, 40, 512); /* same prompt on both arms: cache test */
    uint64_t ids[N_OLD + N_NEW];
    swap_seen seen[N_OLD + N_NEW];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N_OLD; i++) {
        engine_request r = {.arm = "v1", .tokens = shared, .num_tokens = 40 - i,
                            .num_candidates = 1 + i, .sampling = {0, 1, 0}, .max_new_tokens = NEW,
                            .user = &seen[i]};
        assert_int_equal(engine_submit(f.e, &r, &ids[i], &err), 0);
    }
    /* The swap, while v1's requests are queued or decoding. */
    assert_int_equal(engine_add_arm(f.e, &v2, NULL, &owner_v2, &err), 0);
    assert_int_equal(engine_retire_arm(f.e, "v1", &err), 0);
    assert_int_equal(engine_retire_arm(f.e, "v1", &err), DUEL_ENOTFOUND);
    assert_int_equal(engine_retire_arm(f.e, "policy", &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "reference arm"));
    engine_request late = {.arm = "v1", .tokens = shared, .num_tokens = 40, .num_candidates = 1,
                           .sampling = {0, 1, 0}, .max_new_tokens = NEW};
    uint64_t none = 9;
    assert_int_equal(engine_submit(f.e, &late, &none, &err), DUEL_ENOTFOUND);
    assert_non_null(strstr(err.message, "retired arm \"v1\" (resident: policy, v2)"));
    assert_int_equal(none, 0);
    /* The name stays taken until v1 is handed back. */
    assert_int_equal(engine_add_arm(f.e, &v1, NULL, &owner_v1, &err), DUEL_EINVAL);
    for (int i = N_OLD; i < N_OLD + N_NEW; i++) {
        engine_request r = {.arm = "v2", .tokens = shared, .num_tokens = 40 - (i - N_OLD),
                            .num_candidates = 1, .sampling = {0, 1, 0}, .max_new_tokens = NEW,
                            .user = &seen[i]};
        assert_int_equal(engine_submit(f.e, &r, &ids[i], &err), 0);
    }
    int done = 0, retired = 0, old_done = 0;
    while (done < N_OLD + N_NEW || !retired) {
        engine_event *ev = wait_event(f.e);
        if (ev->kind == ENGINE_EVENT_ARM_RETIRED) {
            retired++;
            assert_string_equal(ev->arm, "v1");
            assert_ptr_equal(ev->user, &owner_v1);
            assert_ptr_equal(ev->arm_model, old_m);
            assert_ptr_equal(ev->arm_tokenizer, f.tok);
            assert_null(ev->arm_erm);
            assert_int_equal(ev->request_id, 0);
            /* After the last of v1's requests, never before. */
            assert_int_equal(old_done, N_OLD);
            engine_event_free(ev);
            continue;
        }
        swap_seen *s = ev->user;
        if (ev->kind == ENGINE_EVENT_CANDIDATE) {
            assert_true(ev->candidate < 4 && ev->count <= 32);
            memcpy(s->tokens[ev->candidate], ev->tokens, (size_t)ev->count * sizeof(int32_t));
            s->counts[ev->candidate] = ev->count;
            s->candidates++;
        } else {
            if (ev->kind != ENGINE_EVENT_FINISHED)
                fail_msg("event %d: %s", ev->kind, ev->message ? ev->message : "");
            s->finished++;
            s->cached_tokens = ev->counts.cached_tokens;
            done++;
            if (s < seen + N_OLD) old_done++;
        }
        engine_event_free(ev);
    }
    /* Exactly once: nothing more comes. */
    engine_event *extra = NULL;
    engine_poll(f.e, 0.2, &extra);
    assert_null(extra);
    /* Greedy references on copies (the engine lent old_m back; new_m is still resident). */
    model *ref_old = load_model("tiny-llama-bf16"), *ref_new = NULL;
    assert_int_equal(model_load(pdir, &ref_new, &err), 0);
    bool differ = false;
    for (int i = 0; i < N_OLD + N_NEW; i++) {
        model *rm = i < N_OLD ? ref_old : ref_new;
        int32_t ref[NEW], other[NEW];
        float h[256], ph[256];
        double lp;
        int len = 40 - (i < N_OLD ? i : i - N_OLD);
        int n = greedy_reference(rm, shared, len, NEW, ref, h, ph, &lp);
        greedy_reference(i < N_OLD ? ref_new : ref_old, shared, len, NEW, other, h, ph, &lp);
        differ |= memcmp(ref, other, sizeof ref) != 0;
        assert_int_equal(seen[i].finished, 1);
        for (int c = 0; c < seen[i].candidates; c++) {
            assert_int_equal(seen[i].counts[c], n);
            for (int t = 0; t < n; t++)
                if (seen[i].tokens[c][t] != ref[t])
                    fail_msg("request %d (%s) candidate %d token %d: %d, greedy on its model %d",
                             i, i < N_OLD ? "v1, in flight" : "v2", c, t, seen[i].tokens[c][t],
                             ref[t]);
        }
    }
    assert_true(differ); /* the two models really answer differently */
    /* v2's first request had v1's prompt: v1's blocks (another model) are never attached. */
    assert_int_equal(seen[N_OLD].cached_tokens, 0);
    engine_stats st;
    engine_stats_get(f.e, &st);
    assert_int_equal(st.arms_added, 2);
    assert_int_equal(st.arms_retired, 1);
    assert_int_equal(st.arms_resident, 2);
    assert_int_equal(st.arms_retiring, 0);
    assert_int_equal(st.kv_used_blocks, 0);
    assert_int_equal(st.kv_free_blocks + st.kv_cached_blocks, st.kv_blocks);
    /* The freed slot and name are reusable; a model id is not: v1 again, in v1's old slot, with
     * the prompt its predecessor cached, attaches nothing. */
    f.m[1] = NULL;
    model *again = load_model("tiny-llama-bf16");
    engine_model_params v1b = {"v1", again, f.tok};
    assert_int_equal(engine_add_arm(f.e, &v1b, NULL, NULL, &err), 0);
    engine_request r = {.arm = "v1", .tokens = shared, .num_tokens = 40, .num_candidates = 1,
                        .sampling = {0, 1, 0}, .max_new_tokens = 4};
    uint64_t id;
    /* First run: v1's blocks of this very prompt and weights are cached, yet none attach.
     * Second run: its own blocks do (the cache works, so the first zero means something). */
    for (int run = 0; run < 2; run++) {
        assert_int_equal(engine_submit(f.e, &r, &id, &err), 0);
        for (;;) {
            engine_event *ev = wait_event(f.e);
            engine_event_kind k = ev->kind;
            if (k == ENGINE_EVENT_FINISHED) {
                if (run == 0) assert_int_equal(ev->counts.cached_tokens, 0);
                else assert_int_equal(ev->counts.cached_tokens, 32);
            }
            engine_event_free(ev);
            if (k == ENGINE_EVENT_FINISHED) break;
            assert_int_equal(k, ENGINE_EVENT_CANDIDATE);
        }
    }
    /* Bad arms. */
    model *neox = load_model("tiny-neox-f32");
    engine_model_params bad = {"neox", neox, NULL};
    assert_int_equal(engine_add_arm(f.e, &bad, NULL, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "KV shape"));
    bad = (engine_model_params){"", again, NULL};
    assert_int_equal(engine_add_arm(f.e, &bad, NULL, NULL, &err), DUEL_EINVAL);
    /* Resident arms at destroy are the owner's to free. */
    fixture_close(&f);
    model_free(old_m);
    model_free(new_m);
    model_free(again);
    model_free(neox);
    model_free(ref_old);
    model_free(ref_new);
    free(shared);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_and_preemption_equal_alone),
        cmocka_unit_test(test_forks_equal_independent_runs),
        cmocka_unit_test(test_prefix_cache_hits_equal_cold),
        cmocka_unit_test(test_engine_duel_request),
        cmocka_unit_test(test_engine_two_arms_and_cancel),
        cmocka_unit_test(test_engine_fair_admission),
        cmocka_unit_test(test_engine_bad_inputs),
        cmocka_unit_test(test_engine_hot_swap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
