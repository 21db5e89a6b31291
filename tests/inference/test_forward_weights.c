/* test_forward_weights.c: whole models with bf16 and q8 weights (model_load_with, engine.weights)
 * and the bf16 KV cache (engine.kv_dtype), against references we did not write:
 *   - logits of every position and the last hidden state against Debian's PyTorch in float64
 *     (tests/tools/torch_reference.py --round: the same weights rounded the same way), for every
 *     fixture model, all tokens in one call (the prefill kernels) and token by token (the decode
 *     kernels); the rounded reference must also be closer than the f32 one for f32 checkpoints
 *     (the rounding is the one the C code does, not merely a small error);
 *   - the paged batched forward (the engine's) with packed weights and bf16 KV against
 *     model_forward of the same weights;
 *   - model_tensor_read of a packed model (what the CUDA backend uploads): f32's tensors rounded
 *     as the format stores them, a tied head still tied;
 *   - on the shipped default model (a bf16 checkpoint): greedy text over 64 tokens unchanged with
 *     bf16 weights; and duels whose ERM features come from a reference arm with f32, bf16 or q8
 *     weights (the policy f32, so the candidates are the same): the features within 2e-2 of f32's
 *     and the same pair selected (ee_ts) in at least 3 of 4 duels with bf16 (the issue asks for
 *     "most"; 14 of 16 with the vdpbf16ps tiles of two groups x 12 rows, 16 of 16 reported at
 *     94b6f80, before them) (the agreement and
 *     errors measured are printed; q8's too).
 *   - the same logits against duel's own f32 path (token by token): as far from it as from torch's
 *     unrounded reference, up to the f32 path's own error against torch (measured: bf16 up to
 *     7e-3 for f32 checkpoints, 4e-7 for bf16 ones; q8 1.7e-2 to 2.7e-2).
 * Bounds (relative error of logits, ||out - ref|| / ||ref||; NaN never passes):
 *   bf16 decode (exact f32 inputs): 1e-4; bf16 prefill (vdpbf16ps rounds the inputs to bf16):
 *   2e-2; q8 (int8 input blocks): 6e-2; paged + bf16 KV against f32 KV: 2e-2; bf16 against the
 *   f32 path: 1e-2 (the weights' rounding), q8: 6e-2. */
#include "test_helpers.h"

#include "chat_template.h"
#include "engine.h"
#include "erm.h"
#include "model.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "weight_matmul.h"

#define TOL_BF16_DECODE 1e-4
#define TOL_BF16_PREFILL 2e-2
#define TOL_Q8 6e-2
#define TOL_KV_BF16 2e-2
#define TOL_BF16_VS_F32 1e-2

static const char *const fixture_models[] = {
    "tiny-llama-f32",   "tiny-llama-bf16",       "tiny-llama-qwen2-f32", "tiny-llama-bias-f32",
    "tiny-llama3-rope-bf16", "tiny-neox-f32",    "tiny-neox-seq-bf16",   "tiny-neox-reward-f32",
};

static void fixture_dir(const char *name, char *out, size_t cap) {
    const char *build = test_env("DUEL_BUILD_DIR", NULL);
    if (!build) fail_msg("DUEL_BUILD_DIR is not set (run through ctest)");
    snprintf(out, cap, "%s/test-models/%s", build, name);
}

static model *load(const char *dir, weight_format f) {
    model_load_options o = {.weights = f};
    model *m = NULL;
    duel_error err = {0};
    if (model_load_with(dir, &o, &m, &err)) fail_msg("model_load_with %s: %s", dir, err.message);
    assert_int_equal(model_weight_format(m), f);
    return m;
}

typedef struct reference {
    int T, V, H;
    int32_t *tokens;
    double *logits, *hidden;
} reference;

static void load_reference(const char *dir, const char *file, reference *r) {
    char path[1300];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    safetensors_archive *st = NULL;
    duel_error err = {0};
    if (safetensors_open_file(path, &st, &err)) fail_msg("%s (fwd_make_models writes it)", err.message);
    const safetensors_tensor *tok = safetensors_find(st, "tokens"), *lg = safetensors_find(st, "logits"),
                             *hl = safetensors_find(st, "hidden_last");
    assert_non_null(tok);
    assert_non_null(lg);
    assert_non_null(hl);
    assert_int_equal(lg->dtype, SAFETENSORS_F64);
    r->T = (int)lg->shape[0];
    r->V = (int)lg->shape[1];
    r->H = (int)hl->shape[0];
    r->tokens = malloc((size_t)r->T * sizeof *r->tokens);
    r->logits = malloc((size_t)lg->num_elements * sizeof *r->logits);
    r->hidden = malloc((size_t)r->H * sizeof *r->hidden);
    memcpy(r->tokens, tok->data, (size_t)r->T * sizeof *r->tokens);
    memcpy(r->logits, lg->data, (size_t)lg->num_elements * sizeof *r->logits);
    memcpy(r->hidden, hl->data, (size_t)r->H * sizeof *r->hidden);
    safetensors_close(st);
}

static void free_reference(reference *r) {
    free(r->tokens);
    free(r->logits);
    free(r->hidden);
}

/* Worst relative error over positions of logits [T][V] against ref; a classifier's few scores
 * (V < 16: one score is no vector to take a norm of) over all positions at once. */
static double worst_error(const float *logits, const reference *r) {
    if (r->V < 16) return test_relative_error(logits, r->logits, (size_t)r->T * r->V);
    double worst = 0;
    for (int t = 0; t < r->T; t++) {
        double e = test_relative_error(logits + (size_t)t * r->V, r->logits + (size_t)t * r->V,
                                       (size_t)r->V);
        if (!(e <= worst)) worst = e; /* NaN (INFINITY) sticks */
    }
    return worst;
}

static void check_model(const char *name, weight_format f) {
    char dir[1024];
    fixture_dir(name, dir, sizeof dir);
    reference rounded, plain;
    load_reference(dir, f == WEIGHT_BF16 ? "reference_bf16.safetensors" : "reference_q8.safetensors",
                   &rounded);
    load_reference(dir, "reference.safetensors", &plain);
    model *m = load(dir, f);
    int T = rounded.T, V = rounded.V;
    assert_int_equal(model_output_size(m), V);
    model_kv_cache *kv = NULL;
    duel_error err = {0};
    assert_int_equal(model_kv_cache_create(m, T, &kv, &err), 0);
    float *logits = malloc((size_t)T * V * sizeof *logits);
    float *hidden = malloc((size_t)rounded.H * sizeof *hidden);

    /* all tokens in one call: the prefill kernels */
    memset(logits, 0xff, (size_t)T * V * sizeof *logits);
    assert_int_equal(model_forward(m, kv, rounded.tokens, T, logits, true, hidden, &err), 0);
    double e_one = worst_error(logits, &rounded), e_plain = worst_error(logits, &plain);
    double e_hidden = test_relative_error(hidden, rounded.hidden, (size_t)rounded.H);
    /* token by token: the decode kernels */
    model_kv_cache_reset(kv);
    memset(logits, 0xff, (size_t)T * V * sizeof *logits);
    for (int t = 0; t < T; t++)
        assert_int_equal(model_forward(m, kv, rounded.tokens + t, 1, logits + (size_t)t * V, false,
                                       NULL, &err),
                         0);
    double e_step = worst_error(logits, &rounded);
    /* the same tokens through duel's own f32 path, token by token */
    model *m32 = load(dir, WEIGHT_F32);
    model_kv_cache *kv32 = NULL;
    assert_int_equal(model_kv_cache_create(m32, T, &kv32, &err), 0);
    float *logits32 = malloc((size_t)T * V * sizeof *logits32);
    for (int t = 0; t < T; t++)
        assert_int_equal(model_forward(m32, kv32, rounded.tokens + t, 1, logits32 + (size_t)t * V,
                                       false, NULL, &err),
                         0);
    reference f32_path = {.T = T, .V = V, .logits = malloc((size_t)T * V * sizeof(double))};
    for (size_t i = 0; i < (size_t)T * V; i++) f32_path.logits[i] = logits32[i];
    double e_f32 = worst_error(logits, &f32_path), e_f32_torch = worst_error(logits32, &plain);
    double e_step_plain = worst_error(logits, &plain);
    free(f32_path.logits);
    free(logits32);
    model_kv_cache_free(kv32);
    model_free(m32);
    printf("%-22s %-4s: relative error vs torch with rounded weights: one call %.2e, token by "
           "token %.2e, hidden %.2e; vs unrounded weights %.2e; vs duel's f32 path %.2e\n",
           name, weight_format_name(f), e_one, e_step, e_hidden, e_plain, e_f32);
    double tol_one = f == WEIGHT_Q8 ? TOL_Q8
                     : weight_kernel_best(WEIGHT_BF16, T) == WEIGHT_KERNEL_AVX512_BF16
                         ? TOL_BF16_PREFILL
                         : TOL_BF16_DECODE;
    double tol_step = f == WEIGHT_Q8 ? TOL_Q8 : TOL_BF16_DECODE;
    if (!(e_one < tol_one) || !(e_step < tol_step) || !(e_hidden < tol_one))
        fail_msg("%s with %s weights: errors %g (one call, bound %g), %g (token by token, bound "
                 "%g), %g (hidden)",
                 name, weight_format_name(f), e_one, tol_one, e_step, tol_step, e_hidden);
    /* Against duel's f32 path: the packed model differs from it by the rounding of its weights,
     * which is what it differs from torch's unrounded reference by, up to the f32 path's own
     * error against torch (triangle inequality; 1e-6 for the two norms' denominators). */
    const double tol_f32 = f == WEIGHT_Q8 ? TOL_Q8 : TOL_BF16_VS_F32;
    if (!(fabs(e_f32 - e_step_plain) <= e_f32_torch + 1e-6) || !(e_f32 < tol_f32))
        fail_msg("%s %s: token by token against duel's f32 path %g, against torch unrounded %g "
                 "(f32 path vs torch %g; bound %g)",
                 name, weight_format_name(f), e_f32, e_step_plain, e_f32_torch, tol_f32);
    /* An f32 checkpoint's rounded weights differ: the reference rounded like the C code must be
     * the nearer one (q8 always rounds; bf16 checkpoints are exact in bf16). */
    if (strstr(name, "-f32") || f == WEIGHT_Q8) {
        double e_plain_step = worst_error(logits, &plain);
        if (!(e_step < e_plain_step))
            fail_msg("%s %s: the rounded reference (%g) is not closer than the unrounded (%g)",
                     name, weight_format_name(f), e_step, e_plain_step);
    }
    free(logits);
    free(hidden);
    model_kv_cache_free(kv);
    model_free(m);
    free_reference(&rounded);
    free_reference(&plain);
}

static void test_logits_against_torch(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof fixture_models / sizeof fixture_models[0]; i++) {
        check_model(fixture_models[i], WEIGHT_BF16);
        check_model(fixture_models[i], WEIGHT_Q8);
    }
}

/* The engine's paged forward (model_forward_batch) with packed weights, f32 and bf16 KV, against
 * model_forward of the same model: two sequences, a 21-token prefill in two passes, then 5 decode
 * steps of both together. */
static void check_paged(const char *name, weight_format f, int kv_bytes) {
    char dir[1024];
    fixture_dir(name, dir, sizeof dir);
    model *m = load(dir, f);
    const model_config *c = model_get_config(m);
    int V = model_output_size(m);
    kv_pool_params pp = {.num_layers = c->num_layers, .num_kv_heads = c->num_kv_heads,
                         .head_dim = c->head_dim, .num_blocks = 16, .bytes_per_element = kv_bytes,
                         .allocate_storage = true};
    kv_pool *pool = NULL;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&pp, &pool, &err), 0);
    enum { P = 21, STEPS = 5, N = P + STEPS };
    int32_t tokens[2][N];
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < N; i++) tokens[s][i] = (int32_t)((i * 37 + s * 101 + 5) % c->vocab_size);
    kv_sequence seq[2];
    float *got = malloc((size_t)2 * V * sizeof *got), *want = malloc((size_t)V * sizeof *want);
    double worst = 0;
    for (int s = 0; s < 2; s++) kv_sequence_init(&seq[s], 1);
    int done = 0;
    const int passes[] = {13, P - 13, 1, 1, 1, 1, 1};
    for (size_t k = 0; k < sizeof passes / sizeof passes[0]; k++) {
        int n = passes[k];
        model_batch_entry e[2];
        for (int s = 0; s < 2; s++) {
            kv_reserve_result r;
            assert_int_equal(kv_sequence_reserve(pool, &seq[s], n, &r, &err), 0);
            e[s] = (model_batch_entry){.seq = &seq[s], .tokens = tokens[s] + done, .n_tokens = n,
                                       .start = done, .logits = got + (size_t)s * V};
        }
        memset(got, 0xff, (size_t)2 * V * sizeof *got);
        assert_int_equal(model_forward_batch(m, pool, e, 2, &err), 0);
        for (int s = 0; s < 2; s++)
            assert_int_equal(kv_sequence_commit(pool, &seq[s], tokens[s] + done, n, &err), 0);
        done += n;
        for (int s = 0; s < 2; s++) {
            model_kv_cache *kv = NULL;
            assert_int_equal(model_kv_cache_create(m, N, &kv, &err), 0);
            /* the same token groups through the contiguous cache */
            int at = 0;
            for (size_t j = 0; j <= k; j++) {
                assert_int_equal(model_forward(m, kv, tokens[s] + at, passes[j], want, false, NULL,
                                               &err),
                                 0);
                at += passes[j];
            }
            model_kv_cache_free(kv);
            double ref[4096];
            assert_true(V <= 4096);
            for (int i = 0; i < V; i++) ref[i] = want[i];
            double e2 = test_relative_error(got + (size_t)s * V, ref, (size_t)V);
            if (!(e2 <= worst)) worst = e2;
        }
    }
    /* the batch's 26-row prefill pass runs vdpbf16ps where model_forward's 13 rows run exact */
    bool bf16_inputs = f == WEIGHT_BF16 &&
                       weight_kernel_best(WEIGHT_BF16, 2 * passes[0]) == WEIGHT_KERNEL_AVX512_BF16;
    double tol = kv_bytes == 2 ? TOL_KV_BF16 : bf16_inputs ? TOL_BF16_PREFILL : 1e-4;
    printf("%-22s %-4s weights, %s KV: paged batch vs model_forward, worst %.2e (bound %g)\n",
           name, weight_format_name(f), kv_bytes == 2 ? "bf16" : "f32", worst, tol);
    if (!(worst < tol)) fail_msg("%s: paged forward error %g", name, worst);
    for (int s = 0; s < 2; s++) kv_sequence_free(pool, &seq[s]);
    kv_pool_destroy(pool);
    free(got), free(want);
    model_free(m);
}

static void test_paged_packed_and_bf16_kv(void **state) {
    (void)state;
    check_paged("tiny-llama-bf16", WEIGHT_BF16, 4);
    check_paged("tiny-llama-bf16", WEIGHT_BF16, 2);
    check_paged("tiny-llama-qwen2-f32", WEIGHT_Q8, 2);
    check_paged("tiny-neox-f32", WEIGHT_Q8, 4);
    check_paged("tiny-llama-f32", WEIGHT_F32, 2);
}

/* ---- the weights a backend with its own copy reads (model_tensor_read) ---------------------- */

/* x rounded as format stores it: bf16 to nearest even; q8 in blocks of 32 along the row (zero
 * padding past cols), scale rounded to f16, value = scale * quant. */
static void round_row(weight_format f, const float *x, int cols, float *out) {
    if (f == WEIGHT_BF16) {
        for (int k = 0; k < cols; k++) out[k] = weight_bf16_to_f32(weight_f32_to_bf16(x[k]));
        return;
    }
    for (int b = 0; b < cols; b += WEIGHT_Q8_BLOCK) {
        float block[WEIGHT_Q8_BLOCK] = {0};
        int8_t q[WEIGHT_Q8_BLOCK];
        int n = cols - b < WEIGHT_Q8_BLOCK ? cols - b : WEIGHT_Q8_BLOCK;
        memcpy(block, x + b, (size_t)n * sizeof *block);
        float d = weight_f16_to_f32(weight_q8_quantize_block(block, q));
        for (int k = 0; k < n; k++) out[b + k] = d * (float)q[k];
    }
}

/* A packed model's tensors read back (what the CUDA backend uploads): the same shapes as the f32
 * model's, the linear layers, the head and a tied embedding as the packed values (f32's rounded
 * the same way), every other tensor f32's exactly; a tied head stays tied. Failed before the
 * merge with the compute interface: packed matrices read as absent. */
static void check_tensor_read(const char *name, weight_format f) {
    char dir[1100];
    fixture_dir(name, dir, sizeof dir);
    model *ref = load(dir, WEIGHT_F32), *m = load(dir, f);
    assert_int_equal(model_head_is_embedding(m), model_head_is_embedding(ref));
    duel_error err = {0};
    int checked = 0;
    for (int t = 0; t < MODEL_TENSOR_COUNT; t++)
        for (int l = 0; l < model_get_config(ref)->num_layers; l++) {
            int r0, c0, r1, c1;
            model_tensor_shape(ref, (model_tensor)t, l, &r0, &c0);
            model_tensor_shape(m, (model_tensor)t, l, &r1, &c1);
            assert_int_equal(r1, r0);
            assert_int_equal(c1, c0);
            if (r0 == 0) continue;
            size_t n = (size_t)r0 * (size_t)c0;
            float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *want = malloc(n * sizeof *want);
            assert_int_equal(model_tensor_read(ref, (model_tensor)t, l, a, &err), 0);
            if (model_tensor_read(m, (model_tensor)t, l, b, &err))
                fail_msg("%s %s: tensor %d layer %d: %s", name, weight_format_name(f), t, l, err.message);
            bool linear = t == MODEL_TENSOR_QKV_W || t == MODEL_TENSOR_O_W || t == MODEL_TENSOR_UP_W ||
                          t == MODEL_TENSOR_DOWN_W || t == MODEL_TENSOR_HEAD_W ||
                          (t == MODEL_TENSOR_EMBEDDING && model_head_is_embedding(ref));
            for (int r = 0; r < r0; r++) {
                const float *x = a + (size_t)r * (size_t)c0;
                if (linear) round_row(f, x, c0, want + (size_t)r * (size_t)c0);
                else memcpy(want + (size_t)r * (size_t)c0, x, (size_t)c0 * sizeof *want);
            }
            double e = test_relative_error_f32(b, want, n);
            if (!(e < 1e-6))
                fail_msg("%s %s: tensor %d layer %d: rel. err. %g against f32 rounded", name,
                         weight_format_name(f), t, l, e);
            checked += linear;
            free(a);
            free(b);
            free(want);
            if (t < MODEL_TENSOR_ATTN_NORM_W || t > MODEL_TENSOR_DOWN_B) break; /* not per layer */
        }
    assert_true(checked > 0);
    model_free(ref);
    model_free(m);
}

static void test_tensor_read_packed(void **state) {
    (void)state;
    check_tensor_read("tiny-llama-f32", WEIGHT_BF16); /* tied head */
    check_tensor_read("tiny-llama-f32", WEIGHT_Q8);
    check_tensor_read("tiny-neox-f32", WEIGHT_Q8);
    check_tensor_read("tiny-llama-qwen2-f32", WEIGHT_BF16);
}

/* ---- the shipped default model ------------------------------------------------------------- */

static const char *const PROMPTS[] = {
    "What does tea mean?", "What does river mean?", "Define bridge.", "What is a lantern?",
};
#define N_PROMPTS ((int)(sizeof PROMPTS / sizeof PROMPTS[0]))

typedef struct default_model {
    char dir[1100];
    tokenizer *tok;
    chat_template_kind tmpl;
} default_model;

static void default_open(default_model *d) {
    const char *src = test_env("DUEL_SOURCE_DIR", NULL);
    if (!src) fail_msg("DUEL_SOURCE_DIR is not set (run through ctest)");
    snprintf(d->dir, sizeof d->dir, "%s/models/default", src);
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", d->dir);
    duel_error err = {0};
    if (tokenizer_load(path, &d->tok, &err)) fail_msg("%s", err.message);
    if (chat_template_detect(d->dir, &d->tmpl, &err)) fail_msg("%s", err.message);
}

static int32_t *encode_prompt(const default_model *d, int i, size_t *n) {
    chat_message msg = {"user", PROMPTS[i]};
    int32_t *ids = NULL;
    duel_error err = {0};
    if (chat_template_encode(d->tmpl, d->tok, &msg, 1, true, &ids, n, &err)) fail_msg("%s", err.message);
    return ids;
}

/* 64 greedy tokens (argmax, ties to the lower id), EOS ignored. */
enum { GREEDY = 64 };
static void greedy(model *m, const int32_t *prompt, int n, int32_t *out) {
    int V = model_output_size(m);
    model_kv_cache *kv = NULL;
    duel_error err = {0};
    assert_int_equal(model_kv_cache_create(m, n + GREEDY, &kv, &err), 0);
    float *logits = malloc((size_t)V * sizeof *logits);
    assert_int_equal(model_forward(m, kv, prompt, n, logits, false, NULL, &err), 0);
    for (int t = 0; t < GREEDY; t++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        assert_false(isnan(logits[best]));
        out[t] = best;
        assert_int_equal(model_forward(m, kv, &out[t], 1, logits, false, NULL, &err), 0);
    }
    free(logits);
    model_kv_cache_free(kv);
}

static void test_default_greedy_bf16(void **state) {
    (void)state;
    default_model d;
    default_open(&d);
    model *f32 = load(d.dir, WEIGHT_F32), *bf16 = load(d.dir, WEIGHT_BF16), *q8 = load(d.dir, WEIGHT_Q8);
    int q8_same = 0;
    for (int i = 0; i < N_PROMPTS; i++) {
        size_t n = 0;
        int32_t *ids = encode_prompt(&d, i, &n);
        int32_t a[GREEDY], b[GREEDY], q[GREEDY];
        greedy(f32, ids, (int)n, a);
        greedy(bf16, ids, (int)n, b);
        greedy(q8, ids, (int)n, q);
        for (int t = 0; t < GREEDY; t++)
            if (a[t] != b[t])
                fail_msg("\"%s\": greedy token %d is %d with bf16 weights, %d with f32", PROMPTS[i],
                         t, b[t], a[t]);
        int same = 0;
        while (same < GREEDY && q[same] == a[same]) same++;
        q8_same += same == GREEDY;
        free(ids);
    }
    printf("default model, %d prompts x %d greedy tokens: bf16 identical to f32 in all; q8 "
           "identical in %d\n",
           N_PROMPTS, GREEDY, q8_same);
    model_free(f32), model_free(bf16), model_free(q8);
    tokenizer_free(d.tok);
}

/* DUELS duel requests (M = 4, temperature 1, ee_ts, a fresh ERM from seed 5) on an engine whose
 * policy arm holds f32 weights (so every run samples the same candidates) and whose reference arm,
 * the features' source, holds the given format: what the format changes in the ERM's inputs and
 * in the pair it selects. */
enum { DUELS = 16, DM = 4, DNEW = 16 };
typedef struct duel_record {
    duel_pair pair;
    uint64_t candidates_hash; /* of every candidate's tokens */
    float *features;          /* DM x d_feat */
    int d_feat;
} duel_record;

static void run_duels(const default_model *d, weight_format ref_format, duel_record *out) {
    model *policy = load(d->dir, WEIGHT_F32), *ref = load(d->dir, ref_format);
    int H = model_get_config(policy)->hidden_size;
    erm_config ec = {.num_heads = 20, .d_feat = 2 * H, .hidden = 32};
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    erm *r = NULL;
    duel_error err = {0};
    if (erm_create(&ec, &rng, &r, &err)) fail_msg("%s", err.message);
    engine_model_params mp[2] = {{"policy", policy, NULL}, {"ref", ref, NULL}};
    engine_params ep = {.models = mp, .num_models = 2, .kv_memory_bytes = (size_t)16 << 20,
                        .erm = r, .reference_arm = "ref", .features = ENGINE_FEATURES_REFERENCE};
    engine *e = NULL;
    if (engine_create(&ep, &e, &err)) fail_msg("%s", err.message);
    for (int k = 0; k < DUELS; k++) {
        size_t n = 0;
        int32_t *ids = encode_prompt(d, k % N_PROMPTS, &n);
        engine_request req = {.arm = "policy", .tokens = ids, .num_tokens = (int)n,
                              .num_candidates = DM, .sampling = {1.0f, 1.0f, 0},
                              .seed = (uint64_t)(1000 + k), .max_new_tokens = DNEW, .duel = true,
                              .strategy = DUEL_STRATEGY_EE_TS};
        uint64_t id;
        if (engine_submit(e, &req, &id, &err)) fail_msg("%s", err.message);
        free(ids);
        bool finished = false;
        out[k].candidates_hash = 1469598103934665603ull;
        while (!finished) {
            engine_event *ev = NULL;
            engine_poll(e, 30.0, &ev);
            if (!ev) fail_msg("no engine event in 30 s");
            if (ev->kind == ENGINE_EVENT_CANDIDATE)
                for (int t = 0; t < ev->count; t++) /* FNV-1a over (candidate, token) */
                    out[k].candidates_hash =
                        (out[k].candidates_hash ^ (uint64_t)(ev->tokens[t] + 7919 * ev->candidate)) *
                        1099511628211ull;
            if (ev->kind == ENGINE_EVENT_DUEL_READY) {
                out[k].pair = ev->pair;
                out[k].d_feat = ev->d_feat;
                out[k].features = malloc((size_t)DM * ev->d_feat * sizeof(float));
                memcpy(out[k].features, ev->features, (size_t)DM * ev->d_feat * sizeof(float));
            }
            if (ev->kind == ENGINE_EVENT_ERROR) fail_msg("duel %d: %s", k, ev->message);
            finished = ev->kind == ENGINE_EVENT_FINISHED;
            engine_event_free(ev);
        }
    }
    engine_destroy(e);
    erm_free(r);
    model_free(policy);
    model_free(ref);
}

/* Pair agreement with the f32 reference and the features' worst relative error; the candidates
 * must be the same (the policy is f32 in every run). */
static void compare_duels(const duel_record *base, const duel_record *other, int *same_pair,
                          double *worst_features) {
    *same_pair = 0;
    *worst_features = 0;
    for (int k = 0; k < DUELS; k++) {
        assert_true(other[k].candidates_hash == base[k].candidates_hash);
        *same_pair += other[k].pair.first == base[k].pair.first &&
                      other[k].pair.second == base[k].pair.second;
        size_t n = (size_t)DM * base[k].d_feat;
        double *ref = malloc(n * sizeof *ref);
        for (size_t i = 0; i < n; i++) ref[i] = base[k].features[i];
        double e = test_relative_error(other[k].features, ref, n);
        if (!(e <= *worst_features)) *worst_features = e;
        free(ref);
    }
}

static void test_default_duel_pairs(void **state) {
    (void)state;
    default_model d;
    default_open(&d);
    duel_record r32[DUELS], r16[DUELS], r8[DUELS];
    run_duels(&d, WEIGHT_F32, r32);
    run_duels(&d, WEIGHT_BF16, r16);
    run_duels(&d, WEIGHT_Q8, r8);
    int pair16, pair8;
    double feat16, feat8;
    compare_duels(r32, r16, &pair16, &feat16);
    compare_duels(r32, r8, &pair8, &feat8);
    printf("default model, %d duels (M = %d, ee_ts), the reference arm's weights against f32: "
           "bf16 selected the same pair in %d (features' worst relative error %.1e), q8 in %d "
           "(%.1e)\n",
           DUELS, DM, pair16, feat16, pair8, feat8);
    assert_true(pair16 * 4 >= DUELS * 3);
    assert_true(feat16 < TOL_BF16_PREFILL && feat8 < TOL_Q8);
    for (int k = 0; k < DUELS; k++) free(r32[k].features), free(r16[k].features), free(r8[k].features);
    tokenizer_free(d.tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_against_torch),
        cmocka_unit_test(test_paged_packed_and_bf16_kv),
        cmocka_unit_test(test_tensor_read_packed),
        cmocka_unit_test(test_default_greedy_bf16),
        cmocka_unit_test(test_default_duel_pairs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
