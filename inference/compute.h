/* compute.h: what the engine asks of a compute device (DESIGN.md section 4), as one table of
 * operations that every backend implements: the CPU (compute_cpu.c, model_forward_batch over
 * the pool's host storage), the CUDA backend (cuda/cuda_compute.h, registered by the `duel`
 * executable, so that inference/ never depends on cuda/), and the test double of
 * tests/inference/compute_reference.c. The engine and its scheduler reach the device only
 * through these calls:
 *   - the KV pool: pool_prepare adjusts the pool's parameters before the engine creates it (the
 *     CPU keeps host storage of the engine's element size, f32 or bf16; a device backend asks
 *     for none, its own element size and
 *     recorded copy-on-write copies), pool_attach gives the backend the created pool so that it
 *     can allocate its storage for every block id (layout: kv_cache.h's), pool_detach before
 *     the pool is destroyed; copy_blocks performs the copy-on-write copies the pool recorded
 *     (kv_pool_take_copies), in order, before the step's first forward;
 *   - arms: arm_load makes a model's weights resident (the CUDA backend uploads them in bf16),
 *     arm_unload releases them; the backend keeps no pointer into the model's host weights
 *     beyond what it says (the CPU backend borrows the model itself);
 *   - one step: step_begin sizes the step's logits (rows x vocab floats in the backend's
 *     memory), forward runs one arm's part of the batch over the paged pool (prefill pieces and
 *     decodes together, each piece's last-token logits left in its row, final hidden states and
 *     target log-probabilities copied out to the host), sample draws tokens from logit rows
 *     (only ids and log-probabilities come back), read_logits copies a row to the host (for a
 *     logits step such as PILAF's mix, which then samples on the host with sampler_sample);
 *   - ERM scoring: erm_load makes an ensemble resident, erm_score scores host features into
 *     host rewards (erm_score's contract and layout), erm_unload.
 * Contract (tests/inference/test_compute_contract.c checks it for every backend): forward's
 * results for a sequence are those of model_forward over its tokens alone, up to the backend's
 * precision (f32 rel. err. 1e-5 on the CPU, bf16 about 1e-2 on CUDA); logits rows live until the
 * next step_begin; sample with a sequence's rng gives sampler_sample's token for the same logits
 * and advances the rng exactly as sampler_sample does (one uniform draw when temperature > 0),
 * so the same seed gives the same tokens on every backend up to rounding at a bucket boundary;
 * a forced sample draws nothing and returns the forced token's log-probability.
 *
 * Backends are chosen by name (config engine.backend): "cpu", a provider's name ("cuda"), or
 * "auto" (the first provider marked as a device whose probe finds one, else the CPU).
 * Ownership: one thread (the engine's) owns a backend and everything loaded on it; create runs
 * on the caller's thread before that. Errors: 0 or a negative DUEL_E* with err filled. */
#ifndef DUEL_COMPUTE_H
#define DUEL_COMPUTE_H

/* C linkage for the CUDA backend's C++ (nvcc) files, this header's includes too: inference/'s
 * headers carry no guards of their own. */
#ifdef __cplusplus
extern "C" {
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "erm.h"
#include "error.h"
#include "kv_cache.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"

#define COMPUTE_MAX_NAME 32

typedef struct compute_backend compute_backend;
typedef struct compute_arm compute_arm; /* one model's weights, as the backend holds them */
typedef struct compute_erm compute_erm; /* one ERM ensemble, as the backend holds it */

/* One sequence's piece of a step (model_batch_entry's meaning, logits kept in the backend). */
typedef struct compute_entry {
    const kv_sequence *seq; /* positions start .. start+n_tokens-1 reserved, earlier ones valid */
    const int32_t *tokens;  /* n_tokens ids for positions start .. */
    int n_tokens;           /* >= 1 */
    int64_t start;
    int logits_row;         /* >= 0: the last token's output scores become this row of the step's
                               logits (< the rows of step_begin); -1: not wanted */
    float *hidden_last;     /* host, optional: hidden_size floats, the last token's final-norm
                               hidden state */
    const int32_t *targets; /* optional: n_tokens ids; targets[t] >= 0 adds log softmax(logits of
                               token t)[targets[t]] (temperature 1, unfiltered) to
                               *target_logprob; < 0 skips token t */
    double *target_logprob; /* with targets: receives the sum (0 when every target skips) */
} compute_entry;

/* One draw from a row of the step's logits. Several samples may read the same row (a prompt's
 * last logits, shared by the candidates forked from it). */
typedef struct compute_sample {
    int logits_row;
    int vocab;         /* the row's model's output size (<= the step's vocab) */
    const sampler_params *params;
    duel_rng *rng;     /* the sequence's own; advanced as sampler_sample advances it */
    int32_t forced;    /* >= 0: no draw; token = forced and logprob is its log-probability */
    int32_t token;     /* out */
    double logprob;    /* out: log p(token) at temperature 1, unfiltered */
    int status;        /* out: 0, or this row's error (a NaN logit): the others still sample */
} compute_sample;

typedef struct compute_ops {
    const char *name;
    void (*destroy)(compute_backend *b);
    int (*pool_prepare)(compute_backend *b, kv_pool_params *params, duel_error *err);
    int (*pool_attach)(compute_backend *b, kv_pool *pool, duel_error *err);
    void (*pool_detach)(compute_backend *b, kv_pool *pool);
    int (*copy_blocks)(compute_backend *b, kv_pool *pool, const int32_t *pairs, int n,
                       duel_error *err);
    int (*arm_load)(compute_backend *b, model *m, compute_arm **out, duel_error *err);
    void (*arm_unload)(compute_backend *b, compute_arm *arm);
    int (*step_begin)(compute_backend *b, int rows, int vocab, duel_error *err);
    int (*forward)(compute_backend *b, compute_arm *arm, kv_pool *pool,
                   const compute_entry *entries, int n, duel_error *err);
    /* Returns 0 when every sample was tried (per-row failures in status), or a device error. */
    int (*sample)(compute_backend *b, compute_sample *samples, int n, duel_error *err);
    int (*read_logits)(compute_backend *b, int row, float *out, duel_error *err);
    int (*erm_load)(compute_backend *b, const erm *model, compute_erm **out, duel_error *err);
    void (*erm_unload)(compute_backend *b, compute_erm *e);
    int (*erm_score)(compute_backend *b, compute_erm *e, const float *features, int M,
                     float *rewards, duel_error *err);
} compute_ops;

/* Every backend's struct begins with this. */
struct compute_backend {
    const compute_ops *ops;
};

/* A backend that can be chosen by name: the CPU's is built in (compute_cpu_provider); others
 * are handed to the engine by the program (engine_params.providers). */
typedef struct compute_provider {
    const char *name;
    bool device;  /* considered by "auto" */
    /* 1 when a device answers, 0 when none (why says so), negative on error. */
    int (*probe)(char *why, size_t cap);
    int (*create)(compute_backend **out, duel_error *err);
} compute_provider;

const compute_provider *compute_cpu_provider(void);

/* Creates the backend `name` ("auto", "cpu" or a provider's name; NULL: "cpu") from the
 * providers given (the CPU's is always there). chosen (optional, COMPUTE_MAX_NAME bytes) gets
 * the name of the one created. DUEL_EINVAL names an unknown backend and lists the known ones;
 * a named device backend without a device is DUEL_EDEVICE with the probe's reason. */
int compute_open(const char *name, const compute_provider *const *providers, int n_providers,
                 compute_backend **out, char *chosen, duel_error *err);
/* Whether name is "auto", "cpu" or one of the providers' (config validation). */
bool compute_name_known(const char *name, const compute_provider *const *providers,
                        int n_providers);
void compute_destroy(compute_backend *b);
const char *compute_name(const compute_backend *b);

/* The operations (the calls the engine and scheduler make; each checks its arguments). */
int compute_pool_prepare(compute_backend *b, kv_pool_params *params, duel_error *err);
int compute_pool_attach(compute_backend *b, kv_pool *pool, duel_error *err);
void compute_pool_detach(compute_backend *b, kv_pool *pool);
/* Takes every copy the pool recorded and hands them to the backend in order. */
int compute_copy_pending(compute_backend *b, kv_pool *pool, duel_error *err);
int compute_arm_load(compute_backend *b, model *m, compute_arm **out, duel_error *err);
void compute_arm_unload(compute_backend *b, compute_arm *arm);
int compute_step_begin(compute_backend *b, int rows, int vocab, duel_error *err);
int compute_forward(compute_backend *b, compute_arm *arm, kv_pool *pool,
                    const compute_entry *entries, int n, duel_error *err);
int compute_sample_rows(compute_backend *b, compute_sample *samples, int n, duel_error *err);
int compute_read_logits(compute_backend *b, int row, float *out, duel_error *err);
int compute_erm_load(compute_backend *b, const erm *model, compute_erm **out, duel_error *err);
void compute_erm_unload(compute_backend *b, compute_erm *e);
int compute_erm_score(compute_backend *b, compute_erm *e, const float *features, int M,
                      float *rewards, duel_error *err);

/* ---- host logits: the step's logits in host memory, shared by host backends -------------- */

/* The logits of one step held on the host (the CPU backend and the test doubles): rows x stride
 * floats, grown on demand, never shrunk. */
typedef struct compute_host_logits {
    float *data;
    size_t capacity; /* floats */
    int rows, stride;
} compute_host_logits;

int compute_host_logits_begin(compute_host_logits *h, int rows, int vocab, duel_error *err);
/* Row r (NULL when out of range). */
float *compute_host_logits_row(compute_host_logits *h, int r);
/* sampler_sample per sample (a forced one: the log softmax at its token, in double). */
int compute_host_logits_sample(compute_host_logits *h, compute_sample *samples, int n,
                               duel_error *err);
int compute_host_logits_read(compute_host_logits *h, int row, float *out, duel_error *err);
void compute_host_logits_free(compute_host_logits *h);

/* The host ERM handle, shared by host backends: a borrowed ensemble scored with erm_score (their
 * erm_load / erm_unload / erm_score operations). */
int compute_host_erm_load(compute_backend *b, const erm *model, compute_erm **out,
                          duel_error *err);
void compute_host_erm_unload(compute_backend *b, compute_erm *e);
int compute_host_erm_score(compute_backend *b, compute_erm *e, const float *features, int M,
                           float *rewards, duel_error *err);

#ifdef __cplusplus
}
#endif

#endif
