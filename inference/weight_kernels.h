/* weight_kernels.h (internal to inference/): the per-format kernel files behind weight_matmul.h.
 * matmul_bf16.c and matmul_q8.c each own one format's input preparation and tiles; weight_matmul.c
 * picks the kernel and splits a product into row tiles and groups. */
#ifndef DUEL_WEIGHT_KERNELS_H
#define DUEL_WEIGHT_KERNELS_H

#include "weight_matmul.h"

/* A tile: rows t0 .. t0 + rows - 1 of the prepared input against group g; out and bias already
 * point at the group's first column (out at row t0). rows <= weight_kernel_tile_rows(k). */
typedef struct weight_tile_args {
    const weight_matrix *w;
    const void *prepared;
    int n;           /* rows of the prepared input */
    int t0, rows;    /* the tile's rows */
    int group;
    float *out;      /* row t0, column 16 * group */
    size_t ldo;
    const float *bias; /* column 16 * group, or NULL */
    bool accumulate;
    int lanes;       /* valid columns of the group (16, fewer in the last group) */
    int lanes2;      /* > 0: the tile covers group + 1 too (columns 16 more), with this many
                        valid columns; only for kernels whose *_tile_groups is 2 */
} weight_tile_args;

size_t matmul_bf16_prepared_bytes(weight_kernel k, const weight_matrix *w, int n);
void matmul_bf16_prepare(weight_kernel k, const weight_matrix *w, const float *in, int n,
                         size_t in_stride, void *prepared);
int matmul_bf16_tile_rows(weight_kernel k);
/* Groups one tile of kernel k may cover (1 or 2). */
int matmul_bf16_tile_groups(weight_kernel k);
void matmul_bf16_tile(weight_kernel k, const weight_tile_args *a);

size_t matmul_q8_prepared_bytes(const weight_matrix *w, int n);
void matmul_q8_prepare(const weight_matrix *w, const float *in, int n, size_t in_stride,
                       void *prepared);
int matmul_q8_tile_rows(weight_kernel k);
int matmul_q8_tile_groups(weight_kernel k);
void matmul_q8_tile(weight_kernel k, const weight_tile_args *a);

/* Row r of a tile from its 16 lane sums: + bias, + the old out when accumulating, valid lanes
 * only (the scalar and AVX2 tiles; the AVX-512 ones store with masks). */
static inline void weight_store_lanes(const weight_tile_args *a, int r, const float *sums) {
    float *y = a->out + (size_t)r * a->ldo;
    for (int lane = 0; lane < a->lanes; lane++) {
        float v = a->bias ? sums[lane] + a->bias[lane] : sums[lane];
        y[lane] = a->accumulate ? y[lane] + v : v;
    }
}

#if defined(__AVX2__)
#include <immintrin.h>
/* The same for the AVX2 tiles: rows t0 .. t0 + rows - 1, lanes 0-7 in acc[r][0], 8-15 in [1]. */
static inline void weight_store_rows_avx2(const weight_tile_args *a, __m256 (*acc)[2], int rows) {
    float sums[WEIGHT_GROUP_ROWS];
    for (int r = 0; r < rows; r++) {
        _mm256_storeu_ps(sums, acc[r][0]);
        _mm256_storeu_ps(sums + 8, acc[r][1]);
        weight_store_lanes(a, r, sums);
    }
}
#endif

#define WEIGHT_PREPARED_ALIGN 64 /* bytes: prepared arrays start on a cache line */

static inline size_t weight_align_up(size_t bytes) {
    return (bytes + WEIGHT_PREPARED_ALIGN - 1) / WEIGHT_PREPARED_ALIGN * WEIGHT_PREPARED_ALIGN;
}

#endif
