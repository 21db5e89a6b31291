/* weight_format.c: the packed weight layouts of weight_format.h, their conversion at load and
 * the exact values they hold. Invariant: weight_matrix_row returns the very values the kernels
 * multiply by (the tests' f32 references are built from it), and every padding slot is zero. */
#include "weight_format.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__)
#include <immintrin.h>
#define WEIGHT_FORMAT_AVX2 1
#endif

#define WEIGHT_ALIGN 64 /* bytes: packed arrays start on a cache line (aligned vector loads) */
#define WEIGHT_MAX_DIM (1 << 26) /* rows or cols: far above any layer we load */

int weight_format_parse(const char *text, weight_format *out, duel_error *err) {
    static const char *const names[] = {"f32", "bf16", "q8"};
    for (int i = 0; i < 3; i++)
        if (text && strcmp(text, names[i]) == 0) {
            *out = (weight_format)i;
            return DUEL_OK;
        }
    return duel_error_set(err, DUEL_EINVAL, "weight format '%s' is not one of f32, bf16, q8",
                          text ? text : "(null)");
}

const char *weight_format_name(weight_format f) {
    return f == WEIGHT_BF16 ? "bf16" : f == WEIGHT_Q8 ? "q8" : "f32";
}

uint16_t weight_f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float weight_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t weight_f32_to_f16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);        /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);       /* rounds to inf (>= 65520) */
    if (a < 0x38800000u) {                                         /* below 2^-14: subnormal */
        if (a < 0x33000000u) return (uint16_t)sign;                /* below half of 2^-24 */
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23); /* 14 + 2^-24 scaling: exponent e gives mant >> (126-e) */
        uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u); /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

float weight_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        float x = ldexpf((float)m, -24);
        return sign ? -x : x;
    }
    if (e == 31) u = sign | 0x7f800000u | (m << 13);
    else u = sign | ((e + 112) << 23) | (m << 13);
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t weight_q8_quantize_block(const float *x, int8_t *q) {
    float amax = 0.0f;
    for (int j = 0; j < WEIGHT_Q8_BLOCK; j++) {
        float a = fabsf(x[j]);
        amax = a > amax || isnan(a) ? a : amax;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int j = 0;
#ifdef WEIGHT_FORMAT_AVX2
    /* roundf (half away from zero) exactly: truncate, then step away when |fraction| >= 1/2 (the
     * fraction v - trunc(v) is exact in f32). Loading a model quantises every weight once. */
    if (isfinite(id)) {
        const __m256 vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f);
        const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
        for (; j < WEIGHT_Q8_BLOCK; j += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), vid);
            __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 away = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half, _CMP_GE_OQ);
            __m256 step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(sign, v)));
            __m256 r = _mm256_add_ps(t, step);
            /* NaN (a NaN or inf in the block): 0, as the scalar path */
            r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));
            __m256i qi = _mm256_cvtps_epi32(r); /* exact: |r| <= 127 */
            __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
            _mm_storel_epi64((__m128i *)(q + j), _mm_packs_epi16(p16, p16));
        }
    }
#endif
    for (; j < WEIGHT_Q8_BLOCK; j++) {
        float v = roundf(x[j] * id);
        q[j] = isfinite(v) ? (int8_t)v : 0; /* |v| <= 127 for finite blocks */
    }
    return weight_f32_to_f16(d);
}

weight_matrix weight_matrix_borrow_f32(const float *src, int rows, int cols) {
    weight_matrix w = {0};
    w.format = WEIGHT_F32;
    w.rows = rows;
    w.cols = cols;
    w.cols_padded = cols;
    w.groups = (rows + WEIGHT_GROUP_ROWS - 1) / WEIGHT_GROUP_ROWS;
    w.f32 = src;
    return w;
}

static void *aligned_zero(size_t bytes) {
    size_t rounded = (bytes + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
    void *p = aligned_alloc(WEIGHT_ALIGN, rounded ? rounded : WEIGHT_ALIGN);
    if (p) memset(p, 0, rounded);
    return p;
}

static void pack_bf16(weight_matrix *w, const float *src) {
    const int G = WEIGHT_GROUP_ROWS, pairs = w->cols_padded / 2;
    for (int r = 0; r < w->rows; r++) {
        const float *row = src + (size_t)r * w->cols;
        uint16_t *dst = w->bf16 + (size_t)(r / G) * pairs * G * 2 + (size_t)(r % G) * 2;
        for (int k = 0; k < w->cols; k++)
            dst[(size_t)(k / 2) * G * 2 + (k & 1)] = weight_f32_to_bf16(row[k]);
    }
}

static void pack_q8(weight_matrix *w, const float *src) {
    const int G = WEIGHT_GROUP_ROWS, B = WEIGHT_Q8_BLOCK, blocks = w->cols_padded / B;
    const size_t group_quants = (size_t)blocks * B * G;
    memset(w->q8, 128, (size_t)w->groups * group_quants); /* quant 0 everywhere, padding too */
    float block[WEIGHT_Q8_BLOCK];
    int8_t q[WEIGHT_Q8_BLOCK];
    for (int r = 0; r < w->rows; r++) {
        const float *row = src + (size_t)r * w->cols;
        int g = r / G, lane = r % G;
        for (int b = 0; b < blocks; b++) {
            int n = w->cols - b * B < B ? w->cols - b * B : B;
            memset(block, 0, sizeof block);
            memcpy(block, row + (size_t)b * B, (size_t)n * sizeof *block);
            w->q8_scales[((size_t)g * blocks + b) * G + lane] = weight_q8_quantize_block(block, q);
            uint8_t *dst = w->q8 + (size_t)g * group_quants + (size_t)b * B * G;
            for (int j = 0; j < B; j++) /* quad j / 4 of the block, byte j % 4 of the lane */
                dst[(size_t)(j / 4) * G * 4 + (size_t)lane * 4 + (j % 4)] = (uint8_t)(q[j] + 128);
        }
    }
}

int weight_matrix_pack(weight_matrix *out, weight_format format, const float *src, int rows,
                       int cols, duel_error *err) {
    memset(out, 0, sizeof *out);
    if (rows < 1 || cols < 1 || rows > WEIGHT_MAX_DIM || cols > WEIGHT_MAX_DIM || !src ||
        (format != WEIGHT_BF16 && format != WEIGHT_Q8))
        return duel_error_set(err, DUEL_EINVAL, "weight_matrix_pack: %s matrix of %d x %d",
                              weight_format_name(format), rows, cols);
    weight_matrix w = {0};
    w.format = format;
    w.rows = rows;
    w.cols = cols;
    w.groups = (rows + WEIGHT_GROUP_ROWS - 1) / WEIGHT_GROUP_ROWS;
    size_t padded_rows = (size_t)w.groups * WEIGHT_GROUP_ROWS;
    if (format == WEIGHT_BF16) {
        w.cols_padded = (cols + 1) / 2 * 2;
        w.owned = w.bf16 = aligned_zero(padded_rows * (size_t)w.cols_padded * 2);
        if (!w.owned) goto oom;
        pack_bf16(&w, src);
    } else {
        w.cols_padded = (cols + WEIGHT_Q8_BLOCK - 1) / WEIGHT_Q8_BLOCK * WEIGHT_Q8_BLOCK;
        size_t quants = padded_rows * (size_t)w.cols_padded;
        size_t scales = padded_rows * (size_t)(w.cols_padded / WEIGHT_Q8_BLOCK);
        size_t quant_bytes = (quants + WEIGHT_ALIGN - 1) / WEIGHT_ALIGN * WEIGHT_ALIGN;
        w.owned = aligned_zero(quant_bytes + scales * 2);
        if (!w.owned) goto oom;
        w.q8 = w.owned;
        w.q8_scales = (uint16_t *)(w.q8 + quant_bytes);
        pack_q8(&w, src);
    }
    *out = w;
    return DUEL_OK;
oom:
    return duel_error_set(err, DUEL_ENOMEM, "out of memory packing a %d x %d %s matrix", rows,
                          cols, weight_format_name(format));
}

void weight_matrix_free(weight_matrix *w) {
    if (!w) return;
    free(w->owned);
    memset(w, 0, sizeof *w);
}

void weight_matrix_row(const weight_matrix *w, int r, float *out) {
    const int G = WEIGHT_GROUP_ROWS;
    if (w->format == WEIGHT_F32) {
        memcpy(out, w->f32 + (size_t)r * w->cols, (size_t)w->cols * sizeof *out);
    } else if (w->format == WEIGHT_BF16) {
        const uint16_t *src =
            w->bf16 + (size_t)(r / G) * (w->cols_padded / 2) * G * 2 + (size_t)(r % G) * 2;
        for (int k = 0; k < w->cols; k++)
            out[k] = weight_bf16_to_f32(src[(size_t)(k / 2) * G * 2 + (k & 1)]);
    } else {
        const int B = WEIGHT_Q8_BLOCK, blocks = w->cols_padded / B, g = r / G, lane = r % G;
        const uint8_t *quants = w->q8 + (size_t)g * blocks * B * G;
        for (int k = 0; k < w->cols; k++) {
            int b = k / B, j = k % B;
            float d = weight_f16_to_f32(w->q8_scales[((size_t)g * blocks + b) * G + lane]);
            int q = (int)quants[(size_t)b * B * G + (size_t)(j / 4) * G * 4 + (size_t)lane * 4 +
                                (j % 4)] - 128;
            out[k] = d * (float)q;
        }
    }
}

size_t weight_matrix_bytes(const weight_matrix *w) {
    size_t padded_rows = (size_t)w->groups * WEIGHT_GROUP_ROWS;
    switch (w->format) {
    case WEIGHT_BF16: return padded_rows * (size_t)w->cols_padded * 2;
    case WEIGHT_Q8:
        return padded_rows * (size_t)w->cols_padded +
               padded_rows * (size_t)(w->cols_padded / WEIGHT_Q8_BLOCK) * 2;
    default: return (size_t)w->rows * (size_t)w->cols * 4;
    }
}
