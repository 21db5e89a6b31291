/* scheduler.h: continuous batching over the paged KV pool (DESIGN.md section 4).
 *
 * A request is a prompt, a model (by index), M candidates and sampling parameters. The scheduler
 * prefills the prompt once (one sequence), then forks it into M sequences that share the prompt's
 * blocks; candidate i samples with its own RNG seeded duel_rng_seed(seed + i), so that a request
 * with seed s + i and M = 1 reproduces candidate i. Every candidate ends at a stop token, after
 * max_new_tokens, or at the model's context; with want_hidden it then runs its last token once
 * more to report the final-norm hidden state there (the ERM's feature).
 *
 * One step (sched_step) builds one batch: first every running sequence that decodes (one token,
 * oldest first), then running sequences in the middle of a chunked prefill, then new or
 * preempted sequences from the waiting queue (oldest first, strictly in order), each taking up
 * to the remaining token budget (max_batch_tokens). A sequence's next piece is always
 * tokens[kv.num_tokens .. n_tokens): a prefill, a recompute after preemption and a decode are
 * the same thing of different lengths, and the logits of the last token give the next token.
 * New sequences first attach the prefix cache's blocks (kv_prefix_lookup over all but the last
 * token), so a conversation's next turn and a preempted sequence skip what is cached.
 * When a running sequence cannot reserve its blocks, the youngest running sequence (maybe
 * itself) is preempted: its blocks are freed and it goes back to the waiting queue with its
 * tokens, to be recomputed; nothing is dropped. No admission happens in a step that preempted.
 * The batch runs on the compute backend (compute.h): the copy-on-write copies the pool recorded
 * first, then one compute_forward per model over its sequences' pieces (their last-token logits
 * stay in the backend, one row per sequence), then the new tokens are committed and the
 * sequences whose piece reached their end sample their next token, all of the step's draws in
 * one compute_sample_rows call (only ids and log-probabilities come back; a request with a
 * logits step reads its rows back and samples on the host).
 *
 * A scoring request (forced tokens: the duel's reference pass, engine_duel.c) samples nothing:
 * candidate i's tokens are given, and the request runs prompt + those tokens through its model
 * in the same batched steps, reporting each candidate's log-probability of its tokens given the
 * prompt and, with want_hidden, the hidden states at the last prompt and last candidate token.
 *
 * A request may carry a logits step and a reference model decoded in lockstep (PILAF's mixed
 * logits): each candidate then holds two KV sequences, one per model, that are planned,
 * reserved, run, committed, preempted and freed together, so both models' logits after the
 * same tokens meet where the candidate samples.
 *
 * Age is (request arrival, candidate index): "youngest" is the latest request's highest
 * candidate. Requests are validated at submit so that every accepted request can finish: its
 * prompt fits the context and one candidate alone fits the pool.
 *
 * Not thread-safe: one thread (the engine's) owns the scheduler, the pool and the models. */
#ifndef DUEL_SCHEDULER_H
#define DUEL_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "compute.h"
#include "error.h"
#include "kv_cache.h"
#include "model.h"
#include "sampler.h"

#define SCHED_MAX_MODELS 64           /* resident models (snapshots) */
#define SCHED_MAX_CANDIDATES 1024     /* M (duel.h's DUEL_MAX_CANDIDATES) */
#define SCHED_MAX_STOP_TOKENS 32      /* stop token ids per request */
#define SCHED_DEFAULT_BATCH_TOKENS 256
#define SCHED_DEFAULT_MAX_RUNNING 256

typedef struct scheduler scheduler;

typedef struct sched_model_info {
    compute_arm *arm;  /* the model's weights on the scheduler's backend (borrowed) */
    uint64_t model_id; /* distinct per model: part of every block hash */
    int vocab_size;    /* logits per row */
    int hidden_size;   /* floats of a hidden state */
    int max_context;   /* tokens (prompt + generated) */
} sched_model_info;

typedef struct sched_params {
    int max_batch_tokens;  /* tokens per step; 0 = SCHED_DEFAULT_BATCH_TOKENS */
    int max_running;       /* sequences admitted from the waiting queue while this many hold
                              blocks (forks may exceed it); 0 = SCHED_DEFAULT_MAX_RUNNING */
    int max_candidates;    /* M limit, <= SCHED_MAX_CANDIDATES; 0 = SCHED_MAX_CANDIDATES */
} sched_params;

/* A request's logits step, run wherever the request samples (PILAF's mixed logits, DESIGN.md
 * section 5): turns the logits that candidate `candidate` got from the request's model (and,
 * with a lockstep reference model, the reference's logits after the same tokens; else NULL)
 * into the vocab_size logits it samples from, in out. Runs on the owner thread inside
 * sched_step; a non-zero return fails the request with err's message. The candidate's
 * logprob_sum is then under the distribution it sampled from. */
typedef int (*sched_logits_fn)(void *ctx, int candidate, const float *logits,
                               const float *ref_logits, int vocab_size, float *out,
                               duel_error *err);

typedef struct sched_request_params {
    int model;                  /* index into the models given at create */
    const int32_t *prompt;      /* copied */
    int prompt_len;             /* >= 1, < the model's max_context */
    int num_candidates;         /* M, 1 .. max_candidates */
    sampler_params sampling;
    uint64_t seed;              /* candidate i: duel_rng_seed(seed + i) */
    int max_new_tokens;         /* >= 1 */
    const int32_t *stop_tokens; /* copied; a sampled stop token ends the candidate (and is part
                                   of its tokens) */
    int num_stop_tokens;
    bool want_hidden;           /* report each candidate's last-token hidden state */
    bool want_progress;         /* SCHED_EVENT_PROGRESS every step with new tokens */
    void *user;                 /* handed back in every event */
    double submit_time;         /* duel_time_seconds() of the caller's submit; 0 = now */
    /* Lockstep reference (PILAF): with use_ref_model, every candidate also runs its tokens
     * through model ref_model (the same vocabulary) as a second KV sequence of the pool, whose
     * blocks carry that model's id; it advances in the same steps as the candidate's own
     * sequence, so the reference's logits after the same tokens are there whenever the
     * candidate samples (logits_step, required then, combines them). Each piece costs twice
     * its tokens of the step's budget and both sequences' blocks; preemption frees both; a
     * candidate ends at the smaller of the two contexts. The prompt is prefilled once per model
     * and its blocks shared by the candidates on each. */
    bool use_ref_model;
    int ref_model;
    sched_logits_fn logits_step; /* NULL: sample the model's logits as they are */
    void *logits_ctx;            /* handed to logits_step */
    /* Scoring (see the top): forced[i][0 .. forced_counts[i]) are candidate i's tokens (copied;
     * each count >= 1, prompt + count within the context). Nothing is sampled: CANDIDATE's
     * logprob_sum is log p(forced tokens | prompt) at temperature 1, unfiltered, its tokens the
     * forced ones, its hidden (want_hidden) the state at the last one; sampling, max_new_tokens
     * and stop tokens are ignored (sampling must still validate); no lockstep reference. */
    const int32_t *const *forced;
    const int *forced_counts;
    /* 0: the request arrives now (the youngest). Else the arrival of an earlier request that
     * has ended (its DONE's stats.arrival), whose place in the age order this one takes: a
     * continuation of that request (the duel's scoring) is not queued behind later ones. */
    uint64_t arrival;
} sched_request_params;

typedef enum sched_event_kind {
    SCHED_EVENT_PROGRESS,  /* new tokens of some candidates in this step */
    SCHED_EVENT_CANDIDATE, /* one candidate finished */
    SCHED_EVENT_DONE,      /* the request finished (all candidates), was cancelled or failed */
} sched_event_kind;

typedef enum sched_finish_reason {
    SCHED_FINISH_STOP,      /* sampled a stop token */
    SCHED_FINISH_LENGTH,    /* max_new_tokens */
    SCHED_FINISH_CONTEXT,   /* the model's context is full */
} sched_finish_reason;

typedef struct sched_request_stats {
    int prompt_tokens;
    int64_t prompt_computed;  /* prompt positions run through the model (all admissions); equal
                                 to prompt_tokens - cached when prefilled once (with a lockstep
                                 reference: summed over both models, as are the next two) */
    int64_t cached_tokens;    /* prompt positions attached from the prefix cache (first
                                 admission of the prompt sequence) */
    int64_t recomputed_tokens;/* generated positions recomputed after a preemption */
    int64_t generated_tokens; /* sampled, over all candidates */
    int preemptions;
    double submit_time, first_scheduled_time, prompt_done_time, done_time; /* duel_time_seconds */
    uint64_t arrival;         /* its place in the age order (sched_request_params.arrival) */
} sched_request_stats;

/* Pointers inside are valid during the callback only. */
typedef struct sched_event {
    sched_event_kind kind;
    uint64_t request_id;
    void *user;
    /* PROGRESS: count pairs (candidates[i], tokens[i]), in sampling order. */
    int count;
    const int32_t *candidates;
    const int32_t *tokens;
    /* CANDIDATE: the candidate's index and generated tokens (count of them, in tokens), summed
     * log-probability (temperature 1, unfiltered) and, with want_hidden, hidden (hidden_size
     * floats at the last token); finish_time. */
    int candidate;
    double logprob_sum;
    const float *hidden;
    sched_finish_reason finish_reason;
    double finish_time;
    /* DONE: status 0 when every candidate finished or the request was cancelled (cancelled =
     * true), else the error code that failed it, with message; stats; prompt_hidden
     * (hidden_size floats at the last prompt token, with want_hidden; NULL when the prompt was
     * not done). */
    bool cancelled;
    int status;
    const char *message;
    const sched_request_stats *stats;
    const float *prompt_hidden;
} sched_event;

typedef void (*sched_event_fn)(void *ctx, const sched_event *event);

typedef struct sched_stats {
    uint64_t steps;
    uint64_t tokens;          /* positions run through the model */
    uint64_t decode_tokens;   /* of which single-token pieces */
    uint64_t preemptions;
    uint64_t cached_tokens;   /* attached from the prefix cache at admissions */
    uint64_t requests_submitted, requests_finished, requests_cancelled, requests_failed;
    int running;              /* sequences holding blocks */
    int waiting;              /* sequences queued for (re)admission */
    int active_requests;
} sched_stats;

/* models[0..n_models): copied (their arms are on backend). The pool's shape must suit every
 * model (the forward checks), and the pool must be attached to backend (compute_pool_attach). */
int sched_create(const sched_params *params, kv_pool *pool, const sched_model_info *models,
                 int n_models, compute_backend *backend, scheduler **out, duel_error *err);
/* Replaces model `index` (< the number of models) or appends one (== it), for models loaded
 * while the scheduler runs (hot-swapped snapshots). No active request may use index, and
 * model_id must be new: it is part of every block hash, so a fresh id guarantees that no
 * block cached for an earlier model of that index is ever attached to the new one. DUEL_EINVAL
 * otherwise. Owner thread only (sched_validate reads the table: the owner serialises). */
int sched_set_model(scheduler *s, int index, const sched_model_info *info, duel_error *err);
/* Frees every sequence (their blocks go back to the pool) without events. NULL is a no-op. */
void sched_destroy(scheduler *s);

/* The checks of sched_submit alone. Reads only what is fixed at create (models, limits, the
 * pool's size), so another thread may call it while the owner steps. */
int sched_validate(const scheduler *s, const sched_request_params *params, duel_error *err);

/* Validates and queues a request; *id gets its id (ids start at 1 and increase). DUEL_EINVAL
 * for a bad model index, empty prompt, token ids outside the vocabulary, M or max_new_tokens out
 * of range, bad sampling parameters, a lockstep reference that is not a model, has another
 * vocabulary size or comes without a logits step, forced tokens with a reference or outside the
 * vocabulary, an arrival not yet issued; DUEL_ELIMIT for a prompt (with its forced tokens) that
 * does not fit the context (either model's) or a candidate (with its reference sequence) that
 * does not fit the whole pool. Nothing is queued on error. */
int sched_submit(scheduler *s, const sched_request_params *params, uint64_t *id,
                 duel_error *err);

/* Cancels an active request: its sequences are freed and a DONE event (cancelled) is emitted
 * through on_event before this returns. DUEL_ENOTFOUND for an id that is not active (unknown,
 * finished or already cancelled). */
int sched_cancel(scheduler *s, uint64_t id, sched_event_fn on_event, void *ctx, duel_error *err);

/* Runs one step; events go to on_event (may be NULL). Returns the number of positions run
 * (0 when idle) or a negative error from the backend or an allocation, in which case
 * the step's requests were failed (DONE events with the error) and the scheduler stays usable. */
int sched_step(scheduler *s, sched_event_fn on_event, void *ctx, duel_error *err);

/* Whether any request is active. */
bool sched_has_work(const scheduler *s);
void sched_stats_get(const scheduler *s, sched_stats *out);

/* Checks the scheduler's invariants (running sequences hold blocks, waiting ones hold none,
 * queues sorted by age, every sequence belongs to an active request, a candidate's lockstep
 * reference sequence holds the positions it holds) and then kv_pool_check over all live
 * sequences (reference sequences included). For tests; O(pool + sequences). */
int sched_check(const scheduler *s, duel_error *err);

#endif
