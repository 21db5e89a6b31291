/* engine_internal.h: what the engine's files share (engine.h is the public contract). The
 * engine is split by responsibility, one file per idea:
 *   engine.c          lifecycle (create, destroy), the engine thread's loop and command
 *                     dispatch, the stats snapshot, engine_cancel / engine_poll;
 *   engine_submit.c   engine_submit: a request checked and translated into a command, in the
 *                     caller's thread;
 *   engine_requests.c the engine thread's table of requests: starting one on the scheduler,
 *                     turning scheduler events into engine events, arena halves, cancels;
 *   engine_arms.c     the arm table: arms added and retired at run time, their reference counts;
 *   engine_duel.c     a finished duel request's features, ERM scores and pair (DUEL_READY);
 *   engine_pilaf.c    PILAF requests: the mode, the mixed-logits step the scheduler runs, the
 *                     bound on concurrent mixed requests and the queue behind it;
 *   engine_events.c   building, pushing and freeing engine events; the per-id state table.
 * The engine reaches the device only through its compute backend (compute.h, chosen at create
 * by engine_params.backend): arms are loaded on it (engine_arms.c), the scheduler runs every
 * forward and draw on it, and ERM scores come from it (engine_duel.c). The duel's reference
 * pass is a scoring request of the scheduler (forced tokens) on the reference arm, in the shared
 * pool within the KV budget.
 *
 * Threads and ownership:
 *   - The engine thread owns the scheduler, the KV pool, the models (borrowed at create) and the
 *     table of active requests (engine_active). It pops commands, runs scheduler steps while
 *     there is work, and turns the scheduler's events into engine_events (deep copies, text
 *     decoded) that it pushes to the event queue.
 *   - Callers own what they pass in (copied at submit) and the events they pop.
 *   - The mutex guards the id counter, the per-id state table, the stats snapshot and the arm
 *     table's states (with the scheduler's model table, which sched_validate reads):
 *     engine_submit validates in the caller's thread under it, and pushes its command before
 *     unlocking, so commands reach the engine thread in the order their checks saw the arms.
 *   - Arm slots: FREE -> ADDING (engine_add_arm fills it, caller thread) -> RESIDENT (the
 *     engine thread, between steps: sched_set_model) -> RETIRING (engine_retire_arm) -> FREE
 *     (the engine thread, once no request holds it: ARM_RETIRED event). Only the engine thread
 *     turns a slot FREE or RESIDENT, and only while no request refers to the slot, so the engine
 *     thread reads arms[] without the lock. refs (engine thread only) counts the requests on an
 *     arm, running or waiting behind the PILAF bound.
 * The state table keeps one byte per id ever issued (1 MiB per million requests) so that
 * engine_cancel can tell "never issued" from "already finished" without the engine thread. */
#ifndef DUEL_ENGINE_INTERNAL_H
#define DUEL_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdlib.h>

#include "compute.h"
#include "engine.h"
#include "engine_queue.h"
#include "fair_queue.h"
#include "kv_cache.h"
#include "scheduler.h"

#define ENGINE_DEFAULT_MAX_CANDIDATES 64

enum { ENGINE_STATE_UNKNOWN = 0, ENGINE_STATE_ACTIVE = 1, ENGINE_STATE_ENDED = 2 };

enum { ARM_FREE = 0, ARM_ADDING, ARM_RESIDENT, ARM_RETIRING };

typedef struct engine_arm {
    int state;            /* ARM_*, under the lock */
    char name[ENGINE_MAX_ARM_NAME];
    model *model;
    compute_arm *dev;     /* its weights on the backend (engine thread once RESIDENT) */
    compute_erm *erm_dev; /* its own ERM on the backend, or NULL */
    const tokenizer *tokenizer;
    const erm *erm;       /* NULL: the engine's */
    void *user;
    uint64_t model_id;    /* never reused */
    int32_t eos[MODEL_CONFIG_MAX_EOS];
    int num_eos;
    int refs;             /* engine thread: requests on this arm */
    int add_status;       /* ADDING -> FREE on failure: why (under the lock) */
    char add_message[DUEL_ERROR_MESSAGE_MAX];
} engine_arm;

typedef enum engine_command_kind {
    ENGINE_CMD_SUBMIT,
    ENGINE_CMD_CANCEL,
    ENGINE_CMD_ADD_ARM,    /* id: the slot */
    ENGINE_CMD_RETIRE_ARM, /* id: the slot */
} engine_command_kind;

typedef struct engine_command {
    engine_command_kind kind;
    uint64_t id;
    bool duel, want_hidden;
    duel_strategy strategy;
    double pilaf_beta;
    bool pilaf_mixed;            /* pilaf: the mode drawn at submit (engine_pilaf.c) */
    bool pilaf_admitted;         /* pilaf: taken off the queue into a free slot */
    uint64_t fairness_key;       /* SUBMIT: engine_request.fairness_key */
    int arena_model;             /* arena: the second arm's slot; else -1 */
    sched_request_params params; /* SUBMIT: prompt and stop_tokens point at the copies (arena:
                                    the first half; the second is the same on arena_model with
                                    seed + M/2) */
    int32_t *prompt;
    int32_t stop[SCHED_MAX_STOP_TOKENS];
} engine_command;

/* What the scheduler's user pointer is: a request's half (arena) or the whole of it. */
typedef struct engine_part {
    struct engine_active *owner;
    int index; /* 0: arm, candidates from 0; 1 (arena): arena_arm, candidates from M/2 */
} engine_part;

enum { SCORE_NONE = 0, SCORE_QUEUED, SCORE_RUNNING };

/* A request the scheduler holds (engine thread only). */
typedef struct engine_active {
    uint64_t id, sched_id;
    int arm;
    engine_part parts[3]; /* 2: the reference pass (scoring request) of a duel */
    /* Arena requests: the second half is scheduler request arena_sched_id on arena_arm. */
    int arena_arm;        /* -1: not an arena request */
    uint64_t arena_sched_id;
    bool part_done[2];
    int parts_left;
    int fail_status;      /* the first failure of a half */
    char fail_message[DUEL_ERROR_MESSAGE_MAX];
    bool cancelled;
    engine_counts counts; /* summed over the halves */
    void *user;
    double submit_time;
    bool want_hidden; /* the caller's (a duel with policy features asks the scheduler anyway) */
    /* Duel requests only. */
    bool duel;
    duel_strategy strategy;
    uint64_t seed;
    bool pilaf_mixed;      /* pilaf: MIXED mode (holds one of the max_pilaf_jobs slots) */
    double pilaf_beta;
    int num_candidates, prompt_len, hidden_size;
    int32_t *prompt;       /* [prompt_len] */
    int32_t **cand_tokens; /* [M] finished candidates' tokens (not for pilaf: no features) */
    int *cand_counts;      /* [M] */
    float *cand_hidden;    /* [M][hidden_size] (policy features) */
    bool lost;             /* a candidate's copy failed (out of memory) */
    /* Reference features (engine_duel.c): once the candidates are done, a scoring request on
     * the reference arm (part 2) fills features and ref_logprobs; FINISHED waits in finished. */
    int score_state;       /* SCORE_* */
    uint64_t score_sched_id;
    uint64_t arrival;      /* the scheduler's arrival of the first half (scoring keeps it) */
    engine_event *finished;
    float *features;       /* [M][2 * feature hidden] */
    double *ref_logprobs;  /* [M] */
    double score_start, features_ms;
} engine_active;

struct engine {
    engine_arm arms[SCHED_MAX_MODELS];
    int num_arms;         /* slots ever used (a bound for loops) */
    uint64_t next_model_id; /* under the lock */
    pthread_cond_t arm_applied; /* with lock: an ADDING slot left ADDING */
    compute_backend *backend;
    char backend_name[COMPUTE_MAX_NAME];
    kv_pool *pool;
    bool pool_attached;
    scheduler *sched;
    engine_queue *commands, *events;
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t lock; /* guards next_id, states, stats */
    uint64_t next_id;
    uint8_t *states;      /* [states_cap], by id */
    size_t states_cap;
    engine_stats stats;

    const erm *erm;       /* borrowed; NULL: no duels */
    compute_erm *erm_dev; /* erm on the backend */
    int ref_arm;          /* ENGINE_FEATURES_REFERENCE */
    engine_feature_source features;

    /* Engine thread only. */
    engine_active **active;
    int num_active, cap_active;
    uint64_t *deferred_cancels; /* scheduler ids to cancel after the step (arena halves) */
    int num_deferred, cap_deferred;
    int max_pilaf_jobs;   /* MIXED PILAF requests in the scheduler at once */
    int pilaf_running;    /* of them now */
    engine_command **pilaf_queued; /* MIXED PILAF requests waiting for a slot, oldest first */
    int num_pilaf_queued, cap_pilaf_queued;
    fair_queue admission;         /* SUBMIT commands not yet in the scheduler, per fairness key
                                     (engine_admission.c) */
    engine_active **score_queued; /* duels whose reference pass is to be submitted after the
                                     step (the scheduler's lists are not changed inside it) */
    int num_score_queued, cap_score_queued;
};

/* ---- engine_submit.c ---------------------------------------------------------------------- */

void engine_command_free(engine_command *cmd);

/* Room for one more element in a growable array of *cap elements, n in use (doubling from 8):
 * false when out of memory, with nothing changed. */
static inline bool engine_array_reserve(void **array, int n, int *cap, size_t elem) {
    if (n < *cap) return true;
    int grown_cap = *cap ? 2 * *cap : 8;
    void *grown = realloc(*array, (size_t)grown_cap * elem);
    if (!grown) return false;
    *array = grown;
    *cap = grown_cap;
    return true;
}

/* ---- engine_events.c ---------------------------------------------------------------------- */

void engine_set_state(engine *e, uint64_t id, uint8_t state);
/* Pushes ev to the event queue (frees it when the queue cannot take it: out of memory). */
void engine_push_event(engine *e, engine_event *ev);
/* An ERROR event for request id. */
void engine_push_error(engine *e, uint64_t id, void *user, int status, const char *message);
float *engine_copy_floats(const float *src, int n);
int32_t *engine_copy_ints(const int32_t *src, int n);

/* ---- engine_arms.c ------------------------------------------------------------------------ */

/* Fills a RESIDENT slot of the arm table from mp (engine_create; no thread yet). */
void engine_arm_fill(engine_arm *arm, const engine_model_params *mp, uint64_t model_id);
/* Loads the arm's model (and own ERM) on the engine's backend; unloads on failure. */
int engine_arm_load(engine *e, engine_arm *arm, duel_error *err);
/* Releases what engine_arm_load loaded (NULL fields are skipped). */
void engine_arm_unload(engine *e, engine_arm *arm);
/* The scheduler's view of an arm's model. */
sched_model_info engine_arm_sched_info(const engine_arm *arm);
/* With the lock held: a RESIDENT arm by name (NULL: slot 0), or -1. */
int engine_arm_lookup_locked(const engine *e, const char *name);
/* Engine thread: one request fewer on the arm; a RETIRING arm left without requests goes back
 * to its owner (ARM_RETIRED event). */
void engine_arm_unref(engine *e, int slot);
/* Engine thread, command handlers (between steps). */
void engine_arm_apply_add(engine *e, int slot);
void engine_arm_apply_retire(engine *e, int slot);

/* ---- engine_requests.c -------------------------------------------------------------------- */

/* Engine thread: starts a SUBMIT command's request on the scheduler (cmd's prompt may be taken
 * over); failures end it with an ERROR event. */
void engine_request_start(engine *e, engine_command *cmd);
/* Engine thread: a CANCEL command. */
void engine_request_cancel(engine *e, uint64_t id);
/* The scheduler's event callback (engine thread). */
void engine_on_sched_event(void *ctx, const sched_event *se);
/* Cancels the arena halves whose cancel was deferred past a step's callbacks. */
void engine_flush_deferred_cancels(engine *e);
void engine_active_free(engine_active *a);
/* Ends request a: its state ENDED, out of the table, counted, ev (may be NULL) pushed as its
 * last event, then its arms' refs released. */
void engine_request_end(engine *e, engine_active *a, engine_event *ev);

/* ---- engine_duel.c ------------------------------------------------------------------------ */

/* Checks a finished duel request's candidates and ERMs before features are made. */
int engine_duel_check(const engine *e, const engine_active *a, duel_error *err);
/* Reference features: queues the reference pass (submitted by engine_duel_submit_queued after
 * the step); finished (the request's FINISHED event) waits in a until it is done. */
int engine_duel_queue_scoring(engine *e, engine_active *a, engine_event *finished,
                              duel_error *err);
/* Engine thread, outside a step: submits the queued reference passes (one that cannot run
 * ends its request with an ERROR event). */
void engine_duel_submit_queued(engine *e);
/* Engine thread: a duel whose reference pass is queued is cancelled (true) or was not queued. */
bool engine_duel_cancel_queued(engine *e, engine_active *a);
/* The scheduler's events of a reference pass (part 2). */
void engine_duel_on_score_event(engine *e, engine_active *a, const sched_event *se);
/* The features (policy: from prompt_hidden and the candidates' hidden states; reference: the
 * pass's), rewards and pair of a finished duel request (engine thread); *out gets the
 * DUEL_READY event. */
int engine_duel_ready(engine *e, engine_active *a, const float *prompt_hidden, double decode_ms,
                      engine_event **out, duel_error *err);

/* ---- engine_pilaf.c ----------------------------------------------------------------------- */

/* Any thread: whether a PILAF request of this seed draws the MIXED mode. */
bool engine_pilaf_mode_mixed(uint64_t seed);
/* Any thread: makes p a MIXED request (the reference arm in lockstep, the mixing step). */
void engine_pilaf_lockstep(const engine *e, sched_request_params *p);
/* Engine thread, a PILAF command about to start: a PLAIN one loses its reference (false: start
 * it); a MIXED one beyond the bound is queued (true: taken, nothing more to do). */
bool engine_pilaf_start(engine *e, engine_command *cmd);
/* ---- engine_admission.c ------------------------------------------------------------------- */

/* Engine thread: holds a SUBMIT command (taking it over: true) in the fair admission queue;
 * false (an ERROR event pushed, the caller frees cmd) when out of memory. */
bool engine_admission_hold(engine *e, engine_command *cmd);
/* Engine thread, outside a step: starts held requests, fairly across keys, while the
 * scheduler has fewer than ENGINE_ADMIT_WAITING sequences waiting. */
void engine_admission_admit(engine *e);
/* Engine thread: cancels a held request (its CANCELLED event pushed); false when id is not
 * held. */
bool engine_admission_cancel(engine *e, uint64_t id);
/* Engine thread: a held command (not in the scheduler) ends as cancelled: its state, the
 * count, its CANCELLED event; the command is freed and the arms it held are released. */
void engine_cancel_held(engine *e, engine_command *cmd);
void engine_admission_free_all(engine *e);

/* Engine thread, outside a step: starts queued MIXED requests while slots are free. */
void engine_pilaf_admit(engine *e);
/* Engine thread: cancels a queued request; false when id is not queued. */
bool engine_pilaf_cancel_queued(engine *e, uint64_t id);
/* A finished PILAF request's DUEL_READY event. */
int engine_pilaf_ready(const engine_active *a, double decode_ms, engine_event **out,
                       duel_error *err);
void engine_pilaf_free_all(engine *e);

#endif
