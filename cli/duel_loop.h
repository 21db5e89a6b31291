/* duel_loop.h: the pieces of an in-process learning loop that `duel bench loop` (votes through a
 * Redis stream to a child `duel train`) and `duel sim --inprocess` (the trainer in the same
 * process) share, so that neither has a copy of the other's: the queue that receives the serving
 * backend's events (gateway/duel_backend.h: the gateway's own engine adapter, selection and
 * ERM scoring), serving one duel and waiting for it, the vote entry of a served duel
 * (common/vote_entry.h), a model's answers to a prompt set and their comparison by an oracle,
 * sequence log-probabilities, percentiles. Only cli/ uses it. */
#ifndef DUEL_CLI_DUEL_LOOP_H
#define DUEL_CLI_DUEL_LOOP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "duel_backend.h"
#include "model.h"
#include "oracle.h"
#include "vote_entry.h"

/* ---- the backend's events ---------------------------------------------------------------- */

/* One event from the backend's thread; at = when the sink got it (duel_time_seconds). */
typedef struct loop_event {
    struct loop_event *next;
    duel_backend_event ev;
    double at;
} loop_event;

/* Events pushed by the backend's thread (loop_queue_sink) and popped by the main thread. */
typedef struct loop_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    loop_event *head, *tail;
} loop_queue;

void loop_queue_init(loop_queue *q);
/* Frees the events still queued. */
void loop_queue_destroy(loop_queue *q);
/* A duel_backend_sink: ctx is the loop_queue. */
void loop_queue_sink(void *ctx, duel_backend_event *ev);
/* The next event, waiting up to timeout_s; NULL on timeout. Free with loop_event_free. */
loop_event *loop_queue_pop(loop_queue *q, double timeout_s);
void loop_event_free(loop_event *e);

/* Submits req and waits (up to timeout_s) for its ready event, skipping progress: one duel at a
 * time, so the engine decodes its M candidates alone and the result depends on the seeds only.
 * *out is the backend's result (free with duel_backend_result_free). An error event or a
 * timeout is DUEL_EIO naming the request. */
int loop_serve_one(duel_backend *backend, loop_queue *q, const duel_backend_request *req,
                   double timeout_s, duel_backend_result **out, duel_error *err);

/* ---- votes --------------------------------------------------------------------------------- */

/* The vote entry of a served duel voted `choice`: e borrows r's arrays (r must outlive it; do
 * not vote_entry_free it), texts borrow r's texts (chosen = the winner, a on a tie or
 * both_bad). */
void loop_vote_entry(const duel_backend_result *r, oracle_choice choice, const char *vote_id,
                     const char *duel_id, int64_t ts_ms, vote_entry *e, vote_entry_texts *texts);
vote_choice loop_vote_choice(oracle_choice choice);

/* ---- a model's answers, and their comparison -------------------------------------------- */

typedef struct loop_answer {
    char *text;      /* as the chat page shows it: without the template's answer prefix */
    int32_t *tokens; /* the generated tokens (a final stop token included) */
    int n_tokens;
    double logprob;  /* sum of log p(token) under the answering model at temperature 1 */
} loop_answer;

/* Answers of one model to the first turn of `count` prompts, `samples` each. */
typedef struct loop_answers {
    int count, samples;
    loop_answer *items;   /* [count * samples]: prompt i's answer k at i * samples + k */
    int32_t **prompts;    /* [count]: the templated prompt's tokens */
    int *n_prompt;
} loop_answers;

typedef struct loop_answer_params {
    int max_new_tokens;
    double temperature; /* 0: greedy */
    int samples;        /* answers per prompt (candidates of one request) */
    int in_flight;      /* requests decoded at once; 1: one at a time, so the answers depend on
                           the seeds alone (batched decoding rounds differently) */
    uint64_t seed;      /* prompt i's request has seed + i (answer k: seed + i + k) */
} loop_answer_params;

/* A KV pool budget for `sequences` sequences of at most a full context each (at least 4 MiB). */
size_t loop_kv_bytes(const model_config *config, int sequences, int max_new_tokens);

/* The model in dir (HF folder or snapshot) answers the first turn of set's first `count`
 * prompts (chat template and stop tokens as the engine adapter uses them). */
int loop_answers_make(const char *dir, const oracle_prompt_set *set, int count,
                      const loop_answer_params *params, loop_answers *out, duel_error *err);
void loop_answers_free(loop_answers *a);

/* Per prompt: the mean oracle score of its `samples` answers before and after; P = the user's
 * win probability of after over before (oracle_preference_win_probability: a tie is 1/2).
 * win_rate = mean P, win_share = share of prompts with P > 1/2, changed = prompts with any
 * answer that differs. score_before/after (optional, [count]) receive the per-prompt means. */
typedef struct loop_comparison {
    double win_rate, win_share, score_before, score_after;
    int changed;
} loop_comparison;

int loop_compare(oracle_user *oracle, const oracle_prompt_set *set, const loop_answers *before,
                 const loop_answers *after, loop_comparison *out, double *score_before,
                 double *score_after, duel_error *err);

/* Mean oracle score of a's answers (all prompts and samples). */
int loop_mean_score(oracle_user *oracle, const oracle_prompt_set *set, const loop_answers *a,
                    double *out, duel_error *err);

/* log p(answer | prompt) under m, summed over the answer's tokens at temperature 1 (the model's
 * own forward pass over prompt + answer on a contiguous cache, which is reset first). */
int loop_sequence_logprob(model *m, const int32_t *prompt, int n_prompt, const int32_t *answer,
                          int n_answer, double *out, duel_error *err);

/* ---- figures ------------------------------------------------------------------------------ */

/* The q-quantile (0..1, nearest rank below) of v[0..n), which it sorts; 0 when n is 0. */
double loop_percentile(double *v, int n, double q);

#endif
