/* weight_format.h: how the CPU backend stores a linear layer's weight matrix: f32 (as OpenBLAS
 * reads it), bf16 (the checkpoint's own values, or f32 rounded to nearest even) or q8 (blocks of
 * 32 int8 values along a row with one f16 scale each: the shape of llama.cpp's Q8_0, quantised at
 * load exactly as ggml's quantize_row_q8_0 does). The format is chosen when a model is loaded
 * (config engine.weights, --weights); activations and accumulation stay f32 (the q8 kernels round
 * an activation row to int8 blocks for the integer dot product, as llama.cpp's Q8_0 x Q8_0 does).
 *
 * A matrix is [rows][cols] = [out][in], as Hugging Face stores it. f32 stays row-major (a
 * borrowed pointer). bf16 and q8 are packed for the kernels (weight_matmul.h) in groups of 16
 * rows whose values at one column index sit side by side, so that one 64-byte vector holds 16
 * output columns' weights at a few input positions and a product needs no horizontal sums:
 *   bf16: [group][cols_padded / 2][16 rows][2]  (an input pair per 32-bit lane: vdpbf16ps's shape)
 *   q8:   quants [group][cols_padded / 32][8][16 rows][4] as unsigned q + 128 (an input quad per
 *         32-bit lane: vpdpbusd's unsigned operand), scales [group][cols_padded / 32][16] f16
 * cols_padded rounds cols up to 2 (bf16) or 32 (q8); rows are padded to a multiple of 16. Every
 * padding value is zero (q8: quant 128, scale 0), so a padded position contributes nothing. */
#ifndef DUEL_WEIGHT_FORMAT_H
#define DUEL_WEIGHT_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum weight_format { WEIGHT_F32 = 0, WEIGHT_BF16 = 1, WEIGHT_Q8 = 2 } weight_format;

#define WEIGHT_GROUP_ROWS 16 /* rows packed side by side (one 512-bit vector of f32 lanes) */
#define WEIGHT_Q8_BLOCK 32   /* q8 values per scale */

/* "f32", "bf16", "q8" -> format; DUEL_EINVAL naming the text otherwise. */
int weight_format_parse(const char *text, weight_format *out, duel_error *err);
const char *weight_format_name(weight_format f);

typedef struct weight_matrix {
    weight_format format;
    int rows, cols;      /* logical shape [out][in] */
    int cols_padded;     /* bf16: cols rounded up to 2; q8: to 32; f32: cols */
    int groups;          /* ceil(rows / 16) (packed formats) */
    const float *f32;    /* WEIGHT_F32: [rows][cols], borrowed */
    uint16_t *bf16;      /* WEIGHT_BF16: packed as above */
    uint8_t *q8;         /* WEIGHT_Q8: packed quants (q + 128) */
    uint16_t *q8_scales; /* WEIGHT_Q8: f16 scales */
    void *owned;         /* the packed allocation (freed by weight_matrix_free) */
} weight_matrix;

/* An f32 matrix that borrows src (no copy). */
weight_matrix weight_matrix_borrow_f32(const float *src, int rows, int cols);

/* Packs src ([rows][cols] f32) into format (WEIGHT_BF16 or WEIGHT_Q8) in a new allocation.
 * DUEL_EINVAL for bad sizes or formats, DUEL_ENOMEM. Non-finite values are kept as they are
 * (bf16) or make their block's scale non-finite (q8), so that a broken checkpoint shows up as
 * NaN logits rather than silently. */
int weight_matrix_pack(weight_matrix *out, weight_format format, const float *src, int rows,
                       int cols, duel_error *err);
void weight_matrix_free(weight_matrix *w);

/* Row r (< rows) as f32 values, exactly as the kernels see them (q8: scale * quant). */
void weight_matrix_row(const weight_matrix *w, int r, float *out);

/* Bytes a product streams from memory per pass over the whole matrix (padding included). */
size_t weight_matrix_bytes(const weight_matrix *w);

/* Rounding helpers shared with the kernels and tests: f32 -> bf16 (round to nearest even; NaN
 * stays NaN), f16 <-> f32 (IEEE half, round to nearest even). */
uint16_t weight_f32_to_bf16(float x);
float weight_bf16_to_f32(uint16_t h);
uint16_t weight_f32_to_f16(float x);
float weight_f16_to_f32(uint16_t h);

/* One q8 block exactly as ggml's quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d)
 * (0 when d = 0); returns d rounded to f16 (the stored scale). */
uint16_t weight_q8_quantize_block(const float *x, int8_t *q);

#endif
