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

struct model; /* inference/model.h */

typedef struct duel_backend_turn {
    const char *user;
    const char *assistant;
    const int32_t *ids; /* the turn as encode_turn gave it, or NULL (then every turn's is NULL) */
    size_t n_ids;
} duel_backend_turn;

/* The serving knobs a duel is generated with (common/knobs.h; gateway/console.c reads
 * duel:knobs and the gateway hands the set in effect with every request, so a change takes effect
 * at the next duel). The result's gen_params_json records the values used. */
typedef struct duel_backend_params {
    char strategy[16];     /* ee_ts, bai_ts, uncertainty, passive, bon, pilaf, arena */
    int num_candidates;    /* M (pilaf: 2 whatever this says) */
    float temperature, top_p;
    int top_k, max_new_tokens;
    double arena_fraction; /* share of duels served as arena when a snapshot serves (M even) */
} duel_backend_params;

typedef struct duel_backend_request {
    uint64_t request_id;              /* chosen by the gateway, unique per process */
    const duel_backend_turn *history; /* earlier turns, oldest first */
    size_t n_history;
    const char *text;                 /* the new user message (valid UTF-8) */
    long long arm_snapshot;           /* snapshot version the conversation is pinned to; -1 any
                                         (the latest), 0 the base model (a rollout's "base") */
    /* A rollout's arena battle (docs/SERVING.md, "Rollouts"): one candidate from arm_snapshot's
     * arm, one from battle_snapshot's (the same pins as arm_snapshot), placed at random; the
     * vote's gen_params names both arms (arena_arms, arena_versions, arena_split). */
    bool battle;
    long long battle_snapshot;
    const char *arm_name;             /* the rollout arm(s) serving it, recorded in gen_params */
    const char *battle_arm_name;      /* (arm, and arena_arms); NULL: no rollout */
    /* A rollout is in effect: the gateway chose battles itself, so the backend's own
     * arena_fraction draw (the latest snapshot against the base) is off. */
    bool rollout;
    uint64_t seed;                    /* per-duel seed */
    const duel_backend_params *params; /* NULL: the backend's configured ones */
    uint64_t fairness_key;            /* who asked (the gateway: a hash of the client's address):
                                         requests are admitted fairly across keys, in order
                                         within one (common/fair_queue.h); 0 is a key too */
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
    char *gen_params_json;     /* the parameters used, as JSON: strategy, M, temperature, top_p,
                                  top_k, max_new_tokens, arena_fraction, seed (and arena's split) */
    double regret_estimate;    /* R-hat of the pair (duel_estimated_regret); NAN: none */
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
    /* Votes on its duels can train the policy (a model's answers: the engine adapter). false
     * (the test backend's canned answers): the gateway keeps their votes apart, in
     * GATEWAY_TEST_VOTE_STREAM, never in duel:prefs, and tells the page. */
    bool trainable;
    /* Starts the backend's thread; events go to sink(sink_ctx, ...). Called once. */
    int (*start)(void *impl, duel_backend_sink sink, void *sink_ctx, duel_error *err);
    /* Queues a request (copies what it needs). DUEL_ELIMIT when the queue is full. */
    int (*submit)(void *impl, const duel_backend_request *req, duel_error *err);
    void (*cancel)(void *impl, uint64_t request_id);
    size_t (*queue_depth)(void *impl);
    /* Tokens in text (for the context limit); NULL: the gateway estimates bytes / 4. */
    long long (*count_tokens)(void *impl, const char *text, size_t len);
    /* A finished turn as this backend's prompts encode it (*ids malloc'd), for the conversation
     * to keep, so that a request's history need not be tokenized again: submit then takes the
     * turns' ids. NULL, or DUEL_EUNSUPPORTED (a template whose turns do not encode apart): the
     * history is re-encoded from its texts. Called on the lws thread, once per turn. */
    int (*encode_turn)(void *impl, const char *user, const char *assistant, int32_t **ids,
                       size_t *n_ids, duel_error *err);
    /* The model's context in tokens, prompt and answer together (the engine refuses a prompt
     * that leaves no room). NULL or 0: no limit the gateway knows of besides
     * gateway.max_context_tokens. */
    long long (*context_tokens)(void *impl);
    /* The length in tokens of req's prompt exactly as submit would build it (chat template
     * included), so that the gateway can drop old turns until it fits; a negative DUEL_E*
     * status on failure. NULL: the gateway estimates from the turns' and the text's counts. */
    long long (*prompt_tokens)(void *impl, const duel_backend_request *req, duel_error *err);
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
    /* Rollout arms (optional, with install_snapshot; docs/SERVING.md, "Rollouts"). hold_snapshot
     * makes version resident beside the latest (loaded from dir, verified by the caller, on the
     * loader's thread) without changing what unpinned duels get; a version already resident is
     * DUEL_OK at once. set_pins names the versions the rollout serves: every resident snapshot
     * that is neither one of them nor the latest is retired (its running duels finish on it).
     * snapshot_resident says whether duels pinned to version get that version. */
    int (*hold_snapshot)(void *impl, long long version, const char *dir, duel_error *err);
    void (*set_pins)(void *impl, const long long *versions, int n);
    bool (*snapshot_resident)(void *impl, long long version);
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
 * (inference/duel.h) and places it left/right at random. A pilaf duel's result has no features
 * or rewards (d_feat and num_heads 0, regret_estimate NAN): its vote is an unscored duel
 * (common/vote_entry.h). With cfg.snapshots, install_snapshot
 * adds a snapshot as engine arm "v%06lld" (its own erm.safetensors scores its duels) and every
 * new duel follows the latest one (docs/SERVING.md). */
typedef struct backend_engine_config {
    const char *model_dir;
    const char *erm_path;      /* NULL: a fresh ensemble from erm_seed */
    uint64_t erm_seed;
    int erm_heads;             /* 0: ERM_DEFAULT_NUM_HEADS */
    const char *strategy;      /* "ee_ts" (default), "bai_ts", "uncertainty", "passive", "bon";
                                  "pilaf": two candidates (M = 2 whatever num_candidates says),
                                  with probability 1/2 decoded in lockstep with the base model
                                  (the frozen reference arm) from mixed logits (pilaf_beta); no
                                  ERM features or rewards, so its votes train the policy only;
                                  "arena" with snapshots (M even): M/2 candidates from the latest
                                  snapshot, M/2 from the base model, one answer from each
                                  (ee_ts until a snapshot is resident) */
    int num_candidates;        /* M, >= 2; 0: 4 (pilaf duels always decode 2) */
    double pilaf_beta;         /* pilaf: beta of the mixed logits (duel.pilaf_beta), finite and
                                  >= 0 (0: the mixed mode samples the policy itself) */
    float temperature;         /* sampling; 0 is greedy */
    float top_p;
    int top_k;
    int max_new_tokens;        /* 0: 128 */
    size_t kv_memory_bytes;    /* 0: the engine's default */
    int max_pilaf_jobs;        /* engine_params.max_pilaf_jobs; 0: the engine's default */
    weight_format weights;     /* engine.weights: the model's and every snapshot's storage,
                                  converted at load (snapshots on the loader thread) */
    int kv_bytes_per_element;  /* engine.kv_dtype: 0 or 4 f32, 2 bf16 */
    bool policy_features;      /* engine.features "policy": with snapshots, the ERM's features are
                                  the serving arm's own hidden states (no reference pass: votes
                                  carry no ref_logprobs, the features change as snapshots replace
                                  the policy, and arena duels are refused); false: the frozen base
                                  model's (reference). Without snapshots the serving model is its
                                  own reference either way */
    const char *compute;       /* engine_params.backend (config engine.backend); NULL: cpu */
    /* With snapshots: where a snapshot's model comes from instead of its folder (the `duel`
     * executable passes the receiving end of a GPU weight transport, cuda_ipc or nccl:
     * trainer.weight_transport); when it fails the folder is loaded. NULL: the folder. Runs on the
     * loader's thread. Used with f32 weights only: the transport carries the f32 file, a bf16 or q8
     * server converts each snapshot from its folder. */
    int (*load_snapshot)(void *ctx, long long version, const char *dir, struct model **out,
                         duel_error *err);
    void *load_snapshot_ctx;
    const char *load_snapshot_via; /* its name in the log line of a fallback ("cuda_ipc") */
    const struct compute_provider *const *providers; /* engine_params.providers */
    int num_providers;
    bool snapshots;            /* hot-swap (install_snapshot): the base model becomes the frozen
                                  reference arm whose hidden states are the ERM features of every
                                  duel (features that do not drift as snapshots replace the
                                  policy); false: the serving model's own states (no reference
                                  pass), install_snapshot is NULL */
} backend_engine_config;

int backend_engine_create(const backend_engine_config *cfg, duel_backend *out, duel_error *err);

#endif
