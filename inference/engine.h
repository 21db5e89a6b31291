/* engine.h: the inference engine (DESIGN.md section 4): resident models (snapshots, "arms"), one
 * shared paged KV pool, the continuous-batching scheduler, all on one engine thread. Callers
 * talk to it through two queues: engine_submit and engine_cancel push commands, engine_poll pops
 * events. Every call here is thread-safe.
 *
 * A request is one duel turn: the conversation's tokens (chat template applied), an arm, M, the
 * sampling parameters and a seed. The engine prefills the prompt once, forks M candidates that
 * share its KV blocks, and decodes them in the batch with every other request; candidate i
 * samples with duel_rng_seed(seed + i) (so a request with seed + i and M = 1 reproduces it).
 * Events, in order for one request: PROGRESS (optional, new tokens per step), CANDIDATE (one per
 * finished candidate: tokens, text, summed log-probability, last-token hidden state), then
 * exactly one of FINISHED (with timings and counts), CANCELLED or ERROR.
 *
 * Duel requests (request.duel, DESIGN.md section 5): once every candidate has finished, the
 * engine computes each candidate's ERM features, scores them with the engine's ERM (erm_score),
 * chooses the pair with the request's strategy (duel_select), places it (duel_place) and emits
 * DUEL_READY (features, per-head rewards, pair, side swap, estimated regret, timings) just
 * before FINISHED; a failure there (non-finite rewards, a strategy duel_select refuses) is an
 * ERROR event instead, and the engine keeps serving. Features (d_feat = 2 * hidden_size):
 *   ENGINE_FEATURES_REFERENCE (default): the reference arm's final-norm hidden state at the last
 *     prompt token, then at the candidate's last token (a final stop token included): once every
 *     candidate has finished, the reference arm runs prompt + candidates as a scoring request of
 *     the scheduler (forced tokens) in the shared pool, within the KV budget, batched with the
 *     other requests' steps: the prompt once (its cached blocks reused), its KV shared by every
 *     candidate; the same pass gives each candidate's reference log-probability (ref_logprobs);
 *     the request keeps its place in the age order, and can be cancelled during the pass;
 *   ENGINE_FEATURES_POLICY: the same two hidden states of the serving arm itself, as the decode
 *     reports them (want_hidden), with no extra forward pass.
 * Selection randomness (Thompson heads, side swap) comes from one duel_rng seeded
 * duel_rng_seed(seed ^ ENGINE_DUEL_SEED_SALT): duel_select draws first, then duel_place.
 *
 * PILAF duel requests (strategy pilaf, M = 2; no ERM needed) are decoded in the scheduler's
 * batched steps like every request (the same stop, length, context and cancel rules): the
 * selection rng (as above) first draws the mode (duel_pilaf_draw_mode); PLAIN: the two
 * candidates are plain policy samples (what the same request without duel gives); MIXED: the
 * reference arm decodes each candidate's tokens in lockstep (its KV in the shared pool, within
 * the budget) and candidate 0 (y+) samples from duel_pilaf_mix_logits' plus logits, candidate 1
 * (y-) from its minus logits, with request.pilaf_beta. Candidate i samples with
 * duel_rng_seed(seed + i); its logprob_sum is under the distribution it was sampled from (mixed
 * for y+ / y-). A MIXED candidate ends at the smaller of the two arms' contexts, and a request is
 * checked at submit as a MIXED one, whatever its mode. Then CANDIDATE x 2, DUEL_READY (pair
 * (0, 1), the placement from the selection rng, pilaf_mixed, no features or rewards,
 * regret_estimate 0) and FINISHED (counts over both arms in MIXED mode). At most
 * engine_params.max_pilaf_jobs MIXED requests decode at once; the others wait in submission
 * order (not refused: see inference/engine_pilaf.c) and can be cancelled while they wait.
 *
 * Arena duel requests (strategy arena, DESIGN.md section 5): request.arena_arm names a second
 * resident arm; M (even) candidates are split, M/2 per arm, as two scheduler requests decoded in
 * the same batched loop (each arm prefills the prompt once): candidates [0, M/2) come from
 * request.arm with seeds seed + i, candidates [M/2, M) from arena_arm with seeds seed + i too
 * (candidate M/2 + j samples with duel_rng_seed(seed + M/2 + j)), so each half equals that arm
 * alone with M/2 candidates and seed (resp. seed + M/2). CANDIDATE events of an arena request
 * name their arm (event.arm). Once both halves are done the reference arm computes the features
 * of all M (arena needs ENGINE_FEATURES_REFERENCE), each half is scored by its own arm's ERM
 * (or the engine's; both with the same number of heads), duel_select_arena takes each arm's
 * best by its ensemble mean, duel_place places the pair, and DUEL_READY says arena_split = M/2.
 * If either half fails or is cancelled, the other is cancelled and one ERROR (or CANCELLED)
 * event ends the request.
 *
 * Arms at run time (hot-swap, docs/SERVING.md): engine_add_arm makes a new arm resident; the
 * engine thread applies it between two scheduler steps and the call returns once it can take
 * requests. engine_retire_arm stops new submissions to an arm at once (DUEL_ENOTFOUND, like an
 * unknown arm); requests already on it finish on its weights; when the last of them has ended
 * the engine pushes one ENGINE_EVENT_ARM_RETIRED event handing the arm's model, tokenizer, ERM
 * and user pointer back to the owner, who frees them. Every arm gets a model id never used
 * before (the prefix cache's block hashes include it), so a new arm never attaches KV blocks
 * cached for another model, even one that had its slot or its name. The reference arm cannot
 * be retired.
 *
 * Ownership: the engine borrows the models, tokenizers and ERMs given at create or
 * engine_add_arm; from then until engine_destroy or their ARM_RETIRED event only the engine
 * thread may use the models (they hold scratch buffers). Tokenizers and ERMs are read-only and
 * may be shared. Events belong to the caller once popped. Arms still resident (or retiring) at
 * engine_destroy are not handed back by an event: their owner frees them after it. */
#ifndef DUEL_ENGINE_H
#define DUEL_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "compute.h"
#include "duel.h"
#include "erm.h"
#include "error.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#define ENGINE_MAX_ARM_NAME 64
#define ENGINE_DEFAULT_KV_BYTES ((size_t)256 << 20) /* KV pool budget when none is given */
#define ENGINE_DEFAULT_MAX_PILAF_JOBS 16 /* MIXED PILAF requests decoding at once (4 sequences
                                            each), when none is given */
#define ENGINE_MAX_PILAF_JOBS 4096

typedef struct engine engine;

typedef struct engine_model_params {
    const char *arm;           /* unique name ("default", "v000012"); < ENGINE_MAX_ARM_NAME */
    model *model;              /* borrowed; all models must share the KV shape (layers, kv heads,
                                  head_dim): they share one pool */
    const tokenizer *tokenizer;/* borrowed, for candidate text; NULL: no text */
} engine_model_params;

#define ENGINE_DUEL_SEED_SALT 0x6475656c2d73656cull /* "duel-sel": the selection rng's seed */

typedef enum engine_feature_source {
    ENGINE_FEATURES_REFERENCE = 0, /* the reference arm's hidden states (default) */
    ENGINE_FEATURES_POLICY,        /* the serving arm's own hidden states */
} engine_feature_source;

/* engine.features / --duel-features: "reference" or "policy"; anything else is DUEL_EINVAL. */
int engine_features_parse(const char *text, engine_feature_source *out, duel_error *err);

typedef struct engine_params {
    const engine_model_params *models;
    int num_models;
    size_t kv_memory_bytes;    /* KV pool budget (config engine.kv_memory); 0: the default */
    int kv_bytes_per_element;  /* KV storage (config engine.kv_dtype, kv_dtype_parse): 0 or 4
                                  f32, 2 bf16 (the duel's reference pass shares the pool); the
                                  backend's pool_prepare may override it (cuda: always bf16) */
    int block_size;            /* 0: KV_BLOCK_SIZE */
    int max_batch_tokens;      /* per step; 0: SCHED_DEFAULT_BATCH_TOKENS */
    int max_running;           /* 0: SCHED_DEFAULT_MAX_RUNNING */
    int max_candidates;        /* M limit; 0: 64 */
    const erm *erm;            /* borrowed, read-only while the engine lives; NULL: duel
                                  requests are refused. d_feat must be 2 * hidden_size of the
                                  feature model(s) */
    const char *reference_arm; /* ENGINE_FEATURES_REFERENCE: the arm whose hidden states are the
                                  features (the frozen reference); NULL: the first arm */
    engine_feature_source features;
    int max_pilaf_jobs;        /* MIXED PILAF requests decoding at once (config
                                  engine.max_pilaf_jobs), 1..ENGINE_MAX_PILAF_JOBS; more wait;
                                  0: ENGINE_DEFAULT_MAX_PILAF_JOBS */
    const char *backend;       /* compute backend (config engine.backend): "auto", "cpu" or a
                                  provider's name; NULL: "cpu" */
    const compute_provider *const *providers; /* backends besides the CPU (the `duel` executable
                                  passes the CUDA one); borrowed during engine_create */
    int num_providers;
} engine_params;

typedef struct engine_request {
    const char *arm;           /* NULL: the first model */
    const int32_t *tokens;     /* the prompt; copied */
    int num_tokens;
    int num_candidates;        /* M */
    sampler_params sampling;
    uint64_t seed;
    int max_new_tokens;
    const int32_t *stop_tokens;/* copied; NULL with use_eos: the model's eos ids */
    int num_stop_tokens;
    bool use_eos;              /* also stop at the model config's eos_token_id(s) */
    bool want_hidden;          /* candidates' and prompt's final hidden states */
    bool want_progress;        /* PROGRESS events */
    bool duel;                 /* score and select: DUEL_READY before FINISHED; needs M >= 2
                                  and an ERM */
    duel_strategy strategy;    /* with duel: ee_ts, bai_ts, uncertainty, passive, bon or pilaf */
    double pilaf_beta;         /* pilaf: beta >= 0 of the mixed logits */
    const char *arena_arm;     /* arena: the second arm (resident, not arm itself) */
    uint64_t fairness_key;     /* who asked (a user; the gateway: its client address's hash):
                                  requests wait for the scheduler in one FIFO per key and are
                                  admitted least recently served key first (common/fair_queue.h),
                                  so one user's burst does not queue in front of everyone */
    void *user;                /* handed back in every event */
} engine_request;

typedef enum engine_event_kind {
    ENGINE_EVENT_PROGRESS,
    ENGINE_EVENT_CANDIDATE,
    ENGINE_EVENT_FINISHED,
    ENGINE_EVENT_CANCELLED,
    ENGINE_EVENT_ERROR,
    ENGINE_EVENT_DUEL_READY, /* duel requests only, just before FINISHED */
    ENGINE_EVENT_ARM_RETIRED, /* a retired arm's last request has ended (request_id 0) */
} engine_event_kind;

typedef enum engine_finish_reason {
    ENGINE_FINISH_STOP,    /* a stop token (the last of its tokens; not in its text) */
    ENGINE_FINISH_LENGTH,  /* max_new_tokens */
    ENGINE_FINISH_CONTEXT, /* the model's context is full */
} engine_finish_reason;

typedef struct engine_timings {
    double queued_ms;       /* submit -> first scheduled */
    double first_token_ms;  /* submit -> prompt done (first token of every candidate sampled) */
    double total_ms;        /* submit -> all candidates finished */
} engine_timings;

typedef struct engine_counts {
    int prompt_tokens;
    int64_t prompt_computed;   /* prompt positions run through the model (prompt_tokens -
                                  cached_tokens when it was prefilled once) */
    int64_t cached_tokens;     /* prompt positions reused from the prefix cache */
    int64_t recomputed_tokens; /* generated positions recomputed after preemption */
    int64_t generated_tokens;  /* over all candidates */
    int preemptions;
} engine_counts;

typedef struct engine_event {
    engine_event_kind kind;
    uint64_t request_id;
    void *user;
    /* PROGRESS: count (candidate, token) pairs. CANDIDATE: candidate, its count tokens. */
    int count;
    int32_t *candidates;
    int32_t *tokens;
    int candidate;
    char *text;                /* CANDIDATE: decoded (special tokens skipped, a final stop token
                                  left out); NULL without a tokenizer */
    double logprob_sum;        /* CANDIDATE: sum of log p(token) at temperature 1, unfiltered */
    float *hidden;             /* CANDIDATE with want_hidden: hidden_size floats at its last
                                  token; FINISHED with want_hidden: at the last prompt token */
    int hidden_size;
    engine_finish_reason finish_reason;
    double finish_ms;          /* CANDIDATE: submit -> this candidate finished */
    engine_timings timings;    /* FINISHED, CANCELLED, ERROR (what is known) */
    engine_counts counts;
    int status;                /* ERROR: the DUEL_E* code */
    char *message;             /* ERROR: what went wrong */
    /* DUEL_READY: count candidates (M); features [M][d_feat]; rewards [M][num_heads] (as
     * erm_score writes them); the pair (selection order) and its placement (a left, b right);
     * regret_estimate = R-hat (duel_estimated_regret of a, b); tokens NULL. */
    duel_strategy strategy;
    float *features;
    int d_feat;
    double *ref_logprobs;      /* DUEL_READY with reference features: [M], log pi_ref of each
                                  candidate's tokens given the prompt (the reference arm's own
                                  pass; the trainer's DPO reference); NULL otherwise */
    float *rewards;
    int num_heads;
    duel_pair pair;
    duel_placement placement;
    double regret_estimate;
    bool pilaf_mixed;          /* pilaf: the MIXED mode was drawn (candidate 0 = y+, 1 = y-) */
    int arena_split;           /* arena: candidates [0, arena_split) are request.arm's, the rest
                                  arena_arm's (pair.first < arena_split <= pair.second); else 0 */
    double decode_ms;          /* submit -> all candidates finished */
    double features_ms;        /* the reference pass (0 for policy features) */
    double score_ms;           /* erm_score */
    double select_ms;          /* duel_select + duel_place + R-hat */
    /* ARM_RETIRED: the arm's name and what engine_add_arm (or create) lent; user is the arm's
     * engine_model_params.user. The engine no longer touches them. CANDIDATE of an arena
     * request: arm is the name of the arm that generated it (else NULL). */
    char *arm;
    model *arm_model;
    const tokenizer *arm_tokenizer;
    const erm *arm_erm;
} engine_event;

/* Opens the compute backend, loads every arm (and the ERM) on it, creates the pool (capacity
 * from kv_memory_bytes, storage as the backend wants it) and scheduler, starts the engine
 * thread. DUEL_EINVAL for no models, duplicate or bad arm names, models of different KV shapes, a
 * max_pilaf_jobs out of range, an unknown backend; DUEL_EDEVICE for a device backend without a
 * device (or one that failed to load an arm). */
int engine_create(const engine_params *params, engine **out, duel_error *err);
/* The compute backend engine_create opened ("cpu", "cuda", ...). */
const char *engine_backend_name(const engine *e);
/* Stops the thread (requests in flight are dropped without events), frees everything but the
 * borrowed models and tokenizers. NULL is a no-op. */
void engine_destroy(engine *e);

/* Validates and queues a request; *id gets its id (from 1, increasing). Errors, with nothing
 * queued: DUEL_ENOTFOUND for an unknown arm (or arena arm); DUEL_EINVAL for a duel without an
 * ERM, with M < 2 or a strategy outside the enum, an arena request without a second arm, with
 * the same arm twice, an odd M, policy features or ERMs of different head counts, a pilaf
 * request with M != 2, a bad beta or a reference arm of another vocabulary size, for M outside
 * 1..max_candidates (M/2 for arena), an empty prompt, token ids outside the vocabulary,
 * max_new_tokens < 1, bad sampling or stop tokens; DUEL_ELIMIT for a prompt that does not fit
 * the arm's context (for pilaf, the reference arm's too) or a candidate longer than the whole KV
 * pool (for pilaf, with its reference sequence). */
int engine_submit(engine *e, const engine_request *request, uint64_t *id, duel_error *err);

/* Asks the engine to cancel a request; its CANCELLED event follows (or its FINISHED event, if it
 * finished first). DUEL_ENOTFOUND for an id never issued, DUEL_EINVAL for a request that has
 * already finished, was cancelled or failed. */
int engine_cancel(engine *e, uint64_t id, duel_error *err);

/* Pops the next event, waiting up to timeout_seconds (< 0: forever); *event is NULL when none
 * came. Free it with engine_event_free. */
void engine_poll(engine *e, double timeout_seconds, engine_event **event);
void engine_event_free(engine_event *event);

typedef struct engine_stats {
    uint64_t steps, tokens, decode_tokens, preemptions, cached_tokens;
    uint64_t requests_submitted; /* scheduler requests (an arena request is two; a duel with
                                    reference features adds its reference pass) */
    uint64_t requests_finished, requests_cancelled, requests_failed; /* engine requests, counted
                                  as their last event is pushed (FINISHED, CANCELLED, ERROR) */
    int running, waiting, active_requests;
    int32_t kv_blocks, kv_free_blocks, kv_cached_blocks, kv_used_blocks;
    size_t kv_bytes_per_token; /* K and V of one token over all layers */
    int block_size;
    uint64_t prefix_hit_blocks, prefix_miss_blocks;
    int arms_resident;         /* taking requests */
    int arms_retiring;         /* retired, requests still running on them */
    uint64_t arms_added, arms_retired; /* engine_add_arm applied; ARM_RETIRED events pushed */
    int pilaf_running;         /* MIXED PILAF requests decoding (<= max_pilaf_jobs) */
    int pilaf_queued;          /* MIXED PILAF requests waiting for one of those slots */
    int admission_queued;      /* requests held for fair admission (engine_admission.c) */
} engine_stats;

/* A snapshot taken after the engine thread's latest step. */
void engine_stats_get(engine *e, engine_stats *out);

/* Makes a new arm resident (see the top of this file): checks it like engine_create does (name
 * unused by any resident or retiring arm, KV shape of the pool, the ERM's d_feat), queues it for
 * the engine thread and waits until the thread has applied it at a step boundary (at most one
 * step). arm_erm (borrowed, optional) scores this arm's duel requests instead of
 * engine_params.erm (a snapshot's own erm.safetensors); features still come from the feature
 * model (the reference arm by default), whose 2 x hidden_size must be its d_feat. user is handed
 * back in the arm's ARM_RETIRED event. DUEL_EINVAL for a bad arm, DUEL_ELIMIT when
 * SCHED_MAX_MODELS arms are resident or retiring. */
int engine_add_arm(engine *e, const engine_model_params *arm, const erm *arm_erm, void *user,
                   duel_error *err);

/* Retires a resident arm (see the top of this file). DUEL_ENOTFOUND for an arm that is not
 * resident (unknown or already retiring), DUEL_EINVAL for the reference arm. */
int engine_retire_arm(engine *e, const char *arm, duel_error *err);

#endif
