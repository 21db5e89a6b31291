/* test_cuda_kernels.c: every CUDA kernel (cuda/backend_cuda.h) against its CPU reference
 * (inference/cpu_ops.c, inference/sampler.c, or a naive loop here) on fresh random inputs, with the
 * outputs poisoned (0xff bytes: NaN in f32 and bf16) before each run so that an element the kernel
 * failed to write never passes. Inputs that the kernel reads in bf16 are rounded to bf16 before the
 * reference sees them, so the error measured is the kernel's own. Thresholds: relative error under
 * 1e-5 where the path is f32 end to end, under 1e-2 where a bf16 output or KV cache is involved.
 *
 * Without a GPU (CI) the test checks that creating a context fails cleanly with DUEL_EDEVICE,
 * prints "SKIP: no CUDA device (<reason>)" and exits 77, which ctest reports as skipped
 * (SKIP_RETURN_CODE in tests/cuda/cuda.cmake). It never passes silently. */
#include "test_helpers.h"

#include "backend_cuda.h"
#include "cpu_ops.h"
#include "rng.h"
#include "sampler.h"

#define TOL_F32 1e-5
#define TOL_BF16 1e-2
/* GEMM inputs are exact in bf16 and products exact in f32: only the summation order differs. */
#define TOL_GEMM 1e-4

/* Set once in main before the tests run; read-only afterwards. */
static backend_cuda_context *g_ctx;

/* ---- helpers --------------------------------------------------------------------------------- */

static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    duel_error err = {0};
    int rc = backend_cuda_alloc(g_ctx, bytes, &p, &err);
    if (rc) fail_msg("alloc %zu: %s", bytes, err.message);
    return p;
}

static void dev_poison(void *p, size_t bytes) {
    duel_error err = {0};
    if (backend_cuda_memset(g_ctx, p, 0xff, bytes, &err)) fail_msg("poison: %s", err.message);
}

static void *dev_upload(const void *host, size_t bytes) {
    void *p = dev_alloc(bytes);
    duel_error err = {0};
    if (backend_cuda_copy_to_device(g_ctx, p, host, bytes, &err)) fail_msg("upload: %s", err.message);
    return p;
}

static void dev_download(void *host, const void *dev, size_t bytes) {
    duel_error err = {0};
    if (backend_cuda_synchronize(g_ctx, &err)) fail_msg("kernel failed: %s", err.message);
    if (backend_cuda_copy_to_host(g_ctx, host, dev, bytes, &err)) fail_msg("download: %s", err.message);
}

static void dev_free(void *p) { backend_cuda_free(g_ctx, p); }

static void check(int rc, const duel_error *err) {
    if (rc) fail_msg("launcher failed (%d): %s", rc, err->message);
}

static float *rand_floats(duel_rng *rng, size_t n, double scale, double offset) {
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(offset + scale * duel_rng_normal(rng));
    return x;
}

/* Rounds x to bf16 in place and returns the bf16 bit patterns (malloc'd). */
static uint16_t *round_bf16(float *x, size_t n) {
    uint16_t *h = malloc(n * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) {
        h[i] = backend_cuda_f32_to_bf16(x[i]);
        x[i] = backend_cuda_bf16_to_f32(h[i]);
    }
    return h;
}

static float *bf16_to_floats(const uint16_t *h, size_t n) {
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = backend_cuda_bf16_to_f32(h[i]);
    return x;
}

static void expect_rel(const float *out, const float *ref, size_t n, double tol, const char *what) {
    double e = test_relative_error_f32(out, ref, n);
    if (!(e < tol)) fail_msg("%s: relative error %g (limit %g)", what, e, tol);
}

/* ---- embedding ------------------------------------------------------------------------------- */

static void test_embedding(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 101);
    int vocab = 1000, dim = 96, n = 37;
    float *table = rand_floats(&rng, (size_t)vocab * dim, 1.0, 0.0);
    uint16_t *table_bf = round_bf16(table, (size_t)vocab * dim);
    int32_t tokens[37];
    for (int i = 0; i < n; i++) tokens[i] = (int32_t)duel_rng_below(&rng, (uint64_t)vocab);
    tokens[0] = 0, tokens[1] = vocab - 1;
    float *ref = malloc((size_t)n * dim * sizeof *ref), *out = malloc((size_t)n * dim * sizeof *out);
    cpu_embedding_forward(ref, tokens, n, table, dim);

    uint16_t *d_table = dev_upload(table_bf, (size_t)vocab * dim * 2);
    int32_t *d_tokens = dev_upload(tokens, sizeof tokens);
    float *d_out = dev_alloc((size_t)n * dim * 4);
    dev_poison(d_out, (size_t)n * dim * 4);
    duel_error err = {0};
    check(backend_cuda_embedding(g_ctx, d_out, d_tokens, n, d_table, vocab, dim, &err), &err);
    dev_download(out, d_out, (size_t)n * dim * 4);
    expect_rel(out, ref, (size_t)n * dim, TOL_F32, "embedding");
    assert_memory_equal(out, ref, (size_t)n * dim * sizeof *out);

    /* The device-side guard: an id outside the vocabulary gives NaN, never a stray read. */
    int32_t bad[2] = {vocab, -1};
    int32_t *d_bad = dev_upload(bad, sizeof bad);
    check(backend_cuda_embedding(g_ctx, d_out, d_bad, 2, d_table, vocab, dim, &err), &err);
    dev_download(out, d_out, (size_t)2 * dim * 4);
    for (int i = 0; i < 2 * dim; i++) assert_true(isnan(out[i]));

    assert_int_equal(backend_cuda_embedding(g_ctx, d_out, d_tokens, 0, d_table, vocab, dim, &err),
                     DUEL_EINVAL);
    dev_free(d_table), dev_free(d_tokens), dev_free(d_out), dev_free(d_bad);
    free(table), free(table_bf), free(ref), free(out);
}

/* ---- norms ----------------------------------------------------------------------------------- */

static void run_norm(bool layernorm, bool with_delta, backend_cuda_dtype out_dtype, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    int n = 7, dim = 1000; /* dim not a multiple of the block size */
    float eps = 1e-5f;
    size_t count = (size_t)n * dim;
    float *x = rand_floats(&rng, count, 2.0, 0.3);
    float *delta = rand_floats(&rng, count, 0.5, -0.1);
    float *w = rand_floats(&rng, (size_t)dim, 0.1, 1.0);
    float *b = rand_floats(&rng, (size_t)dim, 0.2, 0.0);
    uint16_t *w_bf = round_bf16(w, (size_t)dim), *b_bf = round_bf16(b, (size_t)dim);

    float *sum = malloc(count * sizeof *sum), *ref = malloc(count * sizeof *ref);
    memcpy(sum, x, count * sizeof *sum);
    if (with_delta) cpu_add_forward(sum, delta, count);
    if (layernorm)
        cpu_layernorm_forward(ref, sum, w, b, n, dim, eps);
    else
        cpu_rmsnorm_forward(ref, sum, w, n, dim, eps);

    float *d_x = dev_upload(x, count * 4), *d_delta = dev_upload(delta, count * 4);
    uint16_t *d_w = dev_upload(w_bf, (size_t)dim * 2), *d_b = dev_upload(b_bf, (size_t)dim * 2);
    size_t out_bytes = count * (out_dtype == BACKEND_CUDA_F32 ? 4 : 2);
    void *d_out = dev_alloc(out_bytes);
    dev_poison(d_out, out_bytes);
    duel_error err = {0};
    int rc = layernorm ? backend_cuda_layernorm(g_ctx, d_out, out_dtype, d_x,
                                                with_delta ? d_delta : NULL, d_w, d_b, n, dim, eps,
                                                &err)
                       : backend_cuda_rmsnorm(g_ctx, d_out, out_dtype, d_x,
                                              with_delta ? d_delta : NULL, d_w, n, dim, eps, &err);
    check(rc, &err);
    float *out = malloc(count * sizeof *out);
    if (out_dtype == BACKEND_CUDA_F32) {
        dev_download(out, d_out, out_bytes);
        expect_rel(out, ref, count, TOL_F32, layernorm ? "layernorm f32" : "rmsnorm f32");
    } else {
        uint16_t *h = malloc(out_bytes);
        dev_download(h, d_out, out_bytes);
        float *o = bf16_to_floats(h, count);
        expect_rel(o, ref, count, TOL_BF16, layernorm ? "layernorm bf16" : "rmsnorm bf16");
        free(h), free(o);
    }
    /* The fused residual add wrote x + delta back (same f32 addition as the CPU). */
    dev_download(out, d_x, count * 4);
    expect_rel(out, sum, count, 1e-7, "residual after the fused add");

    dev_free(d_x), dev_free(d_delta), dev_free(d_w), dev_free(d_b), dev_free(d_out);
    free(x), free(delta), free(w), free(b), free(w_bf), free(b_bf), free(sum), free(ref), free(out);
}

static void test_rmsnorm(void **state) {
    (void)state;
    run_norm(false, false, BACKEND_CUDA_F32, 201);
    run_norm(false, true, BACKEND_CUDA_F32, 202);
    run_norm(false, true, BACKEND_CUDA_BF16, 203);
}

static void test_layernorm(void **state) {
    (void)state;
    run_norm(true, false, BACKEND_CUDA_F32, 211);
    run_norm(true, true, BACKEND_CUDA_F32, 212);
    run_norm(true, false, BACKEND_CUDA_BF16, 213);
}

/* ---- GEMM ------------------------------------------------------------------------------------ */

static void run_linear(int n, int in_dim, int out_dim, bool with_bias, bool accumulate,
                       uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    float *x = rand_floats(&rng, (size_t)n * in_dim, 1.0, 0.0);
    float *w = rand_floats(&rng, (size_t)out_dim * in_dim, 0.05, 0.0);
    float *b = rand_floats(&rng, (size_t)out_dim, 0.5, 0.0);
    float *init = rand_floats(&rng, (size_t)n * out_dim, 1.0, 0.0);
    uint16_t *x_bf = round_bf16(x, (size_t)n * in_dim), *w_bf = round_bf16(w, (size_t)out_dim * in_dim);
    uint16_t *b_bf = round_bf16(b, (size_t)out_dim);
    size_t out_count = (size_t)n * out_dim;
    float *ref = malloc(out_count * sizeof *ref), *out = malloc(out_count * sizeof *out);
    memcpy(ref, init, out_count * sizeof *ref);
    cpu_matmul_forward(ref, x, w, with_bias ? b : NULL, n, in_dim, out_dim, accumulate, NULL);

    uint16_t *d_x = dev_upload(x_bf, (size_t)n * in_dim * 2);
    uint16_t *d_w = dev_upload(w_bf, (size_t)out_dim * in_dim * 2);
    uint16_t *d_b = dev_upload(b_bf, (size_t)out_dim * 2);
    float *d_out = dev_alloc(out_count * 4);
    if (accumulate) {
        duel_error e = {0};
        check(backend_cuda_copy_to_device(g_ctx, d_out, init, out_count * 4, &e), &e);
    } else {
        dev_poison(d_out, out_count * 4);
    }
    duel_error err = {0};
    check(backend_cuda_linear(g_ctx, d_out, d_x, d_w, with_bias ? d_b : NULL, n, in_dim, out_dim,
                              accumulate, &err),
          &err);
    dev_download(out, d_out, out_count * 4);
    char what[96];
    snprintf(what, sizeof what, "linear n=%d in=%d out=%d bias=%d acc=%d", n, in_dim, out_dim,
             with_bias, accumulate);
    expect_rel(out, ref, out_count, TOL_GEMM, what);
    dev_free(d_x), dev_free(d_w), dev_free(d_b), dev_free(d_out);
    free(x), free(w), free(b), free(init), free(x_bf), free(w_bf), free(b_bf), free(ref), free(out);
}

static void test_linear(void **state) {
    (void)state;
    run_linear(1, 384, 200, false, false, 301);   /* decode GEMV shape */
    run_linear(5, 384, 200, true, false, 302);    /* QKV bias */
    run_linear(64, 512, 320, false, true, 303);   /* residual accumulate */
    run_linear(33, 200, 130, true, true, 304);    /* bias + accumulate, odd sizes */
    duel_error err = {0};
    assert_int_equal(backend_cuda_linear(g_ctx, NULL, NULL, NULL, NULL, 1, 1, 1, false, &err),
                     DUEL_EINVAL);
    assert_true(strlen(err.message) > 0);
}

/* ---- RoPE ------------------------------------------------------------------------------------ */

static void run_rope(int head_dim, int rotary_dim, int scaling, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    int n = 9, heads = 3, stride = heads * head_dim + 40; /* q inside a wider QKV row */
    size_t count = (size_t)n * stride;
    float *x = rand_floats(&rng, count, 1.0, 0.0);
    float *ref = malloc(count * sizeof *ref), *out = malloc(count * sizeof *out);
    memcpy(ref, x, count * sizeof *ref);
    int32_t positions[9];
    for (int t = 0; t < n; t++) positions[t] = (int32_t)duel_rng_below(&rng, 6000);
    positions[0] = 0;
    double *inv_freq = malloc((size_t)(rotary_dim / 2) * sizeof *inv_freq);
    cpu_rope_inv_freq(inv_freq, rotary_dim, 500000.0, scaling, 8.0, 1.0, 4.0, 8192);
    float *c = malloc((size_t)(rotary_dim / 2) * sizeof *c), *s = malloc((size_t)(rotary_dim / 2) * sizeof *s);
    for (int t = 0; t < n; t++) { /* positions are not consecutive: one table row per token */
        cpu_rope_tables(c, s, inv_freq, rotary_dim, positions[t], 1);
        cpu_rope_forward(ref + (size_t)t * stride, 1, stride, heads, head_dim, rotary_dim, c, s);
    }
    float *d_x = dev_upload(x, count * 4);
    int32_t *d_pos = dev_upload(positions, sizeof positions);
    double *d_freq = dev_upload(inv_freq, (size_t)(rotary_dim / 2) * sizeof *inv_freq);
    duel_error err = {0};
    check(backend_cuda_rope(g_ctx, d_x, n, stride, heads, head_dim, rotary_dim, d_pos, d_freq, &err),
          &err);
    dev_download(out, d_x, count * 4);
    expect_rel(out, ref, count, TOL_F32, "rope");
    /* Pass-through dims and the rest of the row are untouched, bit for bit. */
    for (int t = 0; t < n; t++)
        for (int i = 0; i < stride; i++) {
            int h = i / head_dim, d = i % head_dim;
            if (h >= heads || d >= rotary_dim)
                assert_memory_equal(&out[(size_t)t * stride + i], &x[(size_t)t * stride + i], 4);
        }
    assert_int_equal(backend_cuda_rope(g_ctx, d_x, n, stride, heads, head_dim, head_dim + 2, d_pos,
                                       d_freq, &err),
                     DUEL_EINVAL);
    dev_free(d_x), dev_free(d_pos), dev_free(d_freq);
    free(x), free(ref), free(out), free(inv_freq), free(c), free(s);
}

static void test_rope(void **state) {
    (void)state;
    run_rope(64, 64, CPU_ROPE_SCALING_NONE, 401);    /* full rotary */
    run_rope(64, 16, CPU_ROPE_SCALING_NONE, 402);    /* GPT-NeoX partial, rotary_pct 0.25 */
    run_rope(128, 128, CPU_ROPE_SCALING_LLAMA3, 403); /* Llama 3 scaled frequencies */
}

/* ---- MLP activations ------------------------------------------------------------------------- */

static void test_swiglu(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 501);
    int n = 5, ffn = 300;
    float *gu = rand_floats(&rng, (size_t)n * 2 * ffn, 2.0, 0.0);
    float *ref = malloc((size_t)n * ffn * sizeof *ref);
    cpu_swiglu_forward(ref, gu, n, ffn);
    float *d_gu = dev_upload(gu, (size_t)n * 2 * ffn * 4);
    uint16_t *d_out = dev_alloc((size_t)n * ffn * 2);
    dev_poison(d_out, (size_t)n * ffn * 2);
    duel_error err = {0};
    check(backend_cuda_swiglu(g_ctx, d_out, d_gu, n, ffn, &err), &err);
    uint16_t *h = malloc((size_t)n * ffn * 2);
    dev_download(h, d_out, (size_t)n * ffn * 2);
    float *out = bf16_to_floats(h, (size_t)n * ffn);
    expect_rel(out, ref, (size_t)n * ffn, TOL_BF16, "swiglu");
    dev_free(d_gu), dev_free(d_out);
    free(gu), free(ref), free(h), free(out);
}

static void test_gelu(void **state) {
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        duel_rng rng;
        duel_rng_seed(&rng, 511 + (uint64_t)mode);
        size_t count = 3 * 777;
        float *x = rand_floats(&rng, count, 2.0, 0.0);
        float *ref = malloc(count * sizeof *ref);
        memcpy(ref, x, count * sizeof *ref);
        cpu_gelu_forward(ref, count, mode == 1);
        float *d_x = dev_upload(x, count * 4);
        uint16_t *d_out = dev_alloc(count * 2);
        dev_poison(d_out, count * 2);
        duel_error err = {0};
        check(backend_cuda_gelu(g_ctx, d_out, d_x, count, mode == 1, &err), &err);
        uint16_t *h = malloc(count * 2);
        dev_download(h, d_out, count * 2);
        float *out = bf16_to_floats(h, count);
        expect_rel(out, ref, count, TOL_BF16, mode ? "gelu tanh" : "gelu erf");
        dev_free(d_x), dev_free(d_out);
        free(x), free(ref), free(h), free(out);
    }
}

/* ---- paged KV cache -------------------------------------------------------------------------- */

typedef struct test_kv {
    backend_cuda_kv_layer layer; /* device arrays */
    float *keys, *values;        /* host copies, bf16-rounded values in f32 */
    size_t count;
} test_kv;

static void test_kv_init(test_kv *kv, duel_rng *rng, int num_blocks, int kv_heads, int block_size,
                         int head_dim) {
    kv->count = (size_t)num_blocks * kv_heads * block_size * head_dim;
    kv->keys = rand_floats(rng, kv->count, 1.0, 0.0);
    kv->values = rand_floats(rng, kv->count, 1.0, 0.0);
    uint16_t *kb = round_bf16(kv->keys, kv->count), *vb = round_bf16(kv->values, kv->count);
    kv->layer.keys = dev_upload(kb, kv->count * 2);
    kv->layer.values = dev_upload(vb, kv->count * 2);
    kv->layer.num_blocks = num_blocks;
    kv->layer.num_kv_heads = kv_heads;
    kv->layer.block_size = block_size;
    kv->layer.head_dim = head_dim;
    free(kb), free(vb);
}

static void test_kv_free(test_kv *kv) {
    dev_free(kv->layer.keys), dev_free(kv->layer.values);
    free(kv->keys), free(kv->values);
}

static size_t kv_index(const backend_cuda_kv_layer *l, int block, int head, int slot) {
    return (((size_t)block * l->num_kv_heads + head) * l->block_size + slot) * l->head_dim;
}

static void test_kv_write(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 601);
    int num_blocks = 10, kv_heads = 2, bs = 16, D = 64, n = 21;
    int stride = 4 * D + 2 * kv_heads * D; /* a QKV row: q (4 heads) | k | v */
    size_t cache_count = (size_t)num_blocks * kv_heads * bs * D;
    uint16_t *d_k = dev_alloc(cache_count * 2), *d_v = dev_alloc(cache_count * 2);
    dev_poison(d_k, cache_count * 2), dev_poison(d_v, cache_count * 2);
    backend_cuda_kv_layer layer = {d_k, d_v, num_blocks, kv_heads, bs, D};
    float *qkv = rand_floats(&rng, (size_t)n * stride, 1.0, 0.0);
    /* Distinct random slots, one padding token (-1). */
    int32_t slots[21];
    for (int t = 0; t < n; t++) {
        for (;;) {
            int32_t s = (int32_t)duel_rng_below(&rng, (uint64_t)num_blocks * bs);
            bool dup = false;
            for (int u = 0; u < t; u++) dup |= slots[u] == s;
            if (!dup) {
                slots[t] = s;
                break;
            }
        }
    }
    slots[5] = -1;
    float *d_qkv = dev_upload(qkv, (size_t)n * stride * 4);
    int32_t *d_slots = dev_upload(slots, sizeof slots);
    duel_error err = {0};
    check(backend_cuda_kv_write(g_ctx, &layer, d_qkv + 4 * D, d_qkv + 4 * D + kv_heads * D, stride,
                                d_slots, n, &err),
          &err);
    uint16_t *hk = malloc(cache_count * 2), *hv = malloc(cache_count * 2);
    dev_download(hk, d_k, cache_count * 2);
    dev_download(hv, d_v, cache_count * 2);
    bool *written = calloc((size_t)num_blocks * bs, sizeof *written);
    for (int t = 0; t < n; t++) {
        if (slots[t] < 0) continue;
        written[slots[t]] = true;
        int b = slots[t] / bs, s = slots[t] % bs;
        for (int g = 0; g < kv_heads; g++)
            for (int d = 0; d < D; d++) {
                size_t i = kv_index(&layer, b, g, s) + d;
                const float *row = qkv + (size_t)t * stride;
                assert_int_equal(hk[i], backend_cuda_f32_to_bf16(row[4 * D + g * D + d]));
                assert_int_equal(hv[i], backend_cuda_f32_to_bf16(row[4 * D + kv_heads * D + g * D + d]));
            }
    }
    /* Every other slot still holds the poison: nothing was written out of place. */
    for (int slot = 0; slot < num_blocks * bs; slot++) {
        if (written[slot]) continue;
        for (int g = 0; g < kv_heads; g++)
            for (int d = 0; d < D; d++) {
                size_t i = kv_index(&layer, slot / bs, g, slot % bs) + d;
                assert_int_equal(hk[i], 0xffff);
                assert_int_equal(hv[i], 0xffff);
            }
    }
    dev_free(d_k), dev_free(d_v), dev_free(d_qkv), dev_free(d_slots);
    free(qkv), free(hk), free(hv), free(written);
}

static void test_kv_copy_blocks(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 611);
    test_kv layers[2];
    backend_cuda_kv_layer dl[2];
    for (int l = 0; l < 2; l++) {
        test_kv_init(&layers[l], &rng, 8, 3, 16, 32);
        dl[l] = layers[l].layer;
    }
    int32_t pairs[4] = {3, 7, 1, 2};
    duel_error err = {0};
    check(backend_cuda_kv_copy_blocks(g_ctx, dl, 2, pairs, 2, &err), &err);
    size_t count = layers[0].count, block = count / 8;
    uint16_t *h = malloc(count * 2);
    for (int l = 0; l < 2; l++)
        for (int kvsel = 0; kvsel < 2; kvsel++) {
            dev_download(h, kvsel ? dl[l].values : dl[l].keys, count * 2);
            float *x = bf16_to_floats(h, count);
            const float *orig = kvsel ? layers[l].values : layers[l].keys;
            for (int b = 0; b < 8; b++) {
                int src = b == 7 ? 3 : b == 2 ? 1 : b;
                assert_memory_equal(x + (size_t)b * block, orig + (size_t)src * block, block * 4);
            }
            free(x);
        }
    /* A bad pair is refused before anything is copied. */
    int32_t bad[4] = {0, 5, 4, 8};
    assert_int_equal(backend_cuda_kv_copy_blocks(g_ctx, dl, 2, bad, 2, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "bad pair"));
    dev_download(h, dl[0].keys, count * 2);
    float *x = bf16_to_floats(h, count);
    assert_memory_equal(x + 5 * block, layers[0].keys + 5 * block, block * 4);
    free(x), free(h);
    for (int l = 0; l < 2; l++) test_kv_free(&layers[l]);
}

/* ---- attention ------------------------------------------------------------------------------- */

/* A random block table of `blocks` distinct ids out of the cache's, in shuffled order. */
static void random_table(duel_rng *rng, int32_t *table, int blocks, int num_blocks) {
    int32_t *perm = malloc((size_t)num_blocks * sizeof *perm);
    for (int i = 0; i < num_blocks; i++) perm[i] = i;
    for (int i = num_blocks - 1; i > 0; i--) {
        int j = (int)duel_rng_below(rng, (uint64_t)i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    memcpy(table, perm, (size_t)blocks * sizeof *table);
    free(perm);
}

/* Gathers positions [0, len) of a sequence from the paged host copy into contiguous
 * [len][kv_heads*D] rows, as cpu_attention_forward reads them. */
static void gather_kv(const test_kv *kv, const int32_t *table, int len, float *k, float *v) {
    const backend_cuda_kv_layer *l = &kv->layer;
    int D = l->head_dim, H = l->num_kv_heads;
    for (int p = 0; p < len; p++)
        for (int g = 0; g < H; g++) {
            size_t src = kv_index(l, table[p / l->block_size], g, p % l->block_size);
            memcpy(k + (size_t)p * H * D + (size_t)g * D, kv->keys + src, (size_t)D * 4);
            memcpy(v + (size_t)p * H * D + (size_t)g * D, kv->values + src, (size_t)D * 4);
        }
}

static void run_decode(int num_heads, int kv_heads, int D, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    const int bs = 16, num_seqs = 6, max_blocks = 24, num_blocks = 160;
    int32_t lens[6] = {1, 15, 16, 17, 100, 377};
    test_kv kv;
    test_kv_init(&kv, &rng, num_blocks, kv_heads, bs, D);
    int32_t *tables = calloc((size_t)num_seqs * max_blocks, sizeof *tables);
    for (int s = 0; s < num_seqs; s++)
        random_table(&rng, tables + (size_t)s * max_blocks, max_blocks, num_blocks);
    int q_stride = num_heads * D + 8, out_stride = num_heads * D;
    float *q = rand_floats(&rng, (size_t)num_seqs * q_stride, 1.0, 0.0);
    float *ref = malloc((size_t)num_seqs * out_stride * sizeof *ref);
    int kv_stride = kv_heads * D;
    float *k = malloc((size_t)lens[5] * kv_stride * 4), *v = malloc((size_t)lens[5] * kv_stride * 4);
    float *scratch = malloc(cpu_attention_scratch_floats(1, lens[5]) * 4);
    for (int s = 0; s < num_seqs; s++) {
        gather_kv(&kv, tables + (size_t)s * max_blocks, lens[s], k, v);
        cpu_attention_forward(ref + (size_t)s * out_stride, out_stride, q + (size_t)s * q_stride,
                              q_stride, k, v, kv_stride, 1, lens[s] - 1, num_heads, kv_heads, D,
                              scratch, NULL);
    }
    float *d_q = dev_upload(q, (size_t)num_seqs * q_stride * 4);
    int32_t *d_tables = dev_upload(tables, (size_t)num_seqs * max_blocks * 4);
    int32_t *d_lens = dev_upload(lens, sizeof lens);
    size_t out_bytes = (size_t)num_seqs * out_stride * 2;
    uint16_t *d_out = dev_alloc(out_bytes);
    dev_poison(d_out, out_bytes);
    duel_error err = {0};
    check(backend_cuda_attention_decode(g_ctx, d_out, out_stride, d_q, q_stride, &kv.layer,
                                        d_tables, max_blocks, d_lens, num_seqs, num_heads, &err),
          &err);
    uint16_t *h = malloc(out_bytes);
    dev_download(h, d_out, out_bytes);
    float *out = bf16_to_floats(h, (size_t)num_seqs * out_stride);
    char what[96];
    snprintf(what, sizeof what, "decode heads=%d kv_heads=%d head_dim=%d", num_heads, kv_heads, D);
    expect_rel(out, ref, (size_t)num_seqs * out_stride, TOL_BF16, what);

    /* A block id outside the cache poisons that sequence's row instead of reading past it. */
    tables[(size_t)2 * max_blocks] = num_blocks + 5;
    check(backend_cuda_copy_to_device(g_ctx, d_tables, tables, (size_t)num_seqs * max_blocks * 4,
                                      &err),
          &err);
    check(backend_cuda_attention_decode(g_ctx, d_out, out_stride, d_q, q_stride, &kv.layer,
                                        d_tables, max_blocks, d_lens, num_seqs, num_heads, &err),
          &err);
    dev_download(h, d_out, out_bytes);
    for (int i = 0; i < out_stride; i++) assert_true(isnan(backend_cuda_bf16_to_f32(h[2 * out_stride + i])));
    assert_false(isnan(backend_cuda_bf16_to_f32(h[3 * out_stride])));

    assert_int_equal(backend_cuda_attention_decode(g_ctx, d_out, out_stride, d_q, q_stride,
                                                   &kv.layer, d_tables, max_blocks, d_lens,
                                                   num_seqs, num_heads + 1, &err),
                     DUEL_EINVAL);
    dev_free(d_q), dev_free(d_tables), dev_free(d_lens), dev_free(d_out);
    test_kv_free(&kv);
    free(tables), free(q), free(ref), free(k), free(v), free(scratch), free(h), free(out);
}

static void test_attention_decode(void **state) {
    (void)state;
    run_decode(8, 2, 64, 701);   /* GQA, group 4 */
    run_decode(4, 4, 128, 702);  /* multi-head */
    run_decode(12, 1, 80, 703);  /* MQA, group 12 > 8 heads per block, head_dim 80 (Pythia-2.8B) */
    run_decode(14, 2, 64, 704);  /* group 7 (Qwen2-0.5B) */
    run_decode(2, 1, 256, 705);  /* largest head_dim */
    run_decode(6, 2, 192, 706);  /* group 3 (4-head blocks, one idle), wide head_dim */
    run_decode(16, 2, 256, 707); /* group 8, wide head_dim: the largest instantiation */
}

static void run_prefill(int num_heads, int kv_heads, int D, int start_pos, int n, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    const int bs = 16, num_blocks = 40;
    int total = start_pos + n, blocks = (total + bs - 1) / bs;
    test_kv kv;
    test_kv_init(&kv, &rng, num_blocks, kv_heads, bs, D);
    int32_t *table = calloc((size_t)blocks, sizeof *table);
    random_table(&rng, table, blocks, num_blocks);
    int q_stride = (num_heads + 2 * kv_heads) * D, out_stride = num_heads * D + 16;
    float *q = rand_floats(&rng, (size_t)n * q_stride, 1.0, 0.0);
    float *ref = calloc((size_t)n * out_stride, sizeof *ref);
    int kv_stride = kv_heads * D;
    float *k = malloc((size_t)total * kv_stride * 4), *v = malloc((size_t)total * kv_stride * 4);
    float *scratch = malloc(cpu_attention_scratch_floats(n, total) * 4);
    gather_kv(&kv, table, total, k, v);
    cpu_attention_forward(ref, out_stride, q, q_stride, k, v, kv_stride, n, start_pos, num_heads,
                          kv_heads, D, scratch, NULL);
    float *d_q = dev_upload(q, (size_t)n * q_stride * 4);
    int32_t *d_table = dev_upload(table, (size_t)blocks * 4);
    size_t out_bytes = (size_t)n * out_stride * 2;
    uint16_t *d_out = dev_alloc(out_bytes);
    dev_poison(d_out, out_bytes);
    duel_error err = {0};
    check(backend_cuda_attention_prefill(g_ctx, d_out, out_stride, d_q, q_stride, &kv.layer,
                                         d_table, n, start_pos, num_heads, &err),
          &err);
    uint16_t *h = malloc(out_bytes);
    dev_download(h, d_out, out_bytes);
    /* Compare the heads only; the padding at the end of each output row stays poisoned. */
    float *out = malloc((size_t)n * num_heads * D * 4), *r = malloc((size_t)n * num_heads * D * 4);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < num_heads * D; i++) {
            out[(size_t)t * num_heads * D + i] = backend_cuda_bf16_to_f32(h[(size_t)t * out_stride + i]);
            r[(size_t)t * num_heads * D + i] = ref[(size_t)t * out_stride + i];
        }
    for (int t = 0; t < n; t++)
        for (int i = num_heads * D; i < out_stride; i++) assert_int_equal(h[(size_t)t * out_stride + i], 0xffff);
    char what[96];
    snprintf(what, sizeof what, "prefill heads=%d kv=%d D=%d start=%d n=%d", num_heads, kv_heads, D,
             start_pos, n);
    expect_rel(out, r, (size_t)n * num_heads * D, TOL_BF16, what);
    dev_free(d_q), dev_free(d_table), dev_free(d_out);
    test_kv_free(&kv);
    free(table), free(q), free(ref), free(k), free(v), free(scratch), free(h), free(out), free(r);
}

static void test_attention_prefill(void **state) {
    (void)state;
    run_prefill(8, 2, 64, 0, 50, 801);   /* fresh prompt */
    run_prefill(8, 2, 64, 32, 45, 802);  /* after two prefix-cached blocks */
    run_prefill(6, 6, 128, 7, 70, 803);  /* chunked prefill starting mid-block */
}

/* ---- sampling -------------------------------------------------------------------------------- */

static void run_sample(int n, int vocab, int rounds, uint64_t seed) {
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    static const backend_cuda_sampling configs[] = {
        {0.0f, 1.0f, 0},  {1.0f, 1.0f, 0},  {0.7f, 1.0f, 0},  {1.0f, 1.0f, 50}, {0.8f, 0.9f, 0},
        {1.2f, 0.8f, 40}, {1.0f, 0.5f, 0},  {0.5f, 0.95f, 1}, {2.0f, 1.0f, 7},  {1.0f, 0.3f, 3},
    };
    int num_configs = (int)(sizeof configs / sizeof configs[0]);
    float *logits = rand_floats(&rng, (size_t)n * vocab, 3.0, 0.0);
    for (int i = 0; i < n; i++) { /* masked tokens and a tie for the maximum */
        logits[(size_t)i * vocab + (size_t)duel_rng_below(&rng, (uint64_t)vocab)] = -INFINITY;
        logits[(size_t)i * vocab + 3] = logits[(size_t)i * vocab + 11] = 12.0f;
    }
    backend_cuda_sampling *params = malloc((size_t)n * sizeof *params);
    duel_rng *gpu_rngs = malloc((size_t)n * sizeof *gpu_rngs), *cpu_rngs = malloc((size_t)n * sizeof *cpu_rngs);
    duel_rng **rng_ptrs = malloc((size_t)n * sizeof *rng_ptrs);
    for (int i = 0; i < n; i++) {
        params[i] = configs[i % num_configs];
        duel_rng_seed(&gpu_rngs[i], seed * 1000 + (uint64_t)i);
        duel_rng_seed(&cpu_rngs[i], seed * 1000 + (uint64_t)i);
        rng_ptrs[i] = &gpu_rngs[i];
    }
    float *d_logits = dev_upload(logits, (size_t)n * vocab * 4);
    int32_t *tokens = malloc((size_t)n * sizeof *tokens);
    float *logprobs = malloc((size_t)n * sizeof *logprobs), *ref_lp = malloc((size_t)n * sizeof *ref_lp);
    for (int round = 0; round < rounds; round++) {
        duel_error err = {0};
        check(backend_cuda_sample(g_ctx, tokens, logprobs, d_logits, n, vocab, params,
                                  rng_ptrs, &err),
              &err);
        for (int i = 0; i < n; i++) {
            sampler_params sp = {params[i].temperature, params[i].top_p, params[i].top_k};
            float lp = 0;
            int32_t want = sampler_sample(logits + (size_t)i * vocab, vocab, &sp, &cpu_rngs[i], &lp,
                                          &err);
            assert_true(want >= 0);
            if (tokens[i] != want)
                fail_msg("round %d row %d (T=%g top_p=%g top_k=%d): GPU token %d, CPU token %d",
                         round, i, (double)sp.temperature, (double)sp.top_p, sp.top_k, tokens[i],
                         want);
            ref_lp[i] = lp;
        }
        expect_rel(logprobs, ref_lp, (size_t)n, TOL_F32, "sample logprob");
    }
    dev_free(d_logits);
    free(logits), free(params), free(gpu_rngs), free(cpu_rngs), free(rng_ptrs), free(tokens);
    free(logprobs), free(ref_lp);
}

static void test_sample(void **state) {
    (void)state;
    run_sample(40, 5000, 5, 901);
    /* Qwen2's vocabulary: more ranked rows than one sort chunk holds. */
    run_sample(64, 152064, 1, 902);
}

static void test_sample_errors(void **state) {
    (void)state;
    int n = 3, vocab = 100;
    duel_rng rng;
    duel_rng_seed(&rng, 911);
    float *logits = rand_floats(&rng, (size_t)n * vocab, 1.0, 0.0);
    logits[vocab + 42] = NAN;
    float *d_logits = dev_upload(logits, (size_t)n * vocab * 4);
    backend_cuda_sampling params[3] = {{1.0f, 1.0f, 0}, {1.0f, 1.0f, 0}, {0.0f, 1.0f, 0}};
    duel_rng rngs[3];
    duel_rng *ptrs[3] = {&rngs[0], &rngs[1], &rngs[2]};
    for (int i = 0; i < 3; i++) duel_rng_seed(&rngs[i], (uint64_t)i);
    int32_t tokens[3];
    duel_error err = {0};
    assert_int_equal(backend_cuda_sample(g_ctx, tokens, NULL, d_logits, n, vocab, params, ptrs, &err),
                     DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "row 1: logit 42 is NaN"));
    params[0].top_p = 1.5f;
    assert_int_equal(backend_cuda_sample(g_ctx, tokens, NULL, d_logits, n, vocab, params, ptrs, &err),
                     DUEL_EINVAL);
    assert_non_null(strstr(err.message, "row 0"));
    params[0].top_p = 1.0f;
    assert_int_equal(backend_cuda_sample(g_ctx, tokens, NULL, d_logits, n, vocab, params, NULL, &err),
                     DUEL_EINVAL);
    for (int i = 0; i < vocab; i++) logits[vocab + i] = -INFINITY;
    check(backend_cuda_copy_to_device(g_ctx, d_logits, logits, (size_t)n * vocab * 4, &err), &err);
    assert_int_equal(backend_cuda_sample(g_ctx, tokens, NULL, d_logits, n, vocab, params, ptrs, &err),
                     DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "every logit is -inf"));
    dev_free(d_logits);
    free(logits);
}

/* ---- device errors --------------------------------------------------------------------------- */

static void test_device_errors(void **state) {
    (void)state;
    duel_error err = {0};
    void *p = (void *)1;
    assert_int_equal(backend_cuda_alloc(g_ctx, (size_t)1 << 52, &p, &err), DUEL_EDEVICE);
    assert_null(p);
    assert_non_null(strstr(err.message, "out of device memory"));
    backend_cuda_context *other = (backend_cuda_context *)1;
    assert_int_equal(backend_cuda_context_create(99, 0, &other, &err), DUEL_EDEVICE);
    assert_null(other);
    assert_int_equal(backend_cuda_context_create(0, (size_t)1 << 52, &other, &err), DUEL_EDEVICE);
    assert_non_null(strstr(err.message, "too small"));
    /* The context is still usable after refused requests. */
    assert_int_equal(backend_cuda_synchronize(g_ctx, &err), DUEL_OK);
}

int main(void) {
    backend_cuda_info info;
    duel_error err = {0};
    int rc = backend_cuda_probe(&info, &err);
    if (rc || info.device_count == 0) {
        const char *reason = rc ? err.message
                             : !info.built ? "built without CUDA"
                                           : "the driver reports no device";
        /* Even without a GPU, asking for a context must fail cleanly, not abort. */
        backend_cuda_context *ctx = (backend_cuda_context *)1;
        duel_error cerr = {0};
        int crc = backend_cuda_context_create(0, 0, &ctx, &cerr);
        if (crc != DUEL_EDEVICE || ctx != NULL || cerr.message[0] == '\0') {
            fprintf(stderr, "FAIL: context_create without a device returned %d (%s)\n", crc,
                    cerr.message);
            return 1;
        }
        printf("SKIP: no CUDA device (%s; context_create said: %s)\n", reason, cerr.message);
        return 77;
    }
    rc = backend_cuda_context_create(0, 0, &g_ctx, &err);
    if (rc) {
        fprintf(stderr, "FAIL: a device answered the probe but context_create failed: %s\n",
                err.message);
        return 1;
    }
    printf("device: %s (%d SMs)\n", backend_cuda_device_name(g_ctx), backend_cuda_sm_count(g_ctx));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding),        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_rope),             cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_gelu),             cmocka_unit_test(test_kv_write),
        cmocka_unit_test(test_kv_copy_blocks),   cmocka_unit_test(test_attention_decode),
        cmocka_unit_test(test_attention_prefill), cmocka_unit_test(test_sample),
        cmocka_unit_test(test_sample_errors),    cmocka_unit_test(test_device_errors),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    backend_cuda_context_destroy(g_ctx);
    return failed ? 1 : 0;
}
