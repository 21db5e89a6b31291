/* duel_backend.h: the narrow interface between the gateway and whatever produces duels. The
 * gateway submits a request (conversation so far + the new user text); the backend works on its
 * own thread and reports through the sink: progress (tokens generated so far), then exactly one
 * of ready (the pair and everything the vote entry needs) or error. After cancel(id) the backend
 * may still emit events for id; the gateway ignores them. Two implementations: a deterministic
 * test backend (backend_test.c, no model) and the engine adapter (backend_engine.c, when
 * inference/engine.h is available).
 *
 * Threads: submit/cancel/queue_depth are called from the gateway's lws thread and must not block
 * for long; the sink is called from the backend's thread. */
#ifndef DUEL_GATEWAY_DUEL_BACKEND_H
#define DUEL_GATEWAY_DUEL_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "weight_format.h"

typedef struct duel_backend_turn {
    const char *user;
    const char *assistant;
} duel_backend_turn;

typedef struct duel_backend_request {
    uint64_t request_id;              /* chosen by the gateway, unique per process */
    const duel_backend_turn *history; /* earlier turns, oldest first */
    size_t n_history;
    const char *text;                 /* the new user message (valid UTF-8) */
    long long arm_snapshot;           /* snapshot version the conversation is pinned to; -1 any */
    uint64_t seed;                    /* per-duel seed */
} duel_backend_request;

/* Everything about a finished duel. All pointers are malloc'd and owned by the struct; release
 * with duel_backend_result_free. Text may be invalid UTF-8 (the gateway sanitises it). */
typedef struct duel_backend_result {
    char *text_a, *text_b;     /* shown left (a) and right (b) */
    size_t len_a, len_b;
    int cand_a, cand_b;        /* candidate indices of a and b */
    bool side_swap;            /* a is the selector's second pick */
    int num_candidates;        /* M */
    int32_t *prompt_tokens;    /* the templated prompt's token ids */
    size_t n_prompt_tokens;
    int32_t *cand_tokens;      /* all candidates' tokens, concatenated */
    size_t n_cand_tokens;
    int32_t *cand_offsets;     /* M + 1 offsets into cand_tokens */
    float *features;           /* M x d_feat, may be NULL with d_feat 0 */
    int d_feat;
    float *rewards;            /* M x num_heads, may be NULL with num_heads 0 */
    int num_heads;
    float *ref_logprobs;       /* M: log pi_ref(candidate | prompt) from the engine's reference
                                  pass; NULL when the duel had none (policy features) */
    char *gen_params_json;     /* sampling parameters as JSON */
    char *strategy;            /* selection strategy name */
    char *model_id;
    char *prompt_text;         /* the templated prompt */
    long long policy_version;  /* snapshot version that generated the candidates */
    long long generated_tokens;
} duel_backend_result;

void duel_backend_result_free(duel_backend_result *r);

typedef enum duel_backend_event_kind {
    DUEL_BACKEND_PROGRESS,
    DUEL_BACKEND_READY,
    DUEL_BACKEND_ERROR,
} duel_backend_event_kind;

typedef struct duel_backend_event {
    duel_backend_event_kind kind;
    uint64_t request_id;
    long long tokens;              /* progress: tokens generated so far over all candidates */
    duel_backend_result *result;   /* ready: ownership passes to the sink */
    char message[256];             /* error */
} duel_backend_event;

/* Called on the backend's thread; takes ownership of ev->result. Must not block for long. */
typedef void (*duel_backend_sink)(void *ctx, duel_backend_event *ev);

typedef struct duel_backend {
    const char *name;
    void *impl;
    /* Starts the backend's thread; events go to sink(sink_ctx, ...). Called once. */
    int (*start)(void *impl, duel_backend_sink sink, void *sink_ctx, duel_error *err);
    /* Queues a request (copies what it needs). DUEL_ELIMIT when the queue is full. */
    int (*submit)(void *impl, const duel_backend_request *req, duel_error *err);
    void (*cancel)(void *impl, uint64_t request_id);
    size_t (*queue_depth)(void *impl);
    /* Tokens in text (for the context limit); NULL: the gateway estimates bytes / 4. */
    long long (*count_tokens)(void *impl, const char *text, size_t len);
    /* Stops the thread (pending requests are dropped without events) and frees impl. */
    void (*destroy)(void *impl);
    /* Hot-swap (optional; NULL: one fixed model). Loads the snapshot folder dir (already
     * verified by the caller: snapshot_verify) as policy version `version`, makes it the arm new
     * duels use and retires the previous snapshot arm (duels running on it finish on its
     * weights). Called on the snapshot loader's thread: loading happens there, not on the
     * engine's. On error nothing changes and the current arm keeps serving. */
    int (*install_snapshot)(void *impl, long long version, const char *dir, duel_error *err);
    /* The policy version new duels get (0: the base model). NULL: always 0. */
    long long (*serving_version)(void *impl);
} duel_backend;

/* The deterministic test backend: answers are built from the request text and seed (no model),
 * with M = 4 candidates, 8-dim features and 3 ERM heads. step_delay_ms spaces out its progress
 * events (4 per duel). Texts starting with "!error" produce an error event; "!slow" makes each
 * step 200 ms (for cancel tests); "!long" makes long answers. */
typedef struct backend_test_config {
    int step_delay_ms;
    int queue_capacity;
} backend_test_config;

int backend_test_create(const backend_test_config *cfg, duel_backend *out, duel_error *err);

/* The engine adapter (backend_engine.c): loads the model at model_dir (config.json,
 * model.safetensors, tokenizer.json; the chat template detected from tokenizer_config.json),
 * starts an inference engine (inference/engine.h) and a poller thread. Each request is the
 * conversation rendered through the chat template; the engine decodes M candidates; the adapter
 * builds ERM features (prompt and candidate last hidden states, d_feat = 2 * hidden_size), scores
 * them with the ERM ensemble (erm_path, or a fresh seeded one), picks the pair with the strategy
 * (inference/duel.h) and places it left/right at random. With cfg.snapshots, install_snapshot
 * adds a snapshot as engine arm "v%06lld" (its own erm.safetensors scores its duels) and every
 * new duel follows the latest one (docs/SERVING.md). */
typedef struct backend_engine_config {
    const char *model_dir;
    const char *erm_path;      /* NULL: a fresh ensemble from erm_seed */
    uint64_t erm_seed;
    int erm_heads;             /* 0: ERM_DEFAULT_NUM_HEADS */
    const char *strategy;      /* "ee_ts" (default), "bai_ts", "uncertainty", "passive", "bon";
                                  "arena" with snapshots (M even): M/2 candidates from the latest
                                  snapshot, M/2 from the base model, one answer from each
                                  (ee_ts until a snapshot is resident) */
    int num_candidates;        /* M, >= 2; 0: 4 */
    float temperature;         /* sampling; 0 is greedy */
    float top_p;
    int top_k;
    int max_new_tokens;        /* 0: 128 */
    size_t kv_memory_bytes;    /* 0: the engine's default */
    int max_pilaf_jobs;        /* engine_params.max_pilaf_jobs; 0: the engine's default */
    weight_format weights;     /* engine.weights: the model's and every snapshot's storage,
                                  converted at load (snapshots on the loader thread) */
    int kv_bytes_per_element;  /* engine.kv_dtype: 0 or 4 f32, 2 bf16 */
    bool snapshots;            /* hot-swap (install_snapshot): the base model becomes the frozen
                                  reference arm whose hidden states are the ERM features of every
                                  duel (features that do not drift as snapshots replace the
                                  policy); false: the serving model's own states (no reference
                                  pass), install_snapshot is NULL */
} backend_engine_config;

int backend_engine_create(const backend_engine_config *cfg, duel_backend *out, duel_error *err);

#endif
