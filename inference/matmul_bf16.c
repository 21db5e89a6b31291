/* matmul_bf16.c: products with packed bf16 weights (weight_format.h layout: per group of 16 rows,
 * [cols_padded / 2][16][2], one input pair per 32-bit lane). Four kernels:
 *   scalar, AVX2, AVX-512F: each 32-bit lane is split into its two bf16 values, widened to f32
 *     exactly (a shift and a mask), and multiplied with the f32 inputs: the result is the f32
 *     product with the rounded weights, the inputs untouched (decode's path: it reads memory,
 *     so the two extra instructions per vector cost nothing);
 *   AVX-512 BF16: vdpbf16ps on the lane pairs directly, the inputs rounded to bf16 once by
 *     matmul_bf16_prepare; twice the multiply-adds per instruction (prefill's path), in tiles of
 *     two groups x 12 rows where two groups remain (fewer input broadcasts per instruction).
 * Prepared input: f32 [n][cols_padded] (exact kernels) or bf16 [n][cols_padded] (vdpbf16ps), the
 * padding column zero. Invariant: tiles read only the prepared rows [t0, t0 + rows) and write only
 * the group's valid lanes. */
#include <string.h>

#include "weight_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MATMUL_BF16_X86 1
#endif

#define BF16_TILE_AVX2 4     /* rows per AVX2 tile: 2 x 4 accumulators of the 16 ymm */
#define BF16_TILE_AVX512 16  /* rows per AVX-512 tile */
#define BF16_TILE_DP2 12     /* rows per vdpbf16ps tile of two groups: 24 accumulators */
#define ALWAYS_INLINE static inline __attribute__((always_inline))

int matmul_bf16_tile_rows(weight_kernel k) {
    switch (k) {
    case WEIGHT_KERNEL_AVX2: return BF16_TILE_AVX2;
    case WEIGHT_KERNEL_AVX512: return BF16_TILE_AVX512;
    case WEIGHT_KERNEL_AVX512_BF16: return BF16_TILE_DP2;
    default: return 1;
    }
}

int matmul_bf16_tile_groups(weight_kernel k) {
    return k == WEIGHT_KERNEL_AVX512_BF16 ? 2 : 1;
}

size_t matmul_bf16_prepared_bytes(weight_kernel k, const weight_matrix *w, int n) {
    size_t elem = k == WEIGHT_KERNEL_AVX512_BF16 ? 2 : 4;
    return weight_align_up((size_t)n * (size_t)w->cols_padded * elem);
}

/* n floats to bf16, rounded to nearest even as weight_f32_to_bf16 (a prefill converts every
 * row of every product: vectorised). */
static void round_row_bf16(uint16_t *y, const float *x, int n) {
    int i = 0;
#ifdef MATMUL_BF16_X86
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i quiet = _mm256_set1_epi32(0x00400000);
    for (; i + 16 <= n; i += 16) {
        __m256i h[2];
        for (int j = 0; j < 2; j++) {
            __m256 v = _mm256_loadu_ps(x + i + 8 * j);
            __m256i u = _mm256_castps_si256(v);
            __m256i r = _mm256_add_epi32(
                u, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
            /* NaN: keep it a NaN (quiet) rather than let the rounding carry make it inf */
            __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            r = _mm256_blendv_epi8(r, _mm256_or_si256(u, quiet), nan);
            h[j] = _mm256_srli_epi32(r, 16);
        }
        /* packus interleaves the 128-bit lanes: put them back in order */
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h[0], h[1]), 0xd8);
        _mm256_storeu_si256((__m256i *)(y + i), packed);
    }
#endif
    for (; i < n; i++) y[i] = weight_f32_to_bf16(x[i]);
}

void matmul_bf16_prepare(weight_kernel k, const weight_matrix *w, const float *in, int n,
                         size_t in_stride, void *prepared) {
    const int K = w->cols, KP = w->cols_padded;
    if (k == WEIGHT_KERNEL_AVX512_BF16) {
        uint16_t *dst = prepared;
        for (int t = 0; t < n; t++) {
            uint16_t *y = dst + (size_t)t * KP;
            round_row_bf16(y, in + (size_t)t * in_stride, K);
            for (int i = K; i < KP; i++) y[i] = 0;
        }
        return;
    }
    float *dst = prepared;
    for (int t = 0; t < n; t++) {
        float *y = dst + (size_t)t * KP;
        memcpy(y, in + (size_t)t * in_stride, (size_t)K * sizeof *y);
        for (int i = K; i < KP; i++) y[i] = 0;
    }
}

/* The reference: one output at a time, in input order. */
static void tile_scalar(const weight_tile_args *a) {
    const weight_matrix *w = a->w;
    const int G = WEIGHT_GROUP_ROWS, pairs = w->cols_padded / 2;
    const uint16_t *wg = w->bf16 + (size_t)a->group * pairs * G * 2;
    const float *x0 = a->prepared;
    float sums[WEIGHT_GROUP_ROWS];
    for (int r = 0; r < a->rows; r++) {
        const float *x = x0 + (size_t)(a->t0 + r) * w->cols_padded;
        for (int lane = 0; lane < a->lanes; lane++) {
            float d = 0;
            for (int k = 0; k < w->cols_padded; k++)
                d += weight_bf16_to_f32(wg[(size_t)(k / 2) * G * 2 + (size_t)lane * 2 + (k & 1)]) *
                     x[k];
            sums[lane] = d;
        }
        weight_store_lanes(a, r, sums);
    }
}

#ifdef MATMUL_BF16_X86
/* AVX2: the group's 16 lanes as two ymm halves; per input pair, lo = first bf16 of each lane
 * (shifted into the f32 high half), hi = the second (masked). */
ALWAYS_INLINE void tile_avx2_rt(const weight_tile_args *a, const int RT) {
    const weight_matrix *w = a->w;
    const int pairs = w->cols_padded / 2;
    const uint32_t *wg = (const uint32_t *)w->bf16 + (size_t)a->group * pairs * WEIGHT_GROUP_ROWS;
    const float *x = (const float *)a->prepared + (size_t)a->t0 * w->cols_padded;
    const size_t ldx = (size_t)w->cols_padded;
    const __m256i himask = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[BF16_TILE_AVX2][2];
    _Pragma("GCC unroll 4") for (int r = 0; r < RT; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int p = 0; p < pairs; p++) {
        __m256i v0 = _mm256_load_si256((const __m256i *)(wg + (size_t)p * 16));
        __m256i v1 = _mm256_load_si256((const __m256i *)(wg + (size_t)p * 16 + 8));
        __m256 lo0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16));
        __m256 hi0 = _mm256_castsi256_ps(_mm256_and_si256(v0, himask));
        __m256 lo1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16));
        __m256 hi1 = _mm256_castsi256_ps(_mm256_and_si256(v1, himask));
        _Pragma("GCC unroll 4") for (int r = 0; r < RT; r++) {
            __m256 xa = _mm256_broadcast_ss(x + r * ldx + 2 * p);
            __m256 xb = _mm256_broadcast_ss(x + r * ldx + 2 * p + 1);
            acc[r][0] = _mm256_fmadd_ps(lo0, xa, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(lo1, xa, acc[r][1]);
            acc[r][0] = _mm256_fmadd_ps(hi0, xb, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(hi1, xb, acc[r][1]);
        }
    }
    weight_store_rows_avx2(a, acc, RT);
}

static void tile_avx2(const weight_tile_args *a) {
    switch (a->rows) {
    case 4: tile_avx2_rt(a, 4); break;
    case 3: tile_avx2_rt(a, 3); break;
    case 2: tile_avx2_rt(a, 2); break;
    default: tile_avx2_rt(a, 1);
    }
}

#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

/* Adds bias and the old out (accumulate) to a row's 16 sums and stores the valid lanes. */
TARGET_AVX512 ALWAYS_INLINE void store_row_avx512(const weight_tile_args *a, int r, __m512 v) {
    __mmask16 m = (__mmask16)((1u << a->lanes) - 1);
    float *y = a->out + (size_t)r * a->ldo;
    if (a->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, a->bias));
    if (a->accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, y));
    _mm512_mask_storeu_ps(y, m, v);
}

/* AVX-512F, exact: RT rows x U independent pair streams; with few rows each row keeps separate
 * lo and hi sums too, so that at least 8 FMA chains hide the FMA latency. */
TARGET_AVX512 ALWAYS_INLINE void tile_avx512_rt(const weight_tile_args *a, const int RT,
                                                const int U) {
    const weight_matrix *w = a->w;
    const int pairs = w->cols_padded / 2;
    const uint32_t *wg = (const uint32_t *)w->bf16 + (size_t)a->group * pairs * WEIGHT_GROUP_ROWS;
    const float *x = (const float *)a->prepared + (size_t)a->t0 * w->cols_padded;
    const size_t ldx = (size_t)w->cols_padded;
    const __m512i himask = _mm512_set1_epi32((int)0xffff0000u);
    const bool split = RT <= 4;
    __m512 acc[BF16_TILE_AVX512][4], acc2[4][4];
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++)
        _Pragma("GCC unroll 4") for (int u = 0; u < U; u++) acc[r][u] = _mm512_setzero_ps();
    if (split)
        _Pragma("GCC unroll 4") for (int r = 0; r < RT; r++)
            _Pragma("GCC unroll 4") for (int u = 0; u < U; u++) acc2[r][u] = _mm512_setzero_ps();
    int p = 0;
    for (; p + U <= pairs; p += U) {
        _Pragma("GCC unroll 4") for (int u = 0; u < U; u++) {
            __m512i v = _mm512_load_si512(wg + (size_t)(p + u) * 16);
            __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(v, himask));
            _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++) {
                const float *xr = x + r * ldx + 2 * (p + u);
                acc[r][u] = _mm512_fmadd_ps(lo, _mm512_set1_ps(xr[0]), acc[r][u]);
                if (split) acc2[r][u] = _mm512_fmadd_ps(hi, _mm512_set1_ps(xr[1]), acc2[r][u]);
                else acc[r][u] = _mm512_fmadd_ps(hi, _mm512_set1_ps(xr[1]), acc[r][u]);
            }
        }
    }
    for (; p < pairs; p++) {
        __m512i v = _mm512_load_si512(wg + (size_t)p * 16);
        __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(v, himask));
        _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++) {
            const float *xr = x + r * ldx + 2 * p;
            acc[r][0] = _mm512_fmadd_ps(lo, _mm512_set1_ps(xr[0]), acc[r][0]);
            acc[r][0] = _mm512_fmadd_ps(hi, _mm512_set1_ps(xr[1]), acc[r][0]);
        }
    }
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++) {
        __m512 s = acc[r][0];
        _Pragma("GCC unroll 4") for (int u = 1; u < U; u++) s = _mm512_add_ps(s, acc[r][u]);
        if (split)
            _Pragma("GCC unroll 4") for (int u = 0; u < U; u++) s = _mm512_add_ps(s, acc2[r][u]);
        store_row_avx512(a, r, s);
    }
}

TARGET_AVX512 static void tile_avx512(const weight_tile_args *a) {
    switch (a->rows) {
    case 16: tile_avx512_rt(a, 16, 1); break;
    case 15: tile_avx512_rt(a, 15, 1); break;
    case 14: tile_avx512_rt(a, 14, 1); break;
    case 13: tile_avx512_rt(a, 13, 1); break;
    case 12: tile_avx512_rt(a, 12, 1); break;
    case 11: tile_avx512_rt(a, 11, 1); break;
    case 10: tile_avx512_rt(a, 10, 1); break;
    case 9: tile_avx512_rt(a, 9, 1); break;
    case 8: tile_avx512_rt(a, 8, 1); break;
    case 7: tile_avx512_rt(a, 7, 1); break;
    case 6: tile_avx512_rt(a, 6, 1); break;
    case 5: tile_avx512_rt(a, 5, 1); break;
    case 4: tile_avx512_rt(a, 4, 1); break;
    case 3: tile_avx512_rt(a, 3, 2); break;
    case 2: tile_avx512_rt(a, 2, 2); break;
    default: tile_avx512_rt(a, 1, 4);
    }
}

/* AVX-512 BF16: acc += w.pair . x.pair per lane (vdpbf16ps); RT rows x U pair streams. */
TARGET_AVX512_BF16 ALWAYS_INLINE void tile_bf16dp_rt(const weight_tile_args *a, const int RT,
                                                     const int U) {
    const weight_matrix *w = a->w;
    const int pairs = w->cols_padded / 2;
    const uint32_t *wg = (const uint32_t *)w->bf16 + (size_t)a->group * pairs * WEIGHT_GROUP_ROWS;
    const uint32_t *x = (const uint32_t *)a->prepared + (size_t)a->t0 * pairs;
    __m512 acc[BF16_TILE_AVX512][8];
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++)
        _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) acc[r][u] = _mm512_setzero_ps();
    int p = 0;
    for (; p + U <= pairs; p += U) {
        _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {
            __m512bh v = (__m512bh)_mm512_load_si512(wg + (size_t)(p + u) * 16);
            _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++)
                acc[r][u] = _mm512_dpbf16_ps(
                    acc[r][u], v, (__m512bh)_mm512_set1_epi32((int)x[(size_t)r * pairs + p + u]));
        }
    }
    for (; p < pairs; p++) {
        __m512bh v = (__m512bh)_mm512_load_si512(wg + (size_t)p * 16);
        _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++)
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], v,
                                         (__m512bh)_mm512_set1_epi32((int)x[(size_t)r * pairs + p]));
    }
    _Pragma("GCC unroll 16") for (int r = 0; r < RT; r++) {
        __m512 s = acc[r][0];
        _Pragma("GCC unroll 8") for (int u = 1; u < U; u++) s = _mm512_add_ps(s, acc[r][u]);
        store_row_avx512(a, r, s);
    }
}

/* Two groups (32 columns) x RT rows: per input pair 2 weight loads and RT broadcasts feed 2 RT
 * vdpbf16ps, against 1 and RT for RT with one group. */
TARGET_AVX512_BF16 ALWAYS_INLINE void tile_bf16dp2_rt(const weight_tile_args *a, const int RT) {
    const weight_matrix *w = a->w;
    const int pairs = w->cols_padded / 2;
    const uint32_t *wg = (const uint32_t *)w->bf16 + (size_t)a->group * pairs * WEIGHT_GROUP_ROWS;
    const uint32_t *wh = wg + (size_t)pairs * WEIGHT_GROUP_ROWS;
    const uint32_t *x = (const uint32_t *)a->prepared + (size_t)a->t0 * pairs;
    __m512 acc[BF16_TILE_DP2][2];
    _Pragma("GCC unroll 12") for (int r = 0; r < RT; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; p++) {
        __m512bh v0 = (__m512bh)_mm512_load_si512(wg + (size_t)p * 16);
        __m512bh v1 = (__m512bh)_mm512_load_si512(wh + (size_t)p * 16);
        _Pragma("GCC unroll 12") for (int r = 0; r < RT; r++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[(size_t)r * pairs + p]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], v0, xv);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], v1, xv);
        }
    }
    weight_tile_args b = *a;
    b.out = a->out + WEIGHT_GROUP_ROWS;
    b.bias = a->bias ? a->bias + WEIGHT_GROUP_ROWS : NULL;
    b.lanes = a->lanes2;
    _Pragma("GCC unroll 12") for (int r = 0; r < RT; r++) {
        store_row_avx512(a, r, acc[r][0]);
        store_row_avx512(&b, r, acc[r][1]);
    }
}

TARGET_AVX512_BF16 static void tile_bf16dp2(const weight_tile_args *a) {
    switch (a->rows) {
    case 12: tile_bf16dp2_rt(a, 12); break;
    case 11: tile_bf16dp2_rt(a, 11); break;
    case 10: tile_bf16dp2_rt(a, 10); break;
    case 9: tile_bf16dp2_rt(a, 9); break;
    case 8: tile_bf16dp2_rt(a, 8); break;
    case 7: tile_bf16dp2_rt(a, 7); break;
    case 6: tile_bf16dp2_rt(a, 6); break;
    case 5: tile_bf16dp2_rt(a, 5); break;
    case 4: tile_bf16dp2_rt(a, 4); break;
    case 3: tile_bf16dp2_rt(a, 3); break;
    case 2: tile_bf16dp2_rt(a, 2); break;
    default: tile_bf16dp2_rt(a, 1);
    }
}

TARGET_AVX512_BF16 static void tile_bf16dp(const weight_tile_args *a) {
    switch (a->rows) {
    case 16: tile_bf16dp_rt(a, 16, 1); break;
    case 15: tile_bf16dp_rt(a, 15, 1); break;
    case 14: tile_bf16dp_rt(a, 14, 1); break;
    case 13: tile_bf16dp_rt(a, 13, 1); break;
    case 12: tile_bf16dp_rt(a, 12, 1); break;
    case 11: tile_bf16dp_rt(a, 11, 1); break;
    case 10: tile_bf16dp_rt(a, 10, 1); break;
    case 9: tile_bf16dp_rt(a, 9, 1); break;
    case 8: tile_bf16dp_rt(a, 8, 1); break;
    case 7: tile_bf16dp_rt(a, 7, 2); break;
    case 6: tile_bf16dp_rt(a, 6, 2); break;
    case 5: tile_bf16dp_rt(a, 5, 2); break;
    case 4: tile_bf16dp_rt(a, 4, 2); break;
    case 3: tile_bf16dp_rt(a, 3, 4); break;
    case 2: tile_bf16dp_rt(a, 2, 4); break;
    default: tile_bf16dp_rt(a, 1, 8);
    }
}
#endif

void matmul_bf16_tile(weight_kernel k, const weight_tile_args *a) {
#ifdef MATMUL_BF16_X86
    switch (k) {
    case WEIGHT_KERNEL_AVX2: tile_avx2(a); return;
    case WEIGHT_KERNEL_AVX512: tile_avx512(a); return;
    case WEIGHT_KERNEL_AVX512_BF16:
        if (a->lanes2) tile_bf16dp2(a);
        else tile_bf16dp(a);
        return;
    default: break;
    }
#endif
    (void)k;
    tile_scalar(a);
}
