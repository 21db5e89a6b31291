/* test_cpu_ops.c: each CPU layer kernel (inference/cpu_ops.c) against a naive float64 reference
 * written here, on fresh random inputs: relative error under 1e-5. */
#include "test_helpers.h"

#include "cpu_ops.h"
#include "rng.h"

#define TOL 1e-5

static float *rand_floats(duel_rng *rng, size_t n, double scale, double offset) {
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(offset + scale * duel_rng_normal(rng));
    return x;
}

static double *alloc_doubles(size_t n) {
    double *x = calloc(n, sizeof *x);
    assert_non_null(x);
    return x;
}

static void test_embedding(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    int vocab = 50, dim = 12, n = 7;
    float *table = rand_floats(&rng, (size_t)vocab * dim, 1, 0);
    int32_t tokens[7] = {0, 49, 3, 3, 17, 25, 1};
    float out[7 * 12];
    cpu_embedding_forward(out, tokens, n, table, dim);
    for (int t = 0; t < n; t++)
        assert_memory_equal(out + t * dim, table + tokens[t] * dim, dim * sizeof(float));
    free(table);
}

static void test_rmsnorm(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 2);
    int n = 5, dim = 96;
    float eps = 1e-5f;
    float *x = rand_floats(&rng, (size_t)n * dim, 2.0, 0.3);
    float *w = rand_floats(&rng, dim, 0.1, 1.0);
    float *out = malloc((size_t)n * dim * sizeof *out);
    double *ref = alloc_doubles((size_t)n * dim);
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)x[t * dim + i] * x[t * dim + i];
        double r = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++) ref[t * dim + i] = w[i] * x[t * dim + i] * r;
    }
    cpu_rmsnorm_forward(out, x, w, n, dim, eps);
    assert_true(test_relative_error(out, ref, (size_t)n * dim) < TOL);
    cpu_rmsnorm_forward(x, x, w, n, dim, eps); /* in place */
    assert_true(test_relative_error(x, ref, (size_t)n * dim) < TOL);
    free(x), free(w), free(out), free(ref);
}

static void test_layernorm(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 3);
    int n = 4, dim = 80;
    float eps = 1e-5f;
    float *x = rand_floats(&rng, (size_t)n * dim, 1.5, 4.0); /* a large mean matters */
    float *w = rand_floats(&rng, dim, 0.1, 1.0);
    float *b = rand_floats(&rng, dim, 0.1, 0.0);
    float *out = malloc((size_t)n * dim * sizeof *out);
    double *ref = alloc_doubles((size_t)n * dim);
    for (int t = 0; t < n; t++) {
        double mu = 0, var = 0;
        for (int i = 0; i < dim; i++) mu += x[t * dim + i];
        mu /= dim;
        for (int i = 0; i < dim; i++) var += (x[t * dim + i] - mu) * (x[t * dim + i] - mu);
        var /= dim;
        for (int i = 0; i < dim; i++)
            ref[t * dim + i] = (x[t * dim + i] - mu) / sqrt(var + eps) * w[i] + b[i];
    }
    cpu_layernorm_forward(out, x, w, b, n, dim, eps);
    assert_true(test_relative_error(out, ref, (size_t)n * dim) < TOL);
    free(x), free(w), free(b), free(out), free(ref);
}

static void check_matmul(int n, int in_dim, int out_dim, bool with_bias, bool accumulate) {
    duel_rng rng;
    duel_rng_seed(&rng, 4 + (uint64_t)n * 7 + with_bias * 3 + accumulate);
    float *x = rand_floats(&rng, (size_t)n * in_dim, 1, 0);
    float *w = rand_floats(&rng, (size_t)out_dim * in_dim, 0.1, 0);
    float *b = with_bias ? rand_floats(&rng, out_dim, 0.5, 0) : NULL;
    float *out = rand_floats(&rng, (size_t)n * out_dim, 1, 0);
    double *ref = alloc_doubles((size_t)n * out_dim);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out_dim; o++) {
            double s = accumulate ? out[t * out_dim + o] : 0;
            if (b) s += b[o];
            for (int i = 0; i < in_dim; i++) s += (double)x[t * in_dim + i] * w[o * in_dim + i];
            ref[t * out_dim + o] = s;
        }
    cpu_matmul_stats stats = {0, 0};
    cpu_matmul_forward(out, x, w, b, n, in_dim, out_dim, accumulate, &stats);
    assert_true(test_relative_error(out, ref, (size_t)n * out_dim) < TOL);
    assert_int_equal(stats.flops, 2LL * n * in_dim * out_dim);
    assert_true(stats.seconds >= 0);
    free(x), free(w), free(b), free(out), free(ref);
}

static void test_matmul(void **state) {
    (void)state;
    for (int acc = 0; acc < 2; acc++)
        for (int bias = 0; bias < 2; bias++) {
            check_matmul(1, 70, 33, bias, acc);  /* the GEMV path */
            check_matmul(9, 70, 33, bias, acc);  /* the GEMM path */
        }
}

/* cpu_matmul_skinny_isa over columns [begin, end) against the float64 reference; columns
 * outside the range must keep their previous values. */
static void check_skinny(cpu_isa isa, int n, int in_dim, int out_dim, int begin, int end,
                         bool with_bias, bool accumulate) {
    duel_rng rng;
    duel_rng_seed(&rng, 100 + (uint64_t)n * 31 + (uint64_t)in_dim * 7 + (uint64_t)out_dim * 3 +
                            (uint64_t)isa * 2 + with_bias * 5 + accumulate);
    float *x = rand_floats(&rng, (size_t)n * in_dim, 1, 0);
    float *w = rand_floats(&rng, (size_t)out_dim * in_dim, 0.1, 0);
    float *b = with_bias ? rand_floats(&rng, out_dim, 0.5, 0) : NULL;
    float *out = rand_floats(&rng, (size_t)n * out_dim, 1, 0);
    float *before = malloc((size_t)n * out_dim * sizeof *before);
    assert_non_null(before);
    memcpy(before, out, (size_t)n * out_dim * sizeof *out);
    double *ref = alloc_doubles((size_t)n * out_dim);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out_dim; o++) {
            double s = accumulate ? out[t * out_dim + o] : 0;
            if (b) s += b[o];
            for (int i = 0; i < in_dim; i++) s += (double)x[t * in_dim + i] * w[o * in_dim + i];
            ref[t * out_dim + o] = s;
        }
    cpu_matmul_skinny_isa(isa, out, x, w, b, n, in_dim, out_dim, begin, end, accumulate);
    double *got_ref = alloc_doubles((size_t)n * (end - begin) + 1);
    float *got = malloc(((size_t)n * (end - begin) + 1) * sizeof *got);
    assert_non_null(got);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out_dim; o++) {
            size_t at = (size_t)t * out_dim + o;
            if (o < begin || o >= end) {
                if (memcmp(&out[at], &before[at], sizeof *out))
                    fail_msg("isa %d n %d %dx%d [%d,%d): column %d of row %d was written", isa,
                             n, out_dim, in_dim, begin, end, o, t);
            } else {
                got[(size_t)t * (end - begin) + (o - begin)] = out[at];
                got_ref[(size_t)t * (end - begin) + (o - begin)] = ref[at];
            }
        }
    double e = test_relative_error(got, got_ref, (size_t)n * (end - begin));
    if (!(e < TOL))
        fail_msg("isa %d n %d %dx%d [%d,%d) bias %d acc %d: relative error %g", isa, n, out_dim,
                 in_dim, begin, end, with_bias, accumulate, e);
    free(x), free(w), free(b), free(out), free(before), free(ref), free(got_ref), free(got);
}

/* The skinny kernel (batched decode's projections) for every instruction set this CPU has:
 * rows 1..16 (tiles of 1..4 input rows and their remainders), in_dim below, at and between
 * vector widths (masked tails), odd column ranges (the one-weight-row remainder), bias and the
 * fused residual add. */
static void test_matmul_skinny(void **state) {
    (void)state;
    const int in_dims[] = {1, 7, 8, 15, 16, 17, 33, 70, 576};
    cpu_isa best = cpu_isa_best();
    assert_true(best >= CPU_ISA_SCALAR && best <= CPU_ISA_AVX512);
    for (int isa = CPU_ISA_SCALAR; isa <= (int)best; isa++) {
        for (int n = 1; n <= 16; n++)
            check_skinny((cpu_isa)isa, n, 70, 37, 0, 37, n % 2, n % 3 == 0);
        for (size_t k = 0; k < sizeof in_dims / sizeof *in_dims; k++)
            for (int acc = 0; acc < 2; acc++) {
                check_skinny((cpu_isa)isa, 8, in_dims[k], 23, 0, 23, !acc, acc);
                check_skinny((cpu_isa)isa, 5, in_dims[k], 41, 3, 38, acc, acc);
            }
        /* a split as the model's threads use it: adjacent ranges cover all columns */
        check_skinny((cpu_isa)isa, 8, 96, 100, 0, 48, true, true);
        check_skinny((cpu_isa)isa, 8, 96, 100, 48, 100, true, true);
        check_skinny((cpu_isa)isa, 3, 96, 100, 10, 10, true, false); /* empty: writes nothing */
    }
}

/* cpu_sum_exp (the sampler's log-softmax normaliser) and cpu_log_sum_exp against exp in double:
 * lengths around the vector width, a -inf entry (a masked token), shift at the maximum. */
static void test_sum_exp(void **state) {
    (void)state;
    const int lens[] = {1, 7, 8, 9, 100, 49152};
    for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
        int n = lens[k];
        duel_rng rng;
        duel_rng_seed(&rng, 900 + (uint64_t)n);
        float *x = rand_floats(&rng, (size_t)n, 4, 0);
        if (n > 3) x[3] = -INFINITY;
        float max = -INFINITY;
        for (int i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
        double ref = 0;
        for (int i = 0; i < n; i++) ref += exp((double)x[i] - (double)max);
        double got = cpu_sum_exp(x, n, max);
        if (!(fabs(got - ref) < 1e-6 * ref)) fail_msg("n %d: %.9g, reference %.9g", n, got, ref);
        /* the log-softmax normaliser: max + log of the same sum, so that the log-probabilities
         * of the whole row add up to probability 1 */
        const double lse = cpu_log_sum_exp(x, n);
        if (!(fabs(lse - ((double)max + log(ref))) < 1e-6 * (1 + fabs(lse))))
            fail_msg("n %d: log sum exp %.9g, reference %.9g", n, lse, (double)max + log(ref));
        double total = 0;
        for (int i = 0; i < n; i++) total += exp((double)x[i] - lse);
        if (!(fabs(total - 1) < 1e-6)) fail_msg("n %d: probabilities sum to %.9g", n, total);
        free(x);
    }
}

/* Independent transcription of transformers' _compute_llama3_parameters for one frequency. */
static double ref_llama3(double f, double factor, double low, double high, double old_ctx) {
    double wavelen = 2 * M_PI / f;
    double scaled = wavelen > old_ctx / low ? f / factor : f;
    double smooth = (old_ctx / wavelen - low) / (high - low);
    double smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    bool medium = !(wavelen < old_ctx / high) && !(wavelen > old_ctx / low);
    return medium ? smoothed : scaled;
}

static void test_rope_inv_freq(void **state) {
    (void)state;
    double got[32];
    cpu_rope_inv_freq(got, 64, 10000.0, CPU_ROPE_SCALING_NONE, 1, 0, 0, 0);
    for (int i = 0; i < 32; i++) assert_true(fabs(got[i] - pow(10000.0, -2.0 * i / 64)) < 1e-15);
    cpu_rope_inv_freq(got, 64, 10000.0, CPU_ROPE_SCALING_LINEAR, 4.0, 0, 0, 0);
    for (int i = 0; i < 32; i++)
        assert_true(fabs(got[i] - pow(10000.0, -2.0 * i / 64) / 4.0) < 1e-15);
    /* Llama 3 scaling with a small original context so that all three bands occur. */
    cpu_rope_inv_freq(got, 64, 500000.0, CPU_ROPE_SCALING_LLAMA3, 8.0, 1.0, 4.0, 64);
    int low = 0, mid = 0, high = 0;
    for (int i = 0; i < 32; i++) {
        double base = pow(500000.0, -2.0 * i / 64);
        double want = ref_llama3(base, 8.0, 1.0, 4.0, 64);
        assert_true(fabs(got[i] - want) <= 1e-12 * want);
        if (got[i] == base) high++;
        else if (fabs(got[i] - base / 8.0) < 1e-18) low++;
        else mid++;
    }
    assert_true(low > 0 && mid > 0 && high > 0);
}

/* Rotates x (n tokens x heads x head_dim, rotary_dim leading dims of each head) in double. */
static void ref_rope(double *out, const float *x, int n, int heads, int head_dim, int rotary_dim,
                     const double *inv_freq, int start) {
    int half = rotary_dim / 2;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            const float *v = x + ((size_t)t * heads + h) * head_dim;
            double *o = out + ((size_t)t * heads + h) * head_dim;
            for (int d = 0; d < head_dim; d++) o[d] = v[d];
            for (int i = 0; i < half; i++) {
                double a = (start + t) * inv_freq[i];
                o[i] = v[i] * cos(a) - v[i + half] * sin(a);
                o[i + half] = v[i + half] * cos(a) + v[i] * sin(a);
            }
        }
}

static void check_rope(int rotary_dim, int scaling) {
    duel_rng rng;
    duel_rng_seed(&rng, 5 + rotary_dim);
    int n = 11, heads = 3, head_dim = 32, start = 37;
    double inv_freq[16];
    cpu_rope_inv_freq(inv_freq, rotary_dim, 10000.0, scaling, 8.0, 1.0, 4.0, 32);
    size_t count = (size_t)n * heads * head_dim;
    float *x = rand_floats(&rng, count, 1, 0);
    double *ref = alloc_doubles(count);
    ref_rope(ref, x, n, heads, head_dim, rotary_dim, inv_freq, start);
    float cos_t[11 * 16], sin_t[11 * 16];
    cpu_rope_tables(cos_t, sin_t, inv_freq, rotary_dim, start, n);
    cpu_rope_forward(x, n, heads * head_dim, heads, head_dim, rotary_dim, cos_t, sin_t);
    assert_true(test_relative_error(x, ref, count) < TOL);
    /* The pass-through dims are untouched bit for bit. */
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++)
            for (int d = rotary_dim; d < head_dim; d++) {
                size_t i = ((size_t)t * heads + h) * head_dim + d;
                assert_true(x[i] == (float)ref[i]);
            }
    free(x), free(ref);
}

static void test_rope(void **state) {
    (void)state;
    check_rope(32, CPU_ROPE_SCALING_NONE); /* full */
    check_rope(8, CPU_ROPE_SCALING_NONE);  /* partial (NeoX rotary_pct 0.25) */
    check_rope(32, CPU_ROPE_SCALING_LLAMA3);
}

/* Causal GQA attention in double over a contiguous cache [ctx][kv_heads][head_dim]. */
static void ref_attention(double *out, const float *q, const float *k, const float *v, int n,
                          int start, int heads, int kv_heads, int head_dim) {
    int group = heads / kv_heads, ctx = start + n;
    double *s = alloc_doubles((size_t)ctx);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            int g = h / group, valid = start + t + 1;
            const float *qh = q + ((size_t)t * heads + h) * head_dim;
            double max = -INFINITY, sum = 0;
            for (int p = 0; p < valid; p++) {
                const float *kp = k + ((size_t)p * kv_heads + g) * head_dim;
                double d = 0;
                for (int i = 0; i < head_dim; i++) d += (double)qh[i] * kp[i];
                s[p] = d / sqrt(head_dim);
                if (s[p] > max) max = s[p];
            }
            for (int p = 0; p < valid; p++) sum += s[p] = exp(s[p] - max);
            double *o = out + ((size_t)t * heads + h) * head_dim;
            for (int i = 0; i < head_dim; i++) {
                double acc = 0;
                for (int p = 0; p < valid; p++)
                    acc += s[p] / sum * v[((size_t)p * kv_heads + g) * head_dim + i];
                o[i] = acc;
            }
        }
    free(s);
}

static void check_attention(int n, int start, int heads, int kv_heads, int head_dim) {
    duel_rng rng;
    duel_rng_seed(&rng, 6 + (uint64_t)n * 31 + start);
    int ctx = start + n, q_stride = heads * head_dim, kv_stride = kv_heads * head_dim;
    float *q = rand_floats(&rng, (size_t)n * q_stride, 1.5, 0);
    float *k = rand_floats(&rng, (size_t)ctx * kv_stride, 1.5, 0);
    float *v = rand_floats(&rng, (size_t)ctx * kv_stride, 1, 0);
    float *out = malloc((size_t)n * q_stride * sizeof *out);
    double *ref = alloc_doubles((size_t)n * q_stride);
    float *scratch = malloc(cpu_attention_scratch_floats(n, ctx) * sizeof *scratch);
    ref_attention(ref, q, k, v, n, start, heads, kv_heads, head_dim);
    cpu_matmul_stats stats = {0, 0};
    cpu_attention_forward(out, q_stride, q, q_stride, k, v, kv_stride, n, start, heads, kv_heads,
                          head_dim, scratch, &stats);
    double e = test_relative_error(out, ref, (size_t)n * q_stride);
    if (!(e < TOL)) fail_msg("attention n=%d start=%d: relative error %g", n, start, e);
    assert_true(stats.flops > 0);
    free(q), free(k), free(v), free(out), free(ref), free(scratch);
}

static void test_attention(void **state) {
    (void)state;
    check_attention(1, 0, 4, 2, 16);   /* first token: attends to itself */
    check_attention(1, 40, 4, 2, 16);  /* decode over a cache */
    check_attention(13, 0, 4, 2, 16);  /* prefill, GQA */
    check_attention(9, 21, 6, 3, 8);   /* a chunk after a prefix */
    check_attention(150, 5, 4, 1, 16); /* several query blocks, multi-query */
    check_attention(20, 3, 4, 4, 32);  /* no GQA */
}

static void test_swiglu(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    int n = 3, ffn = 77;
    float *gu = rand_floats(&rng, (size_t)n * 2 * ffn, 3, 0);
    /* Saturating gates (exp overflow / underflow inside the vectorised exp). */
    gu[0] = -100.0f, gu[1] = 100.0f, gu[2] = -30.0f, gu[3] = 95.0f, gu[2 * ffn + 9] = -89.0f;
    float *out = malloc((size_t)n * ffn * sizeof *out);
    double *ref = alloc_doubles((size_t)n * ffn);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < ffn; i++) {
            double g = gu[t * 2 * ffn + i], u = gu[t * 2 * ffn + ffn + i];
            ref[t * ffn + i] = g / (1 + exp(-g)) * u;
        }
    cpu_swiglu_forward(out, gu, n, ffn);
    assert_true(test_relative_error(out, ref, (size_t)n * ffn) < TOL);
    free(gu), free(out), free(ref);
}

static void test_gelu(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 8);
    size_t n = 1003; /* not a multiple of the vector width */
    for (int tanh_form = 0; tanh_form < 2; tanh_form++) {
        float *x = rand_floats(&rng, n, 3, 0);
        x[0] = -12.0f, x[1] = 12.0f, x[2] = 0.0f, x[3] = -60.0f, x[4] = 60.0f, x[5] = 1e-4f;
        double *ref = alloc_doubles(n);
        for (size_t i = 0; i < n; i++) {
            double v = x[i];
            ref[i] = tanh_form ? 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))
                               : 0.5 * v * (1 + erf(v / sqrt(2.0)));
        }
        cpu_gelu_forward(x, n, tanh_form);
        assert_true(test_relative_error(x, ref, n) < TOL);
        for (size_t i = 0; i < n; i++) /* elementwise too: absolute error at float resolution */
            if (!(fabs(x[i] - ref[i]) < 1e-6 * (1 + fabs(ref[i]))))
                fail_msg("gelu(%s) element %zu: %g vs %g", tanh_form ? "tanh" : "erf", i, x[i],
                         ref[i]);
        free(x), free(ref);
    }
    /* The two forms differ measurably: a kernel that ignored the flag would fail above. */
    float a = 1.5f, b = 1.5f;
    cpu_gelu_forward(&a, 1, false);
    cpu_gelu_forward(&b, 1, true);
    assert_true(fabsf(a - b) > 1e-5f);
}

static void test_bf16_to_f32(void **state) {
    (void)state;
    /* 21 values from an odd byte offset (safetensors data need not be aligned). */
    unsigned char buf[1 + 2 * 21];
    float want[21];
    duel_rng rng;
    duel_rng_seed(&rng, 9);
    for (int i = 0; i < 21; i++) {
        uint16_t h = (uint16_t)duel_rng_below(&rng, 65536);
        if (i == 3) h = 0x7f80; /* +inf */
        if (i == 4) h = 0x8000; /* -0 */
        buf[1 + 2 * i] = (unsigned char)(h & 0xff);
        buf[2 + 2 * i] = (unsigned char)(h >> 8);
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&want[i], &bits, sizeof bits);
    }
    float out[21];
    cpu_bf16_to_f32(out, buf + 1, 21);
    assert_memory_equal(out, want, sizeof out); /* bit-exact, NaNs included */
}

static void test_add(void **state) {
    (void)state;
    float x[5] = {1, 2, 3, 4, 5}, y[5] = {0.5f, -2, 1, 0, 10};
    cpu_add_forward(x, y, 5);
    float want[5] = {1.5f, 0, 4, 4, 15};
    assert_memory_equal(x, want, sizeof x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding), cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm), cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_skinny),
        cmocka_unit_test(test_sum_exp),
        cmocka_unit_test(test_rope_inv_freq), cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention), cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_gelu), cmocka_unit_test(test_bf16_to_f32),
        cmocka_unit_test(test_add),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
