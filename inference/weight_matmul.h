/* weight_matmul.h: products with packed bf16 and q8 weights (weight_format.h), the decode
 * (a few rows) and the prefill (many rows) cases alike:
 *     out[t][o] (=|+=) sum_k in[t][k] W[o][k] (+ bias[o])   for t < n, o in the chosen groups.
 * One kernel shape serves both: a tile of up to WEIGHT_TILE_ROWS input rows against one group of
 * 16 output columns, the 16 columns in the lanes of one 512-bit vector (or two 256-bit ones), so
 * the group's weights stream from memory once per product and are reused from cache by every
 * later tile of rows. A product runs in two steps: weight_prepare_input converts the input rows
 * once (on the caller's thread) into what the kernel reads, then weight_matmul_groups runs any
 * range of groups (threads split the groups between them).
 *
 * Kernels, picked at run time (weight_kernel_best) like the f32 skinny kernel of cpu_ops.h:
 *   bf16  WEIGHT_KERNEL_SCALAR, _AVX2, _AVX512: weights widened to f32 in registers, f32 inputs
 *         exactly; _AVX512_BF16: vdpbf16ps, the input rows rounded to bf16 (as llama.cpp's BF16
 *         path does), f32 accumulation (denormal inputs count as zero, as the instruction
 *         does).
 *   q8    WEIGHT_KERNEL_SCALAR, _AVX2, _AVX512_VNNI: each input row quantised per block of 32 to
 *         int8 with an f32 scale (ggml's Q8_0 rule), integer dot products per block (vpdpbusd;
 *         AVX2 emulates it exactly), scaled and summed in f32. All three compute the same
 *         integers, so they agree to f32 rounding.
 * Every kernel handles any n >= 1, any shape and any group range; out must not alias in. */
#ifndef DUEL_WEIGHT_MATMUL_H
#define DUEL_WEIGHT_MATMUL_H

#include <stdbool.h>
#include <stddef.h>

#include "weight_format.h"

typedef enum weight_kernel {
    WEIGHT_KERNEL_SCALAR = 0,
    WEIGHT_KERNEL_AVX2,
    WEIGHT_KERNEL_AVX512,      /* bf16 only: AVX-512F */
    WEIGHT_KERNEL_AVX512_BF16, /* bf16 only: AVX-512 BF16 (vdpbf16ps) */
    WEIGHT_KERNEL_AVX512_VNNI, /* q8 only: AVX-512 VNNI (vpdpbusd) */
    WEIGHT_KERNEL_COUNT
} weight_kernel;

#define WEIGHT_TILE_ROWS 16 /* input rows per tile (the accumulators of one group) */

const char *weight_kernel_name(weight_kernel k);

/* Whether kernel k serves format f in this build on this CPU (cpuid at run time). */
bool weight_kernel_available(weight_kernel k, weight_format f);

/* The kernel for a product of n input rows with format f on this CPU: for bf16, the exact f32
 * kernels up to WEIGHT_BF16_EXACT_MAX_ROWS rows (one sequence's decode reads memory, where
 * vdpbf16ps gains nothing: measured as fast at 1 and 2 rows; so a bf16 checkpoint decodes one
 * sequence exactly as with f32 weights) and vdpbf16ps above (the exact kernel's two FMAs per
 * input pair cost 1.4x vdpbf16ps's time at 4 rows, 1.5x at 8, 1.6x at 16, and kept the
 * 8-candidate decode at 3.5x one sequence, below the 4x the engine is held to); for q8 the best
 * available. f32 has no kernel here (cpu_ops.h); it returns WEIGHT_KERNEL_SCALAR. */
#define WEIGHT_BF16_EXACT_MAX_ROWS 2
weight_kernel weight_kernel_best(weight_format f, int n);

/* Bytes of the prepared input of n rows for kernel k and matrix w (64-byte aligned buffer). */
size_t weight_prepared_bytes(weight_kernel k, const weight_matrix *w, int n);

/* Converts in ([n][w->cols] f32, rows in_stride floats apart) into prepared (a buffer of
 * weight_prepared_bytes, 64-byte aligned). */
void weight_prepare_input(weight_kernel k, const weight_matrix *w, const float *in, int n,
                          size_t in_stride, void *prepared);

/* The product for output groups [group_begin, group_end) (columns 16 g .. 16 g + 15, clipped to
 * w->rows): out rows are ldo floats apart. bias: w->rows floats or NULL. */
void weight_matmul_groups(weight_kernel k, const weight_matrix *w, const void *prepared, int n,
                          float *out, size_t ldo, const float *bias, bool accumulate,
                          int group_begin, int group_end);

#endif
