/* cpu_ops.c: the CPU backend's layer kernels (see cpu_ops.h). Projections go to OpenBLAS (sgemm
 * for several rows, sgemv for one), except batched decode's few-row products (the skinny kernel:
 * AVX-512 picked at run time, AVX2, scalar); decode attention's small strided products use our
 * own AVX2 loops; exp, GELU and bf16 widening have AVX2 paths with scalar fallbacks.
 * Reductions (norm statistics) accumulate in double: they are O(n*dim), cheap next to the GEMMs,
 * and keep the f32 forward pass within 1e-5 of a float64 reference. */
#include "cpu_ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "timer.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CPU_OPS_AVX2 1

/* exp of 8 floats (Cephes expf: range reduction by ln 2, degree-6 polynomial; about 1 ulp).
 * Inputs are clamped to [-87.33, 88]: below, the result is FLT_MIN instead of a denormal or 0,
 * which is far below anything softmax or SiLU can see next to their other terms. */
static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.0f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* y[r] = alpha * dot(W[r], x) (+ bias[r]) (+ y[r] when accumulate) for r < rows; W rows are ldw
 * floats apart. For decode attention's small strided products, where a BLAS call's overhead is
 * comparable to the work. (The weight GEMVs stay with OpenBLAS: its threads reach the machine's
 * full memory bandwidth, about twice what one core streams.) */
static void gemv_rows(float *y, const float *W, size_t ldw, const float *x, int rows, int cols,
                      float alpha, const float *bias, bool accumulate) {
    int r = 0;
#ifdef CPU_OPS_AVX2
    for (; r + 4 <= rows; r += 4) {
        const float *w0 = W + (size_t)r * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m256 xv = _mm256_loadu_ps(x + c);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), xv, a3);
        }
        float d[4] = {hsum_avx2(a0), hsum_avx2(a1), hsum_avx2(a2), hsum_avx2(a3)};
        for (; c < cols; c++) {
            d[0] += w0[c] * x[c];
            d[1] += w1[c] * x[c];
            d[2] += w2[c] * x[c];
            d[3] += w3[c] * x[c];
        }
        for (int i = 0; i < 4; i++) {
            float v = alpha * d[i];
            if (bias) v += bias[r + i];
            y[r + i] = accumulate ? y[r + i] + v : v;
        }
    }
#endif
    for (; r < rows; r++) {
        const float *w = W + (size_t)r * ldw;
        float d = 0;
        for (int c = 0; c < cols; c++) d += w[c] * x[c];
        float v = alpha * d;
        if (bias) v += bias[r];
        y[r] = accumulate ? y[r] + v : v;
    }
}

/* y[c] = sum over r < rows of s[r] * W[r][c], for c < cols; W rows are ldw floats apart. */
static void gemv_trans(float *y, const float *W, size_t ldw, const float *s, int rows, int cols) {
    memset(y, 0, (size_t)cols * sizeof *y);
    for (int r = 0; r < rows; r++) {
        const float *w = W + (size_t)r * ldw;
        float a = s[r];
        int c = 0;
#ifdef CPU_OPS_AVX2
        __m256 av = _mm256_set1_ps(a);
        for (; c + 8 <= cols; c += 8)
            _mm256_storeu_ps(y + c, _mm256_fmadd_ps(av, _mm256_loadu_ps(w + c),
                                                    _mm256_loadu_ps(y + c)));
#endif
        for (; c < cols; c++) y[c] += a * w[c];
    }
}

void cpu_embedding_forward(float *out, const int32_t *tokens, int n, const float *table,
                           int dim) {
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * dim, table + (size_t)tokens[i] * dim, (size_t)dim * sizeof *out);
}

void cpu_rmsnorm_forward(float *out, const float *in, const float *weight, int n, int dim,
                         float eps) {
    for (int t = 0; t < n; t++) {
        const float *x = in + (size_t)t * dim;
        float *y = out + (size_t)t * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)x[i] * x[i];
        float r = (float)(1.0 / sqrt(ss / dim + eps));
        for (int i = 0; i < dim; i++) y[i] = weight[i] * (x[i] * r);
    }
}

void cpu_layernorm_forward(float *out, const float *in, const float *weight, const float *bias,
                           int n, int dim, float eps) {
    for (int t = 0; t < n; t++) {
        const float *x = in + (size_t)t * dim;
        float *y = out + (size_t)t * dim;
        double sum = 0;
        for (int i = 0; i < dim; i++) sum += x[i];
        double mean = sum / dim;
        double var = 0;
        for (int i = 0; i < dim; i++) {
            double d = x[i] - mean;
            var += d * d;
        }
        var /= dim;
        float m = (float)mean;
        float r = (float)(1.0 / sqrt(var + eps));
        for (int i = 0; i < dim; i++) y[i] = (x[i] - m) * r * weight[i] + bias[i];
    }
}

void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int n,
                        int in_dim, int out_dim, bool accumulate, cpu_matmul_stats *stats) {
    double t0 = stats ? duel_time_seconds() : 0;
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias) {
        for (int t = 0; t < n; t++) {
            float *y = out + (size_t)t * out_dim;
            if (accumulate)
                for (int i = 0; i < out_dim; i++) y[i] += bias[i];
            else
                memcpy(y, bias, (size_t)out_dim * sizeof *y);
        }
        beta = 1.0f;
    }
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out_dim, in_dim, 1.0f, weight, in_dim, in, 1,
                    beta, out, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out_dim, in_dim, 1.0f, in, in_dim,
                    weight, in_dim, beta, out, out_dim);
    if (stats) {
        stats->seconds += duel_time_seconds() - t0;
        stats->flops += 2LL * n * in_dim * out_dim;
    }
}

void cpu_rope_inv_freq(double *inv_freq, int rotary_dim, double theta, int scaling, double factor,
                       double low_freq_factor, double high_freq_factor,
                       int original_max_positions) {
    const double two_pi = 6.283185307179586476925286766559;
    for (int i = 0; i < rotary_dim / 2; i++) {
        double f = pow(theta, -(2.0 * i) / rotary_dim);
        if (scaling == CPU_ROPE_SCALING_LINEAR) {
            f /= factor;
        } else if (scaling == CPU_ROPE_SCALING_LLAMA3) {
            double wavelen = two_pi / f;
            double low_freq_wavelen = original_max_positions / low_freq_factor;
            double high_freq_wavelen = original_max_positions / high_freq_factor;
            if (wavelen > low_freq_wavelen) {
                f /= factor;
            } else if (wavelen >= high_freq_wavelen) {
                double smooth = (original_max_positions / wavelen - low_freq_factor) /
                                (high_freq_factor - low_freq_factor);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

void cpu_rope_tables(float *cos_out, float *sin_out, const double *inv_freq, int rotary_dim,
                     int start_pos, int n) {
    int half = rotary_dim / 2;
    for (int t = 0; t < n; t++) {
        double pos = (double)start_pos + t;
        for (int i = 0; i < half; i++) {
            double a = pos * inv_freq[i];
            cos_out[(size_t)t * half + i] = (float)cos(a);
            sin_out[(size_t)t * half + i] = (float)sin(a);
        }
    }
}

void cpu_rope_forward(float *x, int n, int stride, int num_heads, int head_dim, int rotary_dim,
                      const float *cos_table, const float *sin_table) {
    int half = rotary_dim / 2;
    for (int t = 0; t < n; t++) {
        const float *c = cos_table + (size_t)t * half;
        const float *s = sin_table + (size_t)t * half;
        for (int h = 0; h < num_heads; h++) {
            float *v = x + (size_t)t * stride + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

size_t cpu_attention_scratch_floats(int n, int ctx) {
    int rows = n < CPU_ATTENTION_BLOCK_ROWS ? n : CPU_ATTENTION_BLOCK_ROWS;
    return (size_t)rows * (size_t)ctx;
}

/* Softmax of row[0..valid) in place; row[valid..len) set to 0 (the causal mask). */
static void softmax_causal_row(float *row, int valid, int len) {
    float max = row[0];
    for (int j = 1; j < valid; j++) max = row[j] > max ? row[j] : max;
    float sum = 0;
    int j = 0;
#ifdef CPU_OPS_AVX2
    __m256 vmax = _mm256_set1_ps(max), vsum = _mm256_setzero_ps();
    for (; j + 8 <= valid; j += 8) {
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmax));
        _mm256_storeu_ps(row + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    sum = hsum_avx2(vsum);
#endif
    for (; j < valid; j++) {
        row[j] = expf(row[j] - max);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < valid; j++) row[j] *= inv;
    for (int j = valid; j < len; j++) row[j] = 0;
}

void cpu_attention_forward(float *out, int out_stride, const float *q, int q_stride,
                           const float *k, const float *v, int kv_stride, int n, int start_pos,
                           int num_heads, int num_kv_heads, int head_dim, float *scratch,
                           cpu_matmul_stats *stats) {
    int group = num_heads / num_kv_heads;
    float scale = 1.0f / sqrtf((float)head_dim);
    double blas_seconds = 0;
    long long flops = 0;
    for (int h = 0; h < num_heads; h++) {
        const float *kh = k + (size_t)(h / group) * head_dim;
        const float *vh = v + (size_t)(h / group) * head_dim;
        for (int r0 = 0; r0 < n; r0 += CPU_ATTENTION_BLOCK_ROWS) {
            int rows = n - r0 < CPU_ATTENTION_BLOCK_ROWS ? n - r0 : CPU_ATTENTION_BLOCK_ROWS;
            int ctx = start_pos + r0 + rows; /* keys the block's last row sees */
            const float *qh = q + (size_t)r0 * q_stride + (size_t)h * head_dim;
            float *oh = out + (size_t)r0 * out_stride + (size_t)h * head_dim;
            double t0 = stats ? duel_time_seconds() : 0;
            if (rows == 1)
                gemv_rows(scratch, kh, (size_t)kv_stride, qh, ctx, head_dim, scale, NULL, false);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, ctx, head_dim, scale,
                            qh, q_stride, kh, kv_stride, 0.0f, scratch, ctx);
            double t1 = stats ? duel_time_seconds() : 0;
            for (int i = 0; i < rows; i++)
                softmax_causal_row(scratch + (size_t)i * ctx, start_pos + r0 + i + 1, ctx);
            double t2 = stats ? duel_time_seconds() : 0;
            if (rows == 1)
                gemv_trans(oh, vh, (size_t)kv_stride, scratch, ctx, head_dim);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, ctx, 1.0f,
                            scratch, ctx, vh, kv_stride, 0.0f, oh, out_stride);
            if (stats) blas_seconds += (t1 - t0) + (duel_time_seconds() - t2);
            flops += 4LL * rows * ctx * head_dim;
        }
    }
    if (stats) {
        stats->seconds += blas_seconds;
        stats->flops += flops;
    }
}

void cpu_swiglu_forward(float *out, const float *gate_up, int n, int ffn) {
    for (int t = 0; t < n; t++) {
        const float *g = gate_up + (size_t)t * 2 * ffn;
        const float *u = g + ffn;
        float *y = out + (size_t)t * ffn;
        int i = 0;
#ifdef CPU_OPS_AVX2
        const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
        for (; i + 8 <= ffn; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i);
            __m256 den = _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(zero, gv)));
            _mm256_storeu_ps(y + i, _mm256_div_ps(_mm256_mul_ps(gv, _mm256_loadu_ps(u + i)), den));
        }
#endif
        for (; i < ffn; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

#ifdef CPU_OPS_AVX2
/* Exact GELU x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)) with erf from Abramowitz & Stegun 7.1.26
 * (absolute error 1.5e-7, at float resolution): for z >= 0, 1 - erf(z) = poly(t) exp(-z^2)
 * with t = 1 / (1 + p z); for z < 0 the same term is 1 + erf(z) directly, by symmetry. */
static inline __m256 gelu_erf_avx2(__m256 x) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 az = _mm256_andnot_ps(sign_mask, z);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                             _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, _mm256_set1_ps(1.0f)));
    __m256 poly = _mm256_set1_ps(1.061405429f);
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
    poly = _mm256_mul_ps(poly, t);
    __m256 tail = _mm256_mul_ps(poly, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(),
                                                               _mm256_mul_ps(az, az))));
    /* 1 + erf(z): 2 - tail for z >= 0, tail for z < 0. */
    __m256 negative = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
    __m256 one_plus_erf =
        _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), tail), tail, negative);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), one_plus_erf);
}

/* gelu_new: x/2 (1 + tanh(y)) = x / (1 + exp(-2y)), y = sqrt(2/pi) (x + 0.044715 x^3). */
static inline __m256 gelu_tanh_avx2(__m256 x) {
    __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    __m256 y = _mm256_mul_ps(_mm256_set1_ps(-2.0f * 0.7978845608028654f),
                             _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_avx2(y)));
}
#endif

void cpu_gelu_forward(float *x, size_t count, bool tanh_approx) {
    size_t i = 0;
    if (tanh_approx) {
#ifdef CPU_OPS_AVX2
        for (; i + 8 <= count; i += 8)
            _mm256_storeu_ps(x + i, gelu_tanh_avx2(_mm256_loadu_ps(x + i)));
#endif
        const float c = 0.7978845608028654f; /* sqrt(2/pi) */
        for (; i < count; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
        }
    } else {
#ifdef CPU_OPS_AVX2
        for (; i + 8 <= count; i += 8)
            _mm256_storeu_ps(x + i, gelu_erf_avx2(_mm256_loadu_ps(x + i)));
#endif
        const float r = 0.7071067811865476f; /* 1/sqrt(2) */
        for (; i < count; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * r));
    }
}

void cpu_add_forward(float *x, const float *y, size_t count) {
    for (size_t i = 0; i < count; i++) x[i] += y[i];
}

void cpu_bf16_to_f32(float *out, const void *src, size_t n) {
    const unsigned char *p = src;
    size_t i = 0;
#ifdef CPU_OPS_AVX2
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
#endif
    for (; i < n; i++) {
        uint32_t bits = ((uint32_t)p[2 * i] << 16) | ((uint32_t)p[2 * i + 1] << 24);
        memcpy(out + i, &bits, sizeof bits);
    }
}

/* ---- skinny products: a few rows against a big weight (batched decode) -------------------- */

cpu_features cpu_features_detect(void) {
    cpu_features f = {false, false, false, false};
#if defined(CPU_OPS_AVX2) && defined(__GNUC__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
    f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
#endif
    return f;
}

cpu_isa cpu_isa_best(void) {
    cpu_features f = cpu_features_detect();
    return f.avx512 ? CPU_ISA_AVX512 : f.avx2 ? CPU_ISA_AVX2 : CPU_ISA_SCALAR;
}

/* The tiles below compute RW (1 or 4) consecutive weight rows against TN input rows: every
 * vector step loads RW weight vectors and TN input vectors for RW * TN FMAs, all accumulators in
 * registers; the in_dim tail runs masked, so every column sees the same vector code. RW and TN are
 * literal constants at each call site, so each call compiles to its own fully unrolled tile. A
 * row's result is stored as bias + dot (+ out when accumulate). */
#define SKINNY_ALWAYS_INLINE static inline __attribute__((always_inline))

static inline void skinny_store(float *y, const float *bias, bool accumulate, float dot) {
    float v = bias ? dot + *bias : dot;
    *y = accumulate ? *y + v : v;
}

#ifdef CPU_OPS_AVX2
/* Weight rows ahead that the AVX-512 tile prefetches (the next run of 4): a run of 4 rows is a
 * few KiB, too short for the hardware prefetcher to ramp up on; measured on the EPYC host,
 * SmolLM2-135M shapes, 8 rows, one thread: 33-37 ms per step with it, 48-58 ms without. */
#define SKINNY_PF 4
#define CPU_SKINNY_TN_AVX2 2   /* input rows per AVX2 tile: 4 x 2 accumulators + 4 weights */
#define CPU_SKINNY_TN_AVX512 4 /* input rows per AVX-512 tile: 4 x 4 accumulators + 4 weights */

/* Sums of four vectors: lane r of the result is the sum of a[r]'s lanes. */
static inline __m128 hsum4_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

SKINNY_ALWAYS_INLINE void skinny_tile_avx2(float *out, size_t ldo, const float *in, size_t ldi,
                                           const float *w, size_t ldw, const float *bias,
                                           bool accumulate, int cols, const int RW,
                                           const int TN) {
    __m256 acc[4][CPU_SKINNY_TN_AVX2];
    _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
        _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) acc[r][t] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 wv[4];
        _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++) {
            wv[r] = _mm256_loadu_ps(w + r * ldw + c);
            if (RW == 4) _mm_prefetch((const char *)(w + (SKINNY_PF + r) * ldw + c), _MM_HINT_T0);
        }
        _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) {
            __m256 x = _mm256_loadu_ps(in + t * ldi + c);
            _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
                acc[r][t] = _mm256_fmadd_ps(wv[r], x, acc[r][t]);
        }
    }
    if (c < cols) {
        __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - c),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 wv[4];
        _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
            wv[r] = _mm256_maskload_ps(w + r * ldw + c, mask);
        _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) {
            __m256 x = _mm256_maskload_ps(in + t * ldi + c, mask);
            _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
                acc[r][t] = _mm256_fmadd_ps(wv[r], x, acc[r][t]);
        }
    }
    _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) {
        float *y = out + t * ldo;
        if (RW == 4) {
            __m128 v = hsum4_avx2(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
            if (bias) v = _mm_add_ps(v, _mm_loadu_ps(bias));
            if (accumulate) v = _mm_add_ps(v, _mm_loadu_ps(y));
            _mm_storeu_ps(y, v);
        } else {
            _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
                skinny_store(y + r, bias ? bias + r : NULL, accumulate, hsum_avx2(acc[r][t]));
        }
    }
}

static void skinny_avx2(float *out, const float *in, const float *weight, const float *bias,
                        int n, int in_dim, int out_dim, int begin, int end, bool accumulate) {
    size_t ldi = (size_t)in_dim, ldo = (size_t)out_dim;
    for (int o = begin; o < end;) {
        int rw = end - o >= 4 ? 4 : 1;
        const float *w = weight + (size_t)o * in_dim, *b = bias ? bias + o : NULL;
        for (int t = 0; t < n; t += CPU_SKINNY_TN_AVX2) {
            const float *x = in + (size_t)t * ldi;
            float *y = out + (size_t)t * ldo + o;
            bool two = n - t >= 2;
            if (rw == 4 && two) skinny_tile_avx2(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 4, 2);
            else if (rw == 4) skinny_tile_avx2(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 4, 1);
            else if (two) skinny_tile_avx2(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 1, 2);
            else skinny_tile_avx2(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 1, 1);
        }
        o += rw;
    }
}

#define CPU_AVX512_TARGET __attribute__((target("avx512f,avx2,fma")))

/* Sums of four vectors: lane r of the result is the sum of a[r]'s lanes. */
CPU_AVX512_TARGET static inline __m128 hsum4_avx512(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    /* 256-bit halves: [a0 lo + a0 hi | a1 lo + a1 hi], the same for a2, a3 */
    __m512 b01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xee));
    __m512 b23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xee));
    /* 128-bit lane r: four partial sums of a[r] */
    __m512 c = _mm512_add_ps(_mm512_shuffle_f32x4(b01, b23, 0x88), _mm512_shuffle_f32x4(b01, b23, 0xdd));
    /* within each 128-bit lane: every element becomes the lane's sum; then lane r's first */
    c = _mm512_add_ps(c, _mm512_permute_ps(c, 0xb1));
    c = _mm512_add_ps(c, _mm512_permute_ps(c, 0x4e));
    __m512i first = _mm512_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(first, c));
}

CPU_AVX512_TARGET SKINNY_ALWAYS_INLINE void skinny_tile_avx512(
    float *out, size_t ldo, const float *in, size_t ldi, const float *w, size_t ldw,
    const float *bias, bool accumulate, int cols, const int RW, const int TN) {
    __m512 acc[4][CPU_SKINNY_TN_AVX512];
    _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
        _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) acc[r][t] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 16 <= cols; c += 16) {
        __m512 wv[4];
        _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++) {
            wv[r] = _mm512_loadu_ps(w + r * ldw + c);
            if (RW == 4) _mm_prefetch((const char *)(w + (SKINNY_PF + r) * ldw + c), _MM_HINT_T0);
        }
        _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) {
            __m512 x = _mm512_loadu_ps(in + t * ldi + c);
            _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], x, acc[r][t]);
        }
    }
    if (c < cols) {
        __mmask16 mask = (__mmask16)((1u << (cols - c)) - 1);
        __m512 wv[4];
        _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
            wv[r] = _mm512_maskz_loadu_ps(mask, w + r * ldw + c);
        _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) {
            __m512 x = _mm512_maskz_loadu_ps(mask, in + t * ldi + c);
            _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
                acc[r][t] = _mm512_fmadd_ps(wv[r], x, acc[r][t]);
        }
    }
    _Pragma("GCC unroll 4") for (int t = 0; t < TN; t++) {
        float *y = out + t * ldo;
        if (RW == 4) {
            __m128 v = hsum4_avx512(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
            if (bias) v = _mm_add_ps(v, _mm_loadu_ps(bias));
            if (accumulate) v = _mm_add_ps(v, _mm_loadu_ps(y));
            _mm_storeu_ps(y, v);
        } else {
            _Pragma("GCC unroll 4") for (int r = 0; r < RW; r++)
                skinny_store(y + r, bias ? bias + r : NULL, accumulate,
                             _mm512_reduce_add_ps(acc[r][t]));
        }
    }
}

CPU_AVX512_TARGET static void skinny_avx512(float *out, const float *in, const float *weight,
                                            const float *bias, int n, int in_dim, int out_dim,
                                            int begin, int end, bool accumulate) {
    size_t ldi = (size_t)in_dim, ldo = (size_t)out_dim;
    for (int o = begin; o < end;) {
        int rw = end - o >= 4 ? 4 : 1;
        const float *w = weight + (size_t)o * in_dim, *b = bias ? bias + o : NULL;
        for (int t = 0; t < n; t += CPU_SKINNY_TN_AVX512) {
            const float *x = in + (size_t)t * ldi;
            float *y = out + (size_t)t * ldo + o;
            int tn = n - t < CPU_SKINNY_TN_AVX512 ? n - t : CPU_SKINNY_TN_AVX512;
            if (rw == 4) {
                switch (tn) {
                case 4: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 4, 4); break;
                case 3: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 4, 3); break;
                case 2: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 4, 2); break;
                default: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 4, 1);
                }
            } else {
                switch (tn) {
                case 4: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 1, 4); break;
                case 3: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 1, 3); break;
                case 2: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 1, 2); break;
                default: skinny_tile_avx512(y, ldo, x, ldi, w, ldi, b, accumulate, in_dim, 1, 1);
                }
            }
        }
        o += rw;
    }
}
#endif

static void skinny_scalar(float *out, const float *in, const float *weight, const float *bias,
                          int n, int in_dim, int out_dim, int begin, int end, bool accumulate) {
    for (int o = begin; o < end; o++) {
        const float *w = weight + (size_t)o * in_dim;
        for (int t = 0; t < n; t++) {
            const float *x = in + (size_t)t * in_dim;
            float d = 0;
            for (int i = 0; i < in_dim; i++) d += w[i] * x[i];
            skinny_store(out + (size_t)t * out_dim + o, bias ? bias + o : NULL, accumulate, d);
        }
    }
}

void cpu_matmul_skinny_isa(cpu_isa isa, float *out, const float *in, const float *weight,
                           const float *bias, int n, int in_dim, int out_dim, int out_begin,
                           int out_end, bool accumulate) {
    if (n < 1 || out_begin >= out_end) return;
#ifdef CPU_OPS_AVX2
    if (isa == CPU_ISA_AVX512) {
        skinny_avx512(out, in, weight, bias, n, in_dim, out_dim, out_begin, out_end, accumulate);
        return;
    }
    if (isa == CPU_ISA_AVX2) {
        skinny_avx2(out, in, weight, bias, n, in_dim, out_dim, out_begin, out_end, accumulate);
        return;
    }
#else
    (void)isa;
#endif
    skinny_scalar(out, in, weight, bias, n, in_dim, out_dim, out_begin, out_end, accumulate);
}

double cpu_sum_exp(const float *x, int n, float shift) {
    int i = 0;
    double total = 0.0;
#ifdef CPU_OPS_AVX2
    __m256 vs = _mm256_set1_ps(shift);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(a0, a1));
    total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
#endif
    for (; i < n; i++) total += exp((double)x[i] - (double)shift);
    return total;
}

double cpu_log_sum_exp(const float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return (double)mx + log(cpu_sum_exp(x, n, mx));
}
