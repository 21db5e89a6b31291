/* test_engine_batch.c: the batched paged forward (model_forward_batch in inference/model.c).
 * Every step flattens several sequences' tokens into one GEMM and reads K/V through block tables;
 * its logits and final hidden states must equal model_forward over each sequence's contiguous
 * cache (relative error < 1e-5: only GEMM-vs-GEMV rounding differs) and the float64 torch
 * reference (< 1e-4, as test_forward), whatever the mix of prefill chunks and decodes, the block
 * size, forks sharing blocks, and steps longer than one internal pass. Every step also scores
 * targets (the reference log-probabilities the engine hands the trainer): each entry's sum must
 * equal the log softmax of model_forward's logits at those positions, summed in double
 * (relative error < 1e-5), with skipped (-1) targets left out. Then the bad inputs. */
#include "test_helpers.h"

#include "kv_cache.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"

#define BATCH_TOL 1e-5
#define REF_TOL 1e-4

static model *load_model(const char *name) {
    char dir[1024];
    const char *build = test_env("DUEL_BUILD_DIR", NULL);
    if (!build) fail_msg("DUEL_BUILD_DIR is not set (run through ctest)");
    snprintf(dir, sizeof dir, "%s/test-models/%s", build, name);
    model *m = NULL;
    duel_error err = {0};
    if (model_load(dir, &m, &err)) fail_msg("model_load %s: %s", name, err.message);
    return m;
}

static kv_pool *make_pool(const model *m, int block_size, int num_blocks) {
    const model_config *c = model_get_config(m);
    kv_pool_params p = {.num_layers = c->num_layers,
                        .num_kv_heads = c->num_kv_heads,
                        .head_dim = c->head_dim,
                        .block_size = block_size,
                        .num_blocks = num_blocks,
                        .allocate_storage = true};
    kv_pool *pool = NULL;
    duel_error err = {0};
    if (kv_pool_create(&p, &pool, &err)) fail_msg("kv_pool_create: %s", err.message);
    return pool;
}

/* A sequence under test: its tokens, the reference logits of every position (model_forward
 * over a contiguous cache, all positions in one call) and the last hidden state. */
typedef struct test_seq {
    int len;
    int32_t *tokens;
    float *ref_logits; /* [len][V] */
    float *ref_hidden; /* [H] at position len-1 */
    kv_sequence kv;
    int done;          /* tokens run so far */
} test_seq;

static void test_seq_init(test_seq *s, model *m, int len, duel_rng *rng) {
    int V = model_output_size(m), H = model_get_config(m)->hidden_size;
    s->len = len;
    s->tokens = malloc((size_t)len * sizeof *s->tokens);
    for (int i = 0; i < len; i++)
        s->tokens[i] = (int32_t)duel_rng_below(rng, (uint64_t)model_get_config(m)->vocab_size);
    s->ref_logits = malloc((size_t)len * V * sizeof *s->ref_logits);
    s->ref_hidden = malloc((size_t)H * sizeof *s->ref_hidden);
    model_kv_cache *kv = NULL;
    duel_error err = {0};
    assert_int_equal(model_kv_cache_create(m, len, &kv, &err), 0);
    assert_int_equal(model_forward(m, kv, s->tokens, len, s->ref_logits, true, s->ref_hidden, &err),
                     0);
    model_kv_cache_free(kv);
    kv_sequence_init(&s->kv, 1);
    s->done = 0;
}

static void test_seq_free(test_seq *s, kv_pool *pool) {
    kv_sequence_free(pool, &s->kv);
    free(s->tokens);
    free(s->ref_logits);
    free(s->ref_hidden);
}

/* Runs one batched step: sequence i gets counts[i] more tokens (0 = not in this step); checks
 * each entry's last logits against the reference and, at a sequence's end, its hidden state. */
static void run_step(model *m, kv_pool *pool, test_seq *seqs, int n, const int *counts,
                     const char *what) {
    int V = model_output_size(m), H = model_get_config(m)->hidden_size;
    model_batch_entry *entries = calloc((size_t)n, sizeof *entries);
    int stride = 1;
    for (int i = 0; i < n; i++) stride = counts[i] > stride ? counts[i] : stride;
    int32_t *targets = malloc((size_t)n * stride * sizeof *targets);
    double *target_lp = malloc((size_t)n * sizeof *target_lp);
    float *logits = malloc((size_t)n * V * sizeof *logits);
    float *hidden = malloc((size_t)n * H * sizeof *hidden);
    int *which = malloc((size_t)n * sizeof *which);
    memset(logits, 0xff, (size_t)n * V * sizeof *logits); /* NaN: unwritten rows fail */
    duel_error err = {0};
    int k = 0;
    for (int i = 0; i < n; i++) {
        test_seq *s = &seqs[i];
        if (!counts[i]) continue;
        assert_true(s->done + counts[i] <= s->len);
        if (kv_sequence_reserve(pool, &s->kv, counts[i], NULL, &err))
            fail_msg("%s: reserve: %s", what, err.message);
        /* targets: the next token of the sequence, every third position skipped */
        int32_t *tg = targets + (size_t)k * stride;
        for (int t = 0; t < counts[i]; t++)
            tg[t] = t % 3 == 2 ? -1 : s->tokens[(s->done + t + 1) % s->len];
        target_lp[k] = NAN;
        entries[k] = (model_batch_entry){.seq = &s->kv, .tokens = s->tokens + s->done,
                                         .n_tokens = counts[i], .start = s->done,
                                         .logits = logits + (size_t)k * V,
                                         .hidden_last = hidden + (size_t)k * H,
                                         .targets = tg, .target_logprob = &target_lp[k]};
        which[k++] = i;
    }
    if (model_forward_batch(m, pool, entries, k, &err))
        fail_msg("%s: model_forward_batch: %s", what, err.message);
    for (int j = 0; j < k; j++) {
        test_seq *s = &seqs[which[j]];
        int last = s->done + counts[which[j]] - 1;
        double e = test_relative_error_f32(logits + (size_t)j * V,
                                           s->ref_logits + (size_t)last * V, (size_t)V);
        if (!(e < BATCH_TOL))
            fail_msg("%s: sequence %d position %d: logits differ from model_forward by %g", what,
                     which[j], last, e);
        double want = 0;
        for (int t = 0; t < counts[which[j]]; t++) {
            int32_t target = targets[(size_t)j * stride + t];
            if (target < 0) continue;
            const float *row = s->ref_logits + (size_t)(s->done + t) * V;
            double mx = row[0], sum = 0;
            for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < V; v++) sum += exp(row[v] - mx);
            want += row[target] - mx - log(sum);
        }
        if (!(fabs(target_lp[j] - want) <= BATCH_TOL * (fabs(want) + 1e-3)))
            fail_msg("%s: sequence %d: target log-probability %.9g, model_forward's %.9g", what,
                     which[j], target_lp[j], want);
        if (last == s->len - 1) {
            e = test_relative_error_f32(hidden + (size_t)j * H, s->ref_hidden, (size_t)H);
            if (!(e < BATCH_TOL))
                fail_msg("%s: sequence %d: hidden state differs by %g", what, which[j], e);
        }
        if (kv_sequence_commit(pool, &s->kv, s->tokens + s->done, counts[which[j]], &err))
            fail_msg("%s: commit: %s", what, err.message);
        s->done += counts[which[j]];
    }
    free(entries), free(logits), free(hidden), free(which), free(targets), free(target_lp);
}

/* Mixed steps: prefill chunks of several sizes next to decodes, over two block sizes. */
static void check_mixed(const char *name, int block_size) {
    model *m = load_model(name);
    kv_pool *pool = make_pool(m, block_size, 400);
    duel_rng rng;
    duel_rng_seed(&rng, 42);
    enum { N = 5 };
    const int lens[N] = {3, 19, 40, 70, 9};
    test_seq seqs[N];
    for (int i = 0; i < N; i++) test_seq_init(&seqs[i], m, lens[i], &rng);
    char what[256];
    snprintf(what, sizeof what, "%s block %d", name, block_size);
    /* Step plans: every row of counts is one step; the rest decodes one token at a time. */
    const int plan[][N] = {
        {1, 17, 6, 33, 0}, {1, 1, 1, 1, 9}, {1, 1, 20, 30, 0}, {0, 0, 5, 1, 0},
    };
    for (size_t st = 0; st < sizeof plan / sizeof plan[0]; st++) run_step(m, pool, seqs, N, plan[st], what);
    for (;;) {
        int counts[N], any = 0;
        for (int i = 0; i < N; i++) {
            counts[i] = seqs[i].done < seqs[i].len ? 1 : 0;
            any |= counts[i];
        }
        if (!any) break;
        run_step(m, pool, seqs, N, counts, what);
    }
    const kv_sequence *live[N];
    for (int i = 0; i < N; i++) live[i] = &seqs[i].kv;
    duel_error err = {0};
    if (kv_pool_check(pool, live, N, &err)) fail_msg("%s: %s", what, err.message);
    for (int i = 0; i < N; i++) test_seq_free(&seqs[i], pool);
    kv_pool_destroy(pool);
    model_free(m);
}

static void test_mixed_steps_match_model_forward(void **state) {
    (void)state;
    const char *names[] = {"tiny-llama-f32",       "tiny-llama-bias-f32", "tiny-llama-qwen2-f32",
                           "tiny-llama3-rope-bf16", "tiny-neox-f32",       "tiny-neox-seq-f32"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        check_mixed(names[i], 16);
        check_mixed(names[i], 5);
    }
}

/* The paged path against the float64 torch reference directly: the reference tokens in chunks
 * (prefill pieces over and under MODEL_PAGED_DIRECT_ROWS, then decodes). */
static void test_paged_matches_torch_reference(void **state) {
    (void)state;
    const char *names[] = {"tiny-llama-f32", "tiny-neox-bf16", "tiny-llama-bias-f32"};
    for (size_t k = 0; k < 3; k++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/test-models/%s/reference.safetensors",
                 test_env("DUEL_BUILD_DIR", "."), names[k]);
        safetensors_archive *st = NULL;
        duel_error err = {0};
        if (safetensors_open_file(path, &st, &err)) fail_msg("%s", err.message);
        const safetensors_tensor *tok = safetensors_find(st, "tokens");
        const safetensors_tensor *lg = safetensors_find(st, "logits");
        assert_non_null(tok);
        assert_non_null(lg);
        int T = (int)lg->shape[0], V = (int)lg->shape[1];
        /* The archive's data need not be aligned for int32/double: copy it out. */
        int32_t *tokens = malloc((size_t)T * sizeof *tokens);
        double *ref = malloc((size_t)lg->num_elements * sizeof *ref);
        assert_int_equal(tok->num_elements, T);
        memcpy(tokens, tok->data, (size_t)T * sizeof *tokens);
        memcpy(ref, lg->data, (size_t)lg->num_elements * sizeof *ref);
        model *m = load_model(names[k]);
        kv_pool *pool = make_pool(m, 16, 16);
        kv_sequence seq;
        kv_sequence_init(&seq, 7);
        float *logits = malloc((size_t)V * sizeof *logits);
        const int chunks[] = {2, 11, 3, 1, 5};
        for (int pos = 0, i = 0; pos < T; i++) {
            int n = i < 5 ? chunks[i] : 1;
            if (n > T - pos) n = T - pos;
            assert_int_equal(kv_sequence_reserve(pool, &seq, n, NULL, &err), 0);
            model_batch_entry e = {.seq = &seq, .tokens = tokens + pos, .n_tokens = n, .start = pos,
                                   .logits = logits};
            assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), 0);
            assert_int_equal(kv_sequence_commit(pool, &seq, tokens + pos, n, &err), 0);
            pos += n;
            double rel = test_relative_error(logits, ref + (size_t)(pos - 1) * V, (size_t)V);
            if (!(rel < REF_TOL))
                fail_msg("%s: position %d: relative error %g against torch", names[k], pos - 1,
                         rel);
        }
        kv_sequence_free(pool, &seq);
        kv_pool_destroy(pool);
        model_free(m);
        free(logits);
        free(tokens);
        free(ref);
        safetensors_close(st);
    }
}

/* Forks share their prompt blocks (a partly filled last block is copied on write) and then
 * decode different tokens: each must still equal its own contiguous run. */
static void test_forks_read_shared_blocks(void **state) {
    (void)state;
    model *m = load_model("tiny-llama-f32");
    kv_pool *pool = make_pool(m, 16, 64);
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    enum { N = 3, PROMPT = 21, TOTAL = 40 };
    test_seq seqs[N];
    for (int i = 0; i < N; i++) test_seq_init(&seqs[i], m, TOTAL, &rng);
    /* Same prompt for all three: recompute their references with the shared prefix. */
    for (int i = 1; i < N; i++) {
        memcpy(seqs[i].tokens, seqs[0].tokens, PROMPT * sizeof(int32_t));
        int V = model_output_size(m);
        model_kv_cache *kv = NULL;
        duel_error err = {0};
        assert_int_equal(model_kv_cache_create(m, TOTAL, &kv, &err), 0);
        assert_int_equal(model_forward(m, kv, seqs[i].tokens, TOTAL, seqs[i].ref_logits, true,
                                       seqs[i].ref_hidden, &err),
                         0);
        (void)V;
        model_kv_cache_free(kv);
    }
    int counts[N] = {PROMPT, 0, 0};
    run_step(m, pool, seqs, N, counts, "fork prompt");
    duel_error err = {0};
    for (int i = 1; i < N; i++) {
        kv_sequence_free(pool, &seqs[i].kv);
        assert_int_equal(kv_sequence_fork(pool, &seqs[0].kv, &seqs[i].kv, &err), 0);
        seqs[i].done = PROMPT;
    }
    for (int t = PROMPT; t < TOTAL; t++) {
        int ones[N] = {1, 1, 1};
        run_step(m, pool, seqs, N, ones, "forks");
    }
    const kv_sequence *live[N] = {&seqs[0].kv, &seqs[1].kv, &seqs[2].kv};
    if (kv_pool_check(pool, live, N, &err)) fail_msg("%s", err.message);
    kv_pool_stats stats;
    kv_pool_stats_get(pool, &stats);
    assert_true(stats.cow_copies >= 2);
    for (int i = 0; i < N; i++) test_seq_free(&seqs[i], pool);
    kv_pool_destroy(pool);
    model_free(m);
}

/* A step of more rows than one internal pass holds: a 600-token prefill beside two decodes and a
 * short prefill; the long one's later pass attends to K/V its earlier pass wrote. */
static void test_step_longer_than_one_pass(void **state) {
    (void)state;
    model *m = load_model("tiny-neox-f32");
    kv_pool *pool = make_pool(m, 16, 200);
    duel_rng rng;
    duel_rng_seed(&rng, 9);
    enum { N = 4 };
    const int lens[N] = {5, 600, 8, 30};
    test_seq seqs[N];
    for (int i = 0; i < N; i++) test_seq_init(&seqs[i], m, lens[i], &rng);
    int first[N] = {4, 0, 7, 0};
    run_step(m, pool, seqs, N, first, "long: warm-up");
    int big[N] = {1, 600, 1, 30};
    assert_true(1 + 600 + 1 + 30 > MODEL_BATCH_MAX_ROWS);
    run_step(m, pool, seqs, N, big, "long: two passes");
    for (int i = 0; i < N; i++) test_seq_free(&seqs[i], pool);
    kv_pool_destroy(pool);
    model_free(m);
}

static void test_bad_inputs(void **state) {
    (void)state;
    model *m = load_model("tiny-llama-f32");
    const model_config *c = model_get_config(m);
    duel_error err = {0};
    float logits[512];
    int32_t tokens[4] = {1, 2, 3, 4};

    /* A pool of another shape. */
    kv_pool_params p = {.num_layers = c->num_layers + 1, .num_kv_heads = c->num_kv_heads,
                        .head_dim = c->head_dim, .num_blocks = 4, .allocate_storage = true};
    kv_pool *wrong = NULL;
    assert_int_equal(kv_pool_create(&p, &wrong, &err), 0);
    kv_sequence seq;
    kv_sequence_init(&seq, 1);
    assert_int_equal(kv_sequence_reserve(wrong, &seq, 4, NULL, &err), 0);
    model_batch_entry e = {.seq = &seq, .tokens = tokens, .n_tokens = 4, .start = 0, .logits = logits};
    assert_int_equal(model_forward_batch(m, wrong, &e, 1, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "does not fit the model"));
    kv_sequence_free(wrong, &seq);
    kv_pool_destroy(wrong);

    /* A pool without host storage (a device cache). */
    p.num_layers = c->num_layers;
    p.allocate_storage = false;
    kv_pool *device = NULL;
    assert_int_equal(kv_pool_create(&p, &device, &err), 0);
    assert_int_equal(kv_sequence_reserve(device, &seq, 4, NULL, &err), 0);
    assert_int_equal(model_forward_batch(m, device, &e, 1, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "no host storage"));
    kv_sequence_free(device, &seq);
    kv_pool_destroy(device);

    kv_pool *pool = make_pool(m, 16, 4);
    /* Positions not reserved. */
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "not reserved"));
    assert_int_equal(kv_sequence_reserve(pool, &seq, 4, NULL, &err), 0);
    e.start = 14; /* 14..17 crosses the reserved block */
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    e.start = -1;
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    e.start = 0;
    e.n_tokens = 0;
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    e.n_tokens = 4;
    /* Token ids outside the vocabulary. */
    int32_t bad[4] = {1, c->vocab_size, 2, 3};
    e.tokens = bad;
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "outside the vocabulary"));
    bad[1] = -5;
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    e.tokens = tokens;
    /* Targets outside the vocabulary, or without a place for their sum. */
    int32_t targets[4] = {2, 3, c->vocab_size, -1};
    double target_lp = 0;
    e.targets = targets;
    e.target_logprob = &target_lp;
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "target"));
    targets[2] = 4;
    e.target_logprob = NULL;
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "target_logprob"));
    e.targets = NULL;
    /* NULL arguments and an empty batch. */
    assert_int_equal(model_forward_batch(NULL, pool, &e, 1, &err), DUEL_EINVAL);
    assert_int_equal(model_forward_batch(m, NULL, &e, 1, &err), DUEL_EINVAL);
    assert_int_equal(model_forward_batch(m, pool, NULL, 1, &err), DUEL_EINVAL);
    assert_int_equal(model_forward_batch(m, pool, &e, 0, &err), DUEL_OK);
    /* And after all that, a good call works. */
    e.tokens = tokens;
    memset(logits, 0xff, sizeof logits);
    assert_int_equal(model_forward_batch(m, pool, &e, 1, &err), DUEL_OK);
    assert_false(isnan(logits[0]));
    kv_sequence_free(pool, &seq);
    kv_pool_destroy(pool);
    model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_steps_match_model_forward),
        cmocka_unit_test(test_paged_matches_torch_reference),
        cmocka_unit_test(test_forks_read_shared_blocks),
        cmocka_unit_test(test_step_longer_than_one_pass),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
