/* erm.h: the epistemic reward model (ERM): an ensemble of E small MLP heads over a feature vector
 * (DESIGN.md section 5). Head e maps phi (d_feat floats) to a scalar reward:
 *     r_e(phi) = w3_e . relu(W2_e relu(W1_e phi + b1_e) + b2_e) + b3_e
 * with W1_e [hidden][d_feat], W2_e [hidden][hidden], w3_e [hidden] (hidden = 128 by default).
 *
 * Layout (llm.c style): all parameters live in one float allocation, carved into the views of
 * erm_params in the order fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias, each
 * stacked over heads ([E][...]). The initial parameters (theta_0, for the trainer's regulariser
 * lambda*(B/N)*mean((theta-theta_0)^2)) sit in a second block of the same allocation with the same
 * layout, so `params.memory[k]` and `initial.memory[k]` are the same parameter.
 *
 * File format (erm.safetensors, written by erm_save, read by erm_load): F32 tensors, stacked over
 * heads, PyTorch nn.Linear convention (weight [out][in]):
 *     fc1.weight [E][hidden][d_feat]   fc1.bias [E][hidden]
 *     fc2.weight [E][hidden][hidden]   fc2.bias [E][hidden]
 *     fc3.weight [E][1][hidden]        fc3.bias [E][1]
 * and the same six under "initial." (e.g. "initial.fc1.weight") for theta_0. Metadata:
 * {"format":"duel-erm","version":"1","num_heads":"E","d_feat":"D","hidden":"H"}. Every shape is
 * checked against the metadata; the initial.* tensors are optional on load (absent: theta_0 is
 * the loaded parameters, as for a serving snapshot). F16/BF16 files are accepted and widened.
 *
 * Scoring is read-only: one erm may be scored from several threads at once; training (which
 * writes params) must be exclusive. */
#ifndef DUEL_ERM_H
#define DUEL_ERM_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "rng.h"

#define ERM_DEFAULT_NUM_HEADS 20
#define ERM_DEFAULT_HIDDEN 128
#define ERM_MAX_NUM_HEADS 256      /* heads in one ensemble */
#define ERM_MAX_HIDDEN 4096        /* units per hidden layer */
#define ERM_MAX_D_FEAT (1 << 16)   /* feature width (2 * d_model of the encoder) */
#define ERM_MAX_CANDIDATES 4096    /* rows scored in one erm_score call */

typedef struct erm_config {
    int num_heads; /* E */
    int d_feat;    /* input width */
    int hidden;    /* width of both hidden layers */
} erm_config;

/* Views into one block of parameters (all heads stacked). */
typedef struct erm_params {
    float *memory;     /* the whole block: erm_num_params floats */
    float *fc1_weight; /* [E][hidden][d_feat] */
    float *fc1_bias;   /* [E][hidden] */
    float *fc2_weight; /* [E][hidden][hidden] */
    float *fc2_bias;   /* [E][hidden] */
    float *fc3_weight; /* [E][hidden] (the file's [E][1][hidden]) */
    float *fc3_bias;   /* [E] */
} erm_params;

typedef struct erm {
    erm_config config;
    size_t num_params; /* floats in one block */
    erm_params params;  /* current theta */
    erm_params initial; /* theta_0 */
} erm;

/* Floats in one parameter block of the given shape (0 when the config is invalid). */
size_t erm_num_params(const erm_config *config);

/* Checks 1 <= num_heads <= ERM_MAX_NUM_HEADS, 1 <= hidden <= ERM_MAX_HIDDEN, 1 <= d_feat <=
 * ERM_MAX_D_FEAT; DUEL_EINVAL naming the field otherwise. */
int erm_config_validate(const erm_config *config, duel_error *err);

/* Allocates an ensemble and initialises it from rng: for head 0..E-1, then within a head fc1,
 * fc2, fc3 in row-major order, weights ~ N(0, (1/(2*sqrt(fan_in)))^2) with fan_in the layer's
 * input width; biases 0. theta_0 is a copy. The same seed gives the same ensemble everywhere. */
int erm_create(const erm_config *config, duel_rng *rng, erm **out, duel_error *err);
void erm_free(erm *model);

/* Sets theta_0 := theta (for a trainer that restarts the regulariser). */
void erm_reset_initial(erm *model);

/* Scores M candidates with every head: features is [M][d_feat] row-major, rewards receives
 * [M][E] (rewards[m*E + e] = r_e(features[m])). Layer 1 is one SGEMM over all heads and
 * candidates (the heads share their input), layer 2 one SGEMM per head over all candidates.
 * Non-finite features are DUEL_EINVAL naming the candidate and the column; M outside
 * 1..ERM_MAX_CANDIDATES is DUEL_EINVAL. Thread-safe for a const model. */
int erm_score(const erm *model, const float *features, int num_candidates, float *rewards,
              duel_error *err);

/* Writes path atomically in the format above (current and initial parameters). */
int erm_save(const erm *model, const char *path, duel_error *err);

/* Reads path. expected_d_feat > 0 requires that feature width (the serving encoder's), 0 accepts
 * the file's. Wrong metadata, shapes, dtypes or non-finite values are errors naming the file and
 * the tensor. */
int erm_load(const char *path, int expected_d_feat, erm **out, duel_error *err);

#endif
