/* matmul_q8.c: products with packed q8 weights (weight_format.h layout: per group of 16 rows and
 * block of 32 inputs, 8 vectors of [16 lanes][4 quants] stored as q + 128, and 16 f16 scales).
 * The input rows are quantised like the weights (matmul_q8_prepare: per block of 32, scale
 * d = max|x| / 127, x_q = x / d rounded to nearest even), so each block's dot product is exact in
 * integers:  sum_k (w_q + 128) x_q - 128 sum_k x_q = sum_k w_q x_q,  then scaled by d_w d_x and
 * summed over blocks in f32. The unsigned weights are vpdpbusd's first operand; each input quad
 * is broadcast as its signed second operand, so a product needs no horizontal sums. Kernels:
 * scalar (the reference), AVX2 (vpdpbusd emulated exactly with 16-bit multiplies), AVX-512 VNNI.
 * Prepared input: int8 quants [n][cols_padded], then f32 scales [n][blocks], then int32
 * corrections 128 * sum(x_q) [n][blocks]. */
#include <math.h>
#include <string.h>

#include "weight_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MATMUL_Q8_X86 1
#endif

#define Q8_TILE_AVX2 2     /* rows per AVX2 tile (16 ymm registers) */
#define Q8_TILE_AVX512 16  /* rows per AVX-512 tile: 8 weight vectors + 16 sums of 32 zmm */
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define Q8_QUADS (WEIGHT_Q8_BLOCK / 4) /* 32-bit lanes of quants per block and row */

int matmul_q8_tile_rows(weight_kernel k) {
    switch (k) {
    case WEIGHT_KERNEL_AVX2: return Q8_TILE_AVX2;
    case WEIGHT_KERNEL_AVX512_VNNI: return Q8_TILE_AVX512;
    default: return 1;
    }
}

int matmul_q8_tile_groups(weight_kernel k) {
    (void)k;
    return 1;
}

typedef struct q8_input {
    const int8_t *quants;  /* [n][cols_padded] */
    const float *scales;   /* [n][blocks] */
    const int32_t *corr;   /* [n][blocks]: 128 * sum of the block's quants */
} q8_input;

static size_t quant_bytes(const weight_matrix *w, int n) {
    return weight_align_up((size_t)n * (size_t)w->cols_padded);
}

static size_t scale_bytes(const weight_matrix *w, int n) {
    return weight_align_up((size_t)n * (size_t)(w->cols_padded / WEIGHT_Q8_BLOCK) * 4);
}

size_t matmul_q8_prepared_bytes(const weight_matrix *w, int n) {
    return quant_bytes(w, n) + 2 * scale_bytes(w, n);
}

static q8_input q8_view(const weight_matrix *w, int n, const void *prepared) {
    const unsigned char *p = prepared;
    q8_input in = {(const int8_t *)p, (const float *)(p + quant_bytes(w, n)),
                   (const int32_t *)(p + quant_bytes(w, n) + scale_bytes(w, n))};
    return in;
}

/* One block of 32 inputs (zero-padded by the caller): quants, scale, 128 * sum. Rounding is to
 * nearest even (nearbyintf in the default mode, _mm256_round_ps in the vector path), so both
 * paths give the same integers. */
static void quantize_block(const float *x, int8_t *q, float *scale, int32_t *corr) {
    int i = 0;
    float amax = 0.0f;
#ifdef MATMUL_Q8_X86
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (; i < WEIGHT_Q8_BLOCK; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), absmask));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    amax = _mm_cvtss_f32(h);
#else
    for (; i < WEIGHT_Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(x[i]));
#endif
    /* A NaN input (which max may drop) must not become a finite product. */
    for (int j = 0; j < WEIGHT_Q8_BLOCK; j++)
        if (isnan(x[j])) amax = x[j];
    const float d = amax / 127.0f;
    *scale = d;
    if (!(d != 0.0f && isfinite(d))) { /* zeros, or a NaN/inf the scale carries to the output */
        memset(q, 0, WEIGHT_Q8_BLOCK);
        *corr = 0;
        return;
    }
    const float id = 1.0f / d;
    int32_t sum = 0;
    i = 0;
#ifdef MATMUL_Q8_X86
    const __m256 vid = _mm256_set1_ps(id);
    __m256i s = _mm256_setzero_si256();
    for (; i < WEIGHT_Q8_BLOCK; i += 8) {
        __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vid),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i qi = _mm256_cvtps_epi32(v); /* exact: |v| <= 127 or 0 for id = 0 */
        s = _mm256_add_epi32(s, qi);
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
        _mm_storel_epi64((__m128i *)(q + i), _mm_packs_epi16(p16, p16));
    }
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    sum = _mm_cvtsi128_si32(t);
#else
    for (; i < WEIGHT_Q8_BLOCK; i++) {
        int v = (int)nearbyintf(x[i] * id);
        q[i] = (int8_t)v;
        sum += v;
    }
#endif
    *corr = 128 * sum;
}

void matmul_q8_prepare(const weight_matrix *w, const float *in, int n, size_t in_stride,
                       void *prepared) {
    const int B = WEIGHT_Q8_BLOCK, blocks = w->cols_padded / B, K = w->cols;
    q8_input v = q8_view(w, n, prepared);
    int8_t *quants = (int8_t *)v.quants;
    float *scales = (float *)v.scales;
    int32_t *corr = (int32_t *)v.corr;
    float block[WEIGHT_Q8_BLOCK];
    for (int t = 0; t < n; t++) {
        const float *x = in + (size_t)t * in_stride;
        for (int b = 0; b < blocks; b++) {
            const float *src = x + (size_t)b * B;
            if (K - b * B < B) { /* the last, partial block: zero-padded */
                memset(block, 0, sizeof block);
                memcpy(block, src, (size_t)(K - b * B) * sizeof *block);
                src = block;
            }
            size_t at = (size_t)t * blocks + b;
            quantize_block(src, quants + (size_t)t * w->cols_padded + (size_t)b * B, scales + at,
                           corr + at);
        }
    }
}

/* The reference: integer dot per block and lane, scaled in f32, blocks summed in order. */
static void tile_scalar(const weight_tile_args *a) {
    const weight_matrix *w = a->w;
    const int G = WEIGHT_GROUP_ROWS, B = WEIGHT_Q8_BLOCK, blocks = w->cols_padded / B;
    q8_input in = q8_view(w, a->n, a->prepared);
    const uint8_t *wg = w->q8 + (size_t)a->group * blocks * B * G;
    const uint16_t *sg = w->q8_scales + (size_t)a->group * blocks * G;
    float sums[WEIGHT_GROUP_ROWS];
    for (int r = 0; r < a->rows; r++) {
        int t = a->t0 + r;
        const int8_t *xq = in.quants + (size_t)t * w->cols_padded;
        for (int lane = 0; lane < a->lanes; lane++) {
            float acc = 0;
            for (int b = 0; b < blocks; b++) {
                int32_t dot = 0;
                for (int j = 0; j < B; j++)
                    dot += (int32_t)wg[(size_t)b * B * G + (size_t)(j / 4) * G * 4 +
                                       (size_t)lane * 4 + (j % 4)] *
                           xq[b * B + j];
                dot -= in.corr[(size_t)t * blocks + b];
                float dw = weight_f16_to_f32(sg[(size_t)b * G + lane]);
                acc += (float)dot * in.scales[(size_t)t * blocks + b] * dw;
            }
            sums[lane] = acc;
        }
        weight_store_lanes(a, r, sums);
    }
}

#ifdef MATMUL_Q8_X86
/* vpdpbusd in AVX2: acc + sum over the 4 bytes of each 32-bit lane of a (unsigned) times b
 * (signed), exact: the bytes are split into 16-bit halves, whose products and pair sums fit. */
ALWAYS_INLINE __m256i dpbusd_avx2(__m256i acc, __m256i a_even, __m256i a_odd, __m256i b_even,
                                  __m256i b_odd) {
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(a_even, b_even),
                                                  _mm256_madd_epi16(a_odd, b_odd)));
}

ALWAYS_INLINE void tile_avx2_rt(const weight_tile_args *a, const int RT) {
    const weight_matrix *w = a->w;
    const int G = WEIGHT_GROUP_ROWS, B = WEIGHT_Q8_BLOCK, blocks = w->cols_padded / B;
    q8_input in = q8_view(w, a->n, a->prepared);
    const uint8_t *wg = w->q8 + (size_t)a->group * blocks * B * G;
    const uint16_t *sg = w->q8_scales + (size_t)a->group * blocks * G;
    const __m256i low_bytes = _mm256_set1_epi16(0x00ff);
    __m256 acc[Q8_TILE_AVX2][2];
    _Pragma("GCC unroll 2") for (int r = 0; r < RT; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        __m256i s[Q8_TILE_AVX2][2];
        _Pragma("GCC unroll 2") for (int r = 0; r < RT; r++) s[r][0] = s[r][1] = _mm256_setzero_si256();
        for (int q = 0; q < Q8_QUADS; q++) {
            const uint8_t *wq = wg + ((size_t)b * Q8_QUADS + q) * G * 4;
            __m256i w0 = _mm256_load_si256((const __m256i *)wq);
            __m256i w1 = _mm256_load_si256((const __m256i *)(wq + 32));
            __m256i w0e = _mm256_and_si256(w0, low_bytes), w0o = _mm256_srli_epi16(w0, 8);
            __m256i w1e = _mm256_and_si256(w1, low_bytes), w1o = _mm256_srli_epi16(w1, 8);
            _Pragma("GCC unroll 2") for (int r = 0; r < RT; r++) {
                int32_t quad;
                memcpy(&quad, in.quants + (size_t)(a->t0 + r) * w->cols_padded + b * B + q * 4, 4);
                __m256i x = _mm256_set1_epi32(quad);
                __m256i xe = _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8);
                __m256i xo = _mm256_srai_epi16(x, 8);
                s[r][0] = dpbusd_avx2(s[r][0], w0e, w0o, xe, xo);
                s[r][1] = dpbusd_avx2(s[r][1], w1e, w1o, xe, xo);
            }
        }
        __m256 dw0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sg + (size_t)b * G)));
        __m256 dw1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sg + (size_t)b * G + 8)));
        _Pragma("GCC unroll 2") for (int r = 0; r < RT; r++) {
            size_t at = (size_t)(a->t0 + r) * blocks + b;
            __m256i c = _mm256_set1_epi32(in.corr[at]);
            __m256 dx = _mm256_set1_ps(in.scales[at]);
            __m256 f0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s[r][0], c)), dx);
            __m256 f1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s[r][1], c)), dx);
            acc[r][0] = _mm256_fmadd_ps(f0, dw0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(f1, dw1, acc[r][1]);
        }
    }
    weight_store_rows_avx2(a, acc, RT);
}

static void tile_avx2(const weight_tile_args *a) {
    if (a->rows == 2) tile_avx2_rt(a, 2);
    else tile_avx2_rt(a, 1);
}

#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")))

/* AVX-512 VNNI: per block, the group's 8 weight vectors are loaded once and used by every row
 * of the tile; each row's block sum runs in two chains of 4 vpdpbusd. */
TARGET_VNNI ALWAYS_INLINE void tile_vnni_rt(const weight_tile_args *a, const int RT) {
    const weight_matrix *w = a->w;
    const int G = WEIGHT_GROUP_ROWS, B = WEIGHT_Q8_BLOCK, blocks = w->cols_padded / B;
    q8_input in = q8_view(w, a->n, a->prepared);
    const uint8_t *wg = w->q8 + (size_t)a->group * blocks * B * G;
    const uint16_t *sg = w->q8_scales + (size_t)a->group * blocks * G;
    const int32_t *xq = (const int32_t *)(in.quants + (size_t)a->t0 * w->cols_padded);
    const size_t ldq = (size_t)w->cols_padded / 4;
    const float *dx = in.scales + (size_t)a->t0 * blocks;
    const int32_t *corr = in.corr + (size_t)a->t0 * blocks;
    __m512 acc[Q8_TILE_AVX512];
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        const __m512i *wb = (const __m512i *)(wg + (size_t)b * B * G);
        __m512i wv[Q8_QUADS];
        _Pragma("GCC unroll 8") for (int q = 0; q < Q8_QUADS; q++) wv[q] = _mm512_load_si512(wb + q);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sg + (size_t)b * G)));
        _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++) {
            const int32_t *xr = xq + (size_t)r * ldq + (size_t)b * Q8_QUADS;
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], _mm512_set1_epi32(xr[0]));
            __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[1], _mm512_set1_epi32(xr[1]));
            s0 = _mm512_dpbusd_epi32(s0, wv[2], _mm512_set1_epi32(xr[2]));
            s1 = _mm512_dpbusd_epi32(s1, wv[3], _mm512_set1_epi32(xr[3]));
            s0 = _mm512_dpbusd_epi32(s0, wv[4], _mm512_set1_epi32(xr[4]));
            s1 = _mm512_dpbusd_epi32(s1, wv[5], _mm512_set1_epi32(xr[5]));
            s0 = _mm512_dpbusd_epi32(s0, wv[6], _mm512_set1_epi32(xr[6]));
            s1 = _mm512_dpbusd_epi32(s1, wv[7], _mm512_set1_epi32(xr[7]));
            __m512i s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1),
                                         _mm512_set1_epi32(corr[(size_t)r * blocks + b]));
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(s),
                                     _mm512_set1_ps(dx[(size_t)r * blocks + b]));
            acc[r] = _mm512_fmadd_ps(f, dw, acc[r]);
        }
    }
    __mmask16 m = (__mmask16)((1u << a->lanes) - 1);
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++) {
        __m512 v = acc[r];
        float *y = a->out + (size_t)r * a->ldo;
        if (a->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, a->bias));
        if (a->accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, y));
        _mm512_mask_storeu_ps(y, m, v);
    }
}

TARGET_VNNI static void tile_vnni(const weight_tile_args *a) {
    switch (a->rows) {
    case 16: tile_vnni_rt(a, 16); break;
    case 15: tile_vnni_rt(a, 15); break;
    case 14: tile_vnni_rt(a, 14); break;
    case 13: tile_vnni_rt(a, 13); break;
    case 12: tile_vnni_rt(a, 12); break;
    case 11: tile_vnni_rt(a, 11); break;
    case 10: tile_vnni_rt(a, 10); break;
    case 9: tile_vnni_rt(a, 9); break;
    case 8: tile_vnni_rt(a, 8); break;
    case 7: tile_vnni_rt(a, 7); break;
    case 6: tile_vnni_rt(a, 6); break;
    case 5: tile_vnni_rt(a, 5); break;
    case 4: tile_vnni_rt(a, 4); break;
    case 3: tile_vnni_rt(a, 3); break;
    case 2: tile_vnni_rt(a, 2); break;
    default: tile_vnni_rt(a, 1);
    }
}
#endif

void matmul_q8_tile(weight_kernel k, const weight_tile_args *a) {
#ifdef MATMUL_Q8_X86
    if (k == WEIGHT_KERNEL_AVX2) {
        tile_avx2(a);
        return;
    }
    if (k == WEIGHT_KERNEL_AVX512_VNNI) {
        tile_vnni(a);
        return;
    }
#endif
    (void)k;
    tile_scalar(a);
}
