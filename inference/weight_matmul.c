/* weight_matmul.c: which packed-weight kernel runs on this CPU, and how a product is cut into
 * tiles (weight_matmul.h). Row tiles are the outer loop and groups the inner one: a tile's input
 * rows stay in L1 while the groups' weights stream past (in decode there is one tile, so every
 * weight is read from memory exactly once; in prefill a thread's groups are re-read from L2 by
 * each tile). A kernel may take two groups per tile (matmul_*_tile_groups). CPU features:
 * cpu_features_detect (cpu_ops.h). */
#include "weight_matmul.h"

#include "cpu_ops.h"
#include "weight_kernels.h"

const char *weight_kernel_name(weight_kernel k) {
    static const char *const names[WEIGHT_KERNEL_COUNT] = {"scalar", "avx2", "avx512",
                                                           "avx512-bf16", "avx512-vnni"};
    return k >= 0 && k < WEIGHT_KERNEL_COUNT ? names[k] : "?";
}

bool weight_kernel_available(weight_kernel k, weight_format f) {
    if (f != WEIGHT_BF16 && f != WEIGHT_Q8) return false;
    cpu_features c = cpu_features_detect();
    switch (k) {
    case WEIGHT_KERNEL_SCALAR: return true;
    case WEIGHT_KERNEL_AVX2: return c.avx2;
    case WEIGHT_KERNEL_AVX512: return f == WEIGHT_BF16 && c.avx512;
    case WEIGHT_KERNEL_AVX512_BF16: return f == WEIGHT_BF16 && c.avx512_bf16;
    case WEIGHT_KERNEL_AVX512_VNNI: return f == WEIGHT_Q8 && c.avx512_vnni;
    default: return false;
    }
}

weight_kernel weight_kernel_best(weight_format f, int n) {
    cpu_features c = cpu_features_detect();
    if (f == WEIGHT_BF16) {
        if (c.avx512_bf16 && n > WEIGHT_BF16_EXACT_MAX_ROWS) return WEIGHT_KERNEL_AVX512_BF16;
        if (c.avx512) return WEIGHT_KERNEL_AVX512;
    } else if (f == WEIGHT_Q8) {
        if (c.avx512_vnni) return WEIGHT_KERNEL_AVX512_VNNI;
    } else {
        return WEIGHT_KERNEL_SCALAR;
    }
    return c.avx2 ? WEIGHT_KERNEL_AVX2 : WEIGHT_KERNEL_SCALAR;
}

size_t weight_prepared_bytes(weight_kernel k, const weight_matrix *w, int n) {
    return w->format == WEIGHT_Q8 ? matmul_q8_prepared_bytes(w, n)
                                  : matmul_bf16_prepared_bytes(k, w, n);
}

void weight_prepare_input(weight_kernel k, const weight_matrix *w, const float *in, int n,
                          size_t in_stride, void *prepared) {
    if (w->format == WEIGHT_Q8) matmul_q8_prepare(w, in, n, in_stride, prepared);
    else matmul_bf16_prepare(k, w, in, n, in_stride, prepared);
}

void weight_matmul_groups(weight_kernel k, const weight_matrix *w, const void *prepared, int n,
                          float *out, size_t ldo, const float *bias, bool accumulate,
                          int group_begin, int group_end) {
    const bool q8 = w->format == WEIGHT_Q8;
    const int tile = q8 ? matmul_q8_tile_rows(k) : matmul_bf16_tile_rows(k);
    const int per = q8 ? matmul_q8_tile_groups(k) : matmul_bf16_tile_groups(k);
    if (group_end > w->groups) group_end = w->groups;
    for (int t0 = 0; t0 < n; t0 += tile) {
        weight_tile_args a = {w, prepared, n, t0, n - t0 < tile ? n - t0 : tile, 0, NULL, ldo,
                              NULL, accumulate, 0, 0};
        for (int g = group_begin; g < group_end; g += a.lanes2 ? 2 : 1) {
            int col = g * WEIGHT_GROUP_ROWS;
            a.group = g;
            a.out = out + (size_t)t0 * ldo + col;
            a.bias = bias ? bias + col : NULL;
            a.lanes = w->rows - col < WEIGHT_GROUP_ROWS ? w->rows - col : WEIGHT_GROUP_ROWS;
            int col2 = col + WEIGHT_GROUP_ROWS;
            a.lanes2 = per == 2 && g + 1 < group_end
                           ? (w->rows - col2 < WEIGHT_GROUP_ROWS ? w->rows - col2 : WEIGHT_GROUP_ROWS)
                           : 0;
            if (q8) matmul_q8_tile(k, &a);
            else matmul_bf16_tile(k, &a);
        }
    }
}
