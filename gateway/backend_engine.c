/* backend_engine.c: the duel_backend over the inference engine (see duel_backend.h). Owns the
 * model, tokenizer, ERM ensemble and engine, and one poller thread that turns engine events into
 * backend events. Selection is the engine's (duel requests, DUEL_READY), so the serving path
 * scores candidates once, in one place. Jobs (one per request) live in a list guarded by mu; the
 * poller alone fills a job's candidates; a job is freed by the poller when its last event
 * (finished, cancelled, error) arrives.
 *
 * Snapshots (cfg.snapshots, docs/SERVING.md): install_snapshot runs on the loader's thread,
 * loads the snapshot's model and ERM there, adds them as an engine arm, then (under mu) makes it
 * `latest`, the arm every unpinned duel is submitted to, and retires the previous latest unless
 * the rollout pins it. hold_snapshot loads a pinned version the same way without making it the
 * latest; set_pins retires every resident snapshot neither pinned nor the latest. A submit
 * resolves its pins and calls engine_submit under mu, so it never names an arm already retired
 * (a snapshot_arm is `resident` exactly until its engine_retire_arm is decided, under mu).
 * Every loaded snapshot_arm is on the `snapshots` list (mu) until the engine hands it back
 * (ARM_RETIRED, on the poller), which frees it; eb_destroy frees the rest after
 * engine_destroy.
 *
 * Strategy pilaf (DESIGN.md section 5): two candidates whatever M says, submitted as the
 * engine's PILAF duel (inference/engine_pilaf.c) with cfg.pilaf_beta; the engine's reference arm
 * is the base model ("default", engine_params.reference_arm), so a snapshot's PILAF duel mixes
 * its logits with the frozen base model's, as the trainer's reference is the initial policy
 * (without snapshots the base model serves and is its own reference: the mixed mode samples it
 * plainly). Its DUEL_READY has the pair (0, 1) and its placement but no features or rewards:
 * the result carries none (d_feat 0), and the vote is one the trainer applies to the policy
 * without training the ERM (common/vote_entry.h). */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "duel.h"
#include "duel_backend.h"
#include "engine.h"
#include "erm.h"
#include "knobs.h"
#include "model.h"
#include "snapshot.h"
#include "rng.h"
#include "tokenizer.h"

/* The largest M a request may ask for: the knob M's maximum (common/knobs.c), so that a live
 * change of M never needs a new engine. */
#define ENGINE_BACKEND_MAX_CANDIDATES DUEL_KNOB_M_MAX
#define ROLLOUT_PINS_MAX 64 /* the engine's arm slots (SCHED_MAX_MODELS) bound it anyway */

typedef struct cand {
    int32_t *tokens;
    int n_tokens;
    char *text;
} cand;

/* A snapshot resident in the engine (or retiring). */
typedef struct snapshot_arm {
    long long version;
    char name[ENGINE_MAX_ARM_NAME]; /* "v%06lld" */
    model *model;
    erm *erm;
    bool resident;                  /* mu; false once its retirement is decided */
    struct snapshot_arm *next;
} snapshot_arm;

typedef struct job {
    uint64_t request_id;   /* the gateway's */
    uint64_t engine_id;
    int32_t *prompt;
    size_t n_prompt;
    char *prompt_text;
    long long arm;
    long long version;     /* the policy version it was submitted to (0: the base model) */
    long long battle_version; /* arena: the second arm's version (0: the base model) */
    char arm_name[32], battle_arm_name[32]; /* the rollout's arms ("": none) */
    duel_strategy strategy;/* arena only while a snapshot is resident, else ee_ts */
    duel_backend_params params; /* the knobs it was generated with (strategy: the one used) */
    uint64_t seed;
    long long progress;
    cand *cands;
    int m;
    engine_event *ready; /* the engine's DUEL_READY (features, rewards, pair, placement) */
    struct job *next;
} job;

typedef struct engine_backend {
    backend_engine_config cfg;
    char *model_dir;
    duel_strategy strategy;
    model *model;
    tokenizer *tok;
    chat_template_kind template;
    erm *erm;
    engine *engine;
    int hidden_size;
    int32_t stop_tokens[4];
    int n_stop;
    pthread_t poller;
    bool started;
    atomic_bool stopping;
    pthread_mutex_t mu;
    job *jobs;
    snapshot_arm *latest;    /* mu; NULL: the base model */
    snapshot_arm *snapshots; /* mu; every snapshot not yet handed back by the engine */
    long long pins[ROLLOUT_PINS_MAX]; /* mu; the versions the rollout serves (set_pins) */
    int n_pins;
    duel_backend_sink sink;
    void *sink_ctx;
} engine_backend;

static void job_free(job *j) {
    if (!j) return;
    for (int i = 0; j->cands && i < j->m; i++) {
        free(j->cands[i].tokens);
        free(j->cands[i].text);
    }
    engine_event_free(j->ready);
    free(j->cands);
    free(j->prompt);
    free(j->prompt_text);
    free(j);
}

static void snapshot_arm_free(snapshot_arm *s) {
    if (!s) return;
    model_free(s->model);
    erm_free(s->erm);
    free(s);
}

static void unlink_job(engine_backend *b, job *target) {
    pthread_mutex_lock(&b->mu);
    for (job **pp = &b->jobs; *pp; pp = &(*pp)->next)
        if (*pp == target) {
            *pp = target->next;
            break;
        }
    pthread_mutex_unlock(&b->mu);
}

static void emit_error(engine_backend *b, job *j, const char *message) {
    duel_backend_event ev = {.kind = DUEL_BACKEND_ERROR, .request_id = j->request_id};
    snprintf(ev.message, sizeof ev.message, "%.200s", message);
    b->sink(b->sink_ctx, &ev);
}

/* All candidates are in and the engine has scored and placed the pair (DUEL_READY, kept in
 * j->ready): build the gateway's ready event. Features, rewards and selection are the engine's
 * (policy features: the serving model's own prompt and candidate states); nothing is recomputed
 * here. */
static void finish_job(engine_backend *b, job *j, const engine_event *ev) {
    int m = j->m;
    const engine_event *ready = j->ready;
    /* pilaf: the pair and its placement only (no ERM pass) */
    const bool scored = !ready || ready->strategy != DUEL_STRATEGY_PILAF;
    if (!ready || ready->count != m || (scored && (!ready->features || !ready->rewards))) {
        emit_error(b, j, "engine finished a duel without scoring it");
        return;
    }
    duel_backend_result *r = calloc(1, sizeof *r);
    size_t n_features = scored ? (size_t)m * (size_t)ready->d_feat : 0;
    size_t n_rewards = scored ? (size_t)m * (size_t)ready->num_heads : 0;
    float *features = scored ? malloc(n_features * sizeof(float)) : NULL;
    float *rewards = scored ? malloc(n_rewards * sizeof(float)) : NULL;
    if (!r || (scored && (!features || !rewards))) {
        free(r);
        free(features);
        free(rewards);
        emit_error(b, j, "out of memory");
        return;
    }
    if (scored) {
        memcpy(features, ready->features, n_features * sizeof(float));
        memcpy(rewards, ready->rewards, n_rewards * sizeof(float));
    }
    const duel_placement place = ready->placement;
    size_t total = 0;
    for (int i = 0; i < m; i++) total += (size_t)j->cands[i].n_tokens;
    r->cand_tokens = malloc((total + 1) * sizeof(int32_t));
    r->cand_offsets = malloc(((size_t)m + 1) * sizeof(int32_t));
    size_t o = 0;
    for (int i = 0; r->cand_tokens && r->cand_offsets && i < m; i++) {
        r->cand_offsets[i] = (int32_t)o;
        if (j->cands[i].n_tokens)
            memcpy(r->cand_tokens + o, j->cands[i].tokens,
                   (size_t)j->cands[i].n_tokens * sizeof(int32_t));
        o += (size_t)j->cands[i].n_tokens;
    }
    if (r->cand_offsets) r->cand_offsets[m] = (int32_t)o;
    r->n_cand_tokens = o;
    r->cand_a = place.a;
    r->cand_b = place.b;
    r->side_swap = place.side_swap;
    r->num_candidates = m;
    r->text_a = strdup(j->cands[place.a].text ? j->cands[place.a].text : "");
    r->text_b = strdup(j->cands[place.b].text ? j->cands[place.b].text : "");
    r->prompt_tokens = j->prompt;
    r->n_prompt_tokens = j->n_prompt;
    j->prompt = NULL;
    r->prompt_text = j->prompt_text;
    j->prompt_text = NULL;
    r->features = features;
    r->d_feat = scored ? ready->d_feat : 0;
    r->rewards = rewards;
    r->num_heads = scored ? ready->num_heads : 0;
    if (ready->ref_logprobs) {
        if (!(r->ref_logprobs = malloc((size_t)m * sizeof(float)))) {
            duel_backend_result_free(r);
            emit_error(b, j, "out of memory");
            return;
        }
        for (int i = 0; i < m; i++) r->ref_logprobs[i] = (float)ready->ref_logprobs[i];
    }
    const duel_backend_params *p = &j->params;
    json_t *gp = json_pack("{s:s, s:i, s:f, s:f, s:i, s:i, s:f, s:I}", "strategy",
                           duel_strategy_name(j->strategy), "M", m, "temperature",
                           (double)p->temperature, "top_p", (double)p->top_p, "top_k", p->top_k,
                           "max_new_tokens", p->max_new_tokens, "arena_fraction", p->arena_fraction,
                           "seed", (json_int_t)j->seed);
    if (gp && j->arm_name[0]) json_object_set_new(gp, "arm", json_string(j->arm_name));
    if (gp && !scored) {
        /* which of the engine's two modes drew this duel (mixed: candidate 0 is y+) */
        json_object_set_new(gp, "pilaf_beta", json_real(b->cfg.pilaf_beta));
        json_object_set_new(gp, "pilaf_mixed", json_boolean(ready->pilaf_mixed));
    }
    if (gp && ready->arena_split) {
        /* Candidates [0, arena_split) are the first arm's (policy_version), the rest the second
         * arm's: the base model's unless a rollout battle named another. */
        json_object_set_new(gp, "arena_split", json_integer(ready->arena_split));
        json_object_set_new(gp, "arena_versions", json_pack("[I, I]", (json_int_t)j->version,
                                                            (json_int_t)j->battle_version));
        if (j->arm_name[0] && j->battle_arm_name[0])
            json_object_set_new(gp, "arena_arms",
                                json_pack("[s, s]", j->arm_name, j->battle_arm_name));
    }
    r->gen_params_json = gp ? json_dumps(gp, JSON_COMPACT) : NULL;
    json_decref(gp);
    r->strategy = strdup(duel_strategy_name(j->strategy));
    r->model_id = strdup(b->model_dir);
    r->policy_version = j->version;
    r->generated_tokens = ev->counts.generated_tokens;
    r->regret_estimate = scored ? ready->regret_estimate : NAN; /* no rewards to estimate by */
    if (!r->cand_tokens || !r->cand_offsets || !r->text_a || !r->text_b || !r->gen_params_json ||
        !r->strategy || !r->model_id) {
        duel_backend_result_free(r);
        emit_error(b, j, "out of memory");
        return;
    }
    r->len_a = strlen(r->text_a);
    r->len_b = strlen(r->text_b);
    duel_backend_event out = {.kind = DUEL_BACKEND_READY, .request_id = j->request_id,
                              .result = r};
    b->sink(b->sink_ctx, &out);
    duel_backend_result_free(out.result); /* NULL when the sink took it */
}

static void *poller_main(void *arg) {
    engine_backend *b = arg;
    while (!atomic_load(&b->stopping)) {
        engine_event *ev = NULL;
        engine_poll(b->engine, 0.1, &ev);
        if (!ev) continue;
        if (ev->kind == ENGINE_EVENT_ARM_RETIRED) {
            /* Its last duel has ended: the snapshot's memory goes. */
            snapshot_arm *s = ev->user;
            pthread_mutex_lock(&b->mu);
            for (snapshot_arm **pp = &b->snapshots; *pp; pp = &(*pp)->next)
                if (*pp == s) {
                    *pp = s->next;
                    break;
                }
            pthread_mutex_unlock(&b->mu);
            snapshot_arm_free(s);
            engine_event_free(ev);
            continue;
        }
        job *j = ev->user;
        switch (ev->kind) {
        case ENGINE_EVENT_PROGRESS: {
            j->progress += ev->count;
            duel_backend_event out = {.kind = DUEL_BACKEND_PROGRESS, .request_id = j->request_id,
                                      .tokens = j->progress};
            b->sink(b->sink_ctx, &out);
            break;
        }
        case ENGINE_EVENT_CANDIDATE:
            if (ev->candidate >= 0 && ev->candidate < j->m) {
                cand *c = &j->cands[ev->candidate];
                c->n_tokens = ev->count;
                c->tokens = malloc(((size_t)ev->count + 1) * sizeof(int32_t));
                if (c->tokens && ev->count)
                    memcpy(c->tokens, ev->tokens, (size_t)ev->count * sizeof(int32_t));
                /* shown, voted on and kept in the history without the template's answer prefix */
                c->text = ev->text ? strdup(chat_template_strip_answer_prefix(b->template, ev->text)) : NULL;
            }
            break;
        case ENGINE_EVENT_DUEL_READY:
            engine_event_free(j->ready);
            j->ready = ev; /* kept for FINISHED, which follows */
            ev = NULL;
            break;
        case ENGINE_EVENT_FINISHED:
            finish_job(b, j, ev);
            unlink_job(b, j);
            job_free(j);
            break;
        case ENGINE_EVENT_CANCELLED:
            unlink_job(b, j);
            job_free(j);
            break;
        case ENGINE_EVENT_ERROR:
            emit_error(b, j, ev->message ? ev->message : "engine error");
            unlink_job(b, j);
            job_free(j);
            break;
        case ENGINE_EVENT_ARM_RETIRED: /* handled above */
            break;
        }
        engine_event_free(ev);
    }
    return NULL;
}

static int eb_start(void *impl, duel_backend_sink sink, void *sink_ctx, duel_error *err) {
    engine_backend *b = impl;
    b->sink = sink;
    b->sink_ctx = sink_ctx;
    if (pthread_create(&b->poller, NULL, poller_main, b))
        return duel_error_set(err, DUEL_ENOMEM, "engine backend: cannot start its thread");
    b->started = true;
    return DUEL_OK;
}

/* A finished turn as prompts encode it: what the gateway's conversation keeps (see
 * duel_backend.h), so that a request re-encodes only its new message. */
static int eb_encode_turn(void *impl, const char *user, const char *assistant, int32_t **ids,
                          size_t *n_ids, duel_error *err) {
    engine_backend *b = impl;
    *ids = NULL;
    *n_ids = 0;
    if (!chat_template_turns_concatenate(b->template))
        return duel_error_set(err, DUEL_EUNSUPPORTED, "template %s encodes a conversation as one "
                              "text", chat_template_name(b->template));
    chat_message turn[2] = {{"user", user}, {"assistant", assistant}};
    return chat_template_encode_continuation(b->template, b->tok, turn, 2, false, ids, n_ids, err);
}

/* The prompt of req from its turns' ids (the template's start, each turn, then the new user
 * message and the generation prompt): the same ids as encoding the whole conversation, since
 * the template's turns concatenate, at the cost of the new message only. */
static int prompt_from_turn_ids(engine_backend *b, const duel_backend_request *req, job *j,
                                duel_error *err) {
    int32_t *start = NULL, *tail = NULL;
    size_t n_start = 0, n_tail = 0, total = 0;
    chat_message user = {"user", req->text};
    int rc = chat_template_encode(b->template, b->tok, NULL, 0, false, &start, &n_start, err);
    if (!rc) rc = chat_template_encode_continuation(b->template, b->tok, &user, 1, true, &tail,
                                                    &n_tail, err);
    if (!rc) {
        total = n_start + n_tail;
        for (size_t i = 0; i < req->n_history; i++) total += req->history[i].n_ids;
        if (!(j->prompt = malloc((total ? total : 1) * sizeof *j->prompt)))
            rc = duel_error_set(err, DUEL_ENOMEM, "engine backend: out of memory");
    }
    if (!rc) {
        size_t o = 0;
        memcpy(j->prompt, start, n_start * sizeof *start);
        o += n_start;
        for (size_t i = 0; i < req->n_history; i++) {
            memcpy(j->prompt + o, req->history[i].ids, req->history[i].n_ids * sizeof *j->prompt);
            o += req->history[i].n_ids;
        }
        memcpy(j->prompt + o, tail, n_tail * sizeof *tail);
        j->n_prompt = total;
    }
    free(start);
    free(tail);
    return rc;
}

/* SplitMix64 of the duel's seed: the arena_fraction draw, independent of the sampling streams. */
static uint64_t mix_seed(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Arena scores both arms' answers on one feature model: refused with policy features, when the
 * adapter starts (strategy arena) and per request (rollout battles, arena_fraction duels). */
static const char ARENA_NEEDS_REFERENCE_FEATURES[] =
    "engine backend: arena scores both arms' answers on the base model's features: it needs "
    "engine.features reference";

/* The knobs of a request (the gateway's set in effect, or the configured ones), checked against
 * what this adapter can serve (every strategy): arena without snapshots is DUEL_EUNSUPPORTED;
 * arena with an odd M is refused too (the knob table refuses both already).
 * pilaf decodes two candidates whatever M says (its pair is its two samples), and its params
 * record M = 2. */
static int job_params(engine_backend *b, const duel_backend_request *req, job *j, duel_error *err) {
    if (req->params) {
        j->params = *req->params;
    } else {
        j->params = (duel_backend_params){.num_candidates = b->cfg.num_candidates,
                                          .temperature = b->cfg.temperature, .top_p = b->cfg.top_p,
                                          .top_k = b->cfg.top_k, .max_new_tokens = b->cfg.max_new_tokens};
        snprintf(j->params.strategy, sizeof j->params.strategy, "%s", duel_strategy_name(b->strategy));
    }
    int rc = duel_strategy_parse(j->params.strategy, &j->strategy, err);
    if (rc) return rc;
    if (j->strategy == DUEL_STRATEGY_PILAF) j->params.num_candidates = 2;
    j->m = j->params.num_candidates;
    if (j->m < 2 || j->m > ENGINE_BACKEND_MAX_CANDIDATES)
        return duel_error_set(err, DUEL_EINVAL, "engine backend: M = %d outside [2, %d]", j->m,
                              ENGINE_BACKEND_MAX_CANDIDATES);
    if (j->strategy == DUEL_STRATEGY_ARENA && (!b->cfg.snapshots || j->m % 2))
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "engine backend: arena needs snapshots and an even M (M = %d)", j->m);
    if (j->strategy == DUEL_STRATEGY_ARENA && b->cfg.policy_features)
        return duel_error_set(err, DUEL_EUNSUPPORTED, "%s", ARENA_NEEDS_REFERENCE_FEATURES);
    return DUEL_OK;
}

/* The request's conversation as chat messages (borrowed texts); NULL when out of memory. */
static chat_message *request_messages(const duel_backend_request *req, size_t *n_msgs) {
    *n_msgs = 2 * req->n_history + 1;
    chat_message *msgs = calloc(*n_msgs, sizeof *msgs);
    if (!msgs) return NULL;
    for (size_t i = 0; i < req->n_history; i++) {
        msgs[2 * i] = (chat_message){"user", req->history[i].user};
        msgs[2 * i + 1] = (chat_message){"assistant", req->history[i].assistant};
    }
    msgs[*n_msgs - 1] = (chat_message){"user", req->text};
    return msgs;
}

/* The prompt's token ids into j: from the history's kept ids when the gateway kept them (every
 * turn has them, or none does), else the whole conversation encoded. */
static int build_prompt(engine_backend *b, const duel_backend_request *req,
                        const chat_message *msgs, size_t n_msgs, job *j, duel_error *err) {
    bool kept = req->n_history > 0 && req->history[0].ids && chat_template_turns_concatenate(b->template);
    return kept ? prompt_from_turn_ids(b, req, j, err)
                : chat_template_encode(b->template, b->tok, msgs, n_msgs, true, &j->prompt,
                                       &j->n_prompt, err);
}

static long long eb_context_tokens(void *impl) {
    engine_backend *b = impl;
    int n = model_get_config(b->model)->max_position_embeddings;
    return n > 1 ? n : 2048; /* the engine's rule (engine_arms.c) */
}

static long long eb_prompt_tokens(void *impl, const duel_backend_request *req, duel_error *err) {
    engine_backend *b = impl;
    size_t n_msgs;
    chat_message *msgs = request_messages(req, &n_msgs);
    if (!msgs) return duel_error_set(err, DUEL_ENOMEM, "engine backend: out of memory");
    job j = {0};
    int rc = build_prompt(b, req, msgs, n_msgs, &j, err);
    free(msgs);
    free(j.prompt);
    return rc ? rc : (long long)j.n_prompt;
}

/* Under mu: the arm that serves pin (NULL: the base model). */
static const snapshot_arm *resolve_pin(const engine_backend *b, long long pin) {
    if (pin == 0) return NULL;
    if (pin > 0)
        for (const snapshot_arm *s = b->snapshots; s; s = s->next)
            if (s->resident && s->version == pin) return s;
    return b->latest;
}

static int eb_submit(void *impl, const duel_backend_request *req, duel_error *err) {
    engine_backend *b = impl;
    size_t n_msgs;
    chat_message *msgs = request_messages(req, &n_msgs);
    job *j = calloc(1, sizeof *j);
    if (!msgs || !j) {
        free(msgs);
        free(j);
        return duel_error_set(err, DUEL_ENOMEM, "engine backend: out of memory");
    }
    int rc = build_prompt(b, req, msgs, n_msgs, j, err);
    /* Not DUEL_ELIMIT (the engine's code for it, which the gateway reads as a full queue): a
     * prompt past the context is no reason to try again. The gateway fits prompts first. */
    if (!rc && (long long)j->n_prompt >= eb_context_tokens(b))
        rc = duel_error_set(err, DUEL_EINVAL,
                            "engine backend: a prompt of %zu tokens does not fit the model's "
                            "context of %lld", j->n_prompt, eb_context_tokens(b));
    if (!rc) rc = chat_template_render(b->template, msgs, n_msgs, true, &j->prompt_text, err);
    free(msgs);
    if (!rc) rc = job_params(b, req, j, err);
    j->cands = rc ? NULL : calloc((size_t)j->m, sizeof *j->cands);
    if (!rc && !j->cands) rc = duel_error_set(err, DUEL_ENOMEM, "engine backend: out of memory");
    if (rc) {
        job_free(j);
        return rc;
    }
    j->request_id = req->request_id;
    j->arm = req->arm_snapshot;
    j->seed = req->seed;
    if (req->arm_name) snprintf(j->arm_name, sizeof j->arm_name, "%s", req->arm_name);
    if (req->battle && req->battle_arm_name)
        snprintf(j->battle_arm_name, sizeof j->battle_arm_name, "%s", req->battle_arm_name);
    engine_request er = {
        .arm = "default",
        .tokens = j->prompt,
        .num_tokens = (int)j->n_prompt,
        .num_candidates = j->m,
        .sampling = {j->params.temperature, j->params.top_p, j->params.top_k},
        .seed = req->seed,
        .max_new_tokens = j->params.max_new_tokens,
        .stop_tokens = b->n_stop ? b->stop_tokens : NULL,
        .num_stop_tokens = b->n_stop,
        .use_eos = true,
        .want_progress = true,
        .duel = true,
        .strategy = j->strategy,
        .pilaf_beta = b->cfg.pilaf_beta,
        .fairness_key = req->fairness_key,
        .user = j,
    };
    /* The poller may see this job's first event before engine_submit returns: link it first. */
    pthread_mutex_lock(&b->mu);
    j->next = b->jobs;
    b->jobs = j;
    /* The rollout's pins (docs/SERVING.md, "Rollouts"): 0 ("base") is served by the base
     * model, -1 ("latest") by the latest snapshot, a version by its resident arm (the latest
     * while the loader has not made it resident: the vote's policy_version says which served). */
    const snapshot_arm *first = resolve_pin(b, j->arm);
    er.arm = first ? first->name : "default";
    j->version = first ? first->version : 0;
    if (req->battle) {
        /* A rollout battle: M/2 candidates per arm, one answer from each; two pins that resolve
         * to the same weights (a pin not resident yet), or an odd M, are an ordinary duel. */
        const snapshot_arm *second = resolve_pin(b, req->battle_snapshot);
        if (second != first && j->m % 2 == 0) {
            j->strategy = er.strategy = DUEL_STRATEGY_ARENA;
            er.arena_arm = second ? second->name : "default";
            j->battle_version = second ? second->version : 0;
        } else {
            j->battle_arm_name[0] = '\0';
            if (j->strategy == DUEL_STRATEGY_ARENA) j->strategy = er.strategy = DUEL_STRATEGY_EE_TS;
        }
    } else if (first && !req->rollout) {
        /* arena_fraction: this share of duels (drawn from the seed) pits the snapshot against
         * the base model, whatever the strategy knob says */
        if (j->m % 2 == 0 && j->params.arena_fraction > 0 &&
            (double)(mix_seed(j->seed) >> 11) * 0x1.0p-53 < j->params.arena_fraction)
            j->strategy = er.strategy = DUEL_STRATEGY_ARENA;
        if (j->strategy == DUEL_STRATEGY_ARENA) er.arena_arm = "default"; /* vs the base */
    } else if (j->strategy == DUEL_STRATEGY_ARENA) {
        /* Nothing to pit it against (no snapshot yet, or the base's own pin; a rollout's
         * battles are the gateway's choice). */
        j->strategy = er.strategy = DUEL_STRATEGY_EE_TS;
    }
    rc = engine_submit(b->engine, &er, &j->engine_id, err);
    if (rc) {
        b->jobs = j->next;
        pthread_mutex_unlock(&b->mu);
        job_free(j);
        return rc;
    }
    pthread_mutex_unlock(&b->mu);
    return DUEL_OK;
}

static void eb_cancel(void *impl, uint64_t request_id) {
    engine_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    for (job *j = b->jobs; j; j = j->next)
        if (j->request_id == request_id) engine_cancel(b->engine, j->engine_id, NULL);
    pthread_mutex_unlock(&b->mu);
}

static size_t eb_queue_depth(void *impl) {
    engine_backend *b = impl;
    engine_stats st;
    engine_stats_get(b->engine, &st);
    return (size_t)st.waiting + (size_t)st.admission_queued;
}

static long long eb_count_tokens(void *impl, const char *text, size_t len) {
    engine_backend *b = impl;
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(b->tok, text, len, false, &ids, &n, NULL)) return (long long)(len + 3) / 4;
    free(ids);
    return (long long)n;
}

/* Loads the snapshot at dir (verified by the loader) as engine arm "v%06lld", resident, on the
 * caller's thread (the loader's). */
static int load_snapshot_arm(engine_backend *b, long long version, const char *dir,
                             snapshot_arm **out, duel_error *err) {
    *out = NULL;
    if (version < 1)
        return duel_error_set(err, DUEL_EINVAL, "snapshot version %lld (from 1)", version);
    snapshot_arm *s = calloc(1, sizeof *s);
    if (!s) return duel_error_set(err, DUEL_ENOMEM, "snapshot: out of memory");
    s->version = version;
    snprintf(s->name, sizeof s->name, "v%06lld", version);
    char path[4200];
    int rc = DUEL_EINVAL;
    if (b->cfg.load_snapshot && b->cfg.weights == WEIGHT_F32) {
        /* The weights through the GPU transport; the folder when that fails (another version in
         * the buffer, a hash that does not match): serving never depends on it. The transport
         * carries f32 weights only, so a bf16 or q8 server converts from the folder. */
        duel_error terr = {0};
        rc = b->cfg.load_snapshot(b->cfg.load_snapshot_ctx, version, dir, &s->model, &terr);
        if (rc)
            fprintf(stderr, "duel serve: snapshot %lld through %s: %s; loading its folder\n",
                    version, b->cfg.load_snapshot_via ? b->cfg.load_snapshot_via : "a transport",
                    terr.message);
    }
    /* converted here, on the loader thread */
    model_load_options lo = {.weights = b->cfg.weights};
    if (rc) rc = model_load_with(dir, &lo, &s->model, err);
    if (!rc && model_output_size(s->model) != model_output_size(b->model))
        rc = duel_error_set(err, DUEL_EFORMAT,
                            "snapshot v%lld: %d logits, the base model (and its tokenizer) %d",
                            version, model_output_size(s->model), model_output_size(b->model));
    if (!rc) {
        snprintf(path, sizeof path, "%s/%s", dir, SNAPSHOT_FILE_ERM);
        rc = erm_load(path, 2 * b->hidden_size, &s->erm, err);
    }
    engine_model_params mp = {s->name, s->model, b->tok};
    if (!rc) rc = engine_add_arm(b->engine, &mp, s->erm, s, err);
    if (rc) {
        snapshot_arm_free(s);
        return rc;
    }
    s->resident = true;
    pthread_mutex_lock(&b->mu);
    s->next = b->snapshots;
    b->snapshots = s;
    pthread_mutex_unlock(&b->mu);
    *out = s;
    return DUEL_OK;
}

/* Under mu. */
static snapshot_arm *find_resident(engine_backend *b, long long version) {
    for (snapshot_arm *s = b->snapshots; s; s = s->next)
        if (s->resident && s->version == version) return s;
    return NULL;
}

static bool pinned(const engine_backend *b, long long version) {
    for (int i = 0; i < b->n_pins; i++)
        if (b->pins[i] == version) return true;
    return false;
}

/* Retires every resident snapshot that is neither the latest nor pinned. Called without mu: the
 * choice is made under it (resident turns false there, so no later submit names the arm), the
 * engine told after. */
static void retire_unused(engine_backend *b) {
    char names[ROLLOUT_PINS_MAX][ENGINE_MAX_ARM_NAME];
    int n = 0;
    pthread_mutex_lock(&b->mu);
    for (snapshot_arm *s = b->snapshots; s && n < ROLLOUT_PINS_MAX; s = s->next)
        if (s->resident && s != b->latest && !pinned(b, s->version)) {
            s->resident = false;
            memcpy(names[n++], s->name, sizeof s->name);
        }
    pthread_mutex_unlock(&b->mu);
    /* A submit holding mu either named the arm before its choice (and is counted by the engine)
     * or resolves to another. */
    for (int i = 0; i < n; i++) {
        duel_error rerr = {0};
        if (engine_retire_arm(b->engine, names[i], &rerr))
            fprintf(stderr, "duel serve: retiring snapshot %s: %s\n", names[i], rerr.message);
    }
}

static int eb_install_snapshot(void *impl, long long version, const char *dir,
                               duel_error *err) {
    engine_backend *b = impl;
    if (version < 1)
        return duel_error_set(err, DUEL_EINVAL, "snapshot version %lld (from 1)", version);
    pthread_mutex_lock(&b->mu);
    snapshot_arm *s = find_resident(b, version); /* a pinned version that became the newest */
    pthread_mutex_unlock(&b->mu);
    if (!s) {
        int rc = load_snapshot_arm(b, version, dir, &s, err);
        if (rc) return rc;
    }
    pthread_mutex_lock(&b->mu);
    b->latest = s;
    pthread_mutex_unlock(&b->mu);
    retire_unused(b); /* the previous latest, unless the rollout pins it */
    return DUEL_OK;
}

static int eb_hold_snapshot(void *impl, long long version, const char *dir, duel_error *err) {
    engine_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    bool resident = find_resident(b, version) != NULL;
    pthread_mutex_unlock(&b->mu);
    snapshot_arm *s;
    return resident ? DUEL_OK : load_snapshot_arm(b, version, dir, &s, err);
}

static void eb_set_pins(void *impl, const long long *versions, int n) {
    engine_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    b->n_pins = 0;
    for (int i = 0; i < n && b->n_pins < ROLLOUT_PINS_MAX; i++)
        if (versions[i] > 0) b->pins[b->n_pins++] = versions[i];
    pthread_mutex_unlock(&b->mu);
    retire_unused(b);
}

static bool eb_snapshot_resident(void *impl, long long version) {
    engine_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    bool resident = find_resident(b, version) != NULL;
    pthread_mutex_unlock(&b->mu);
    return resident;
}

static long long eb_serving_version(void *impl) {
    engine_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    long long v = b->latest ? b->latest->version : 0;
    pthread_mutex_unlock(&b->mu);
    return v;
}

static void eb_destroy(void *impl) {
    engine_backend *b = impl;
    if (!b) return;
    atomic_store(&b->stopping, true);
    if (b->started) pthread_join(b->poller, NULL);
    engine_destroy(b->engine);
    while (b->snapshots) { /* resident or retiring at the end: not handed back */
        snapshot_arm *s = b->snapshots;
        b->snapshots = s->next;
        snapshot_arm_free(s);
    }
    while (b->jobs) {
        job *j = b->jobs;
        b->jobs = j->next;
        job_free(j);
    }
    erm_free(b->erm);
    tokenizer_free(b->tok);
    model_free(b->model);
    free(b->model_dir);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

int backend_engine_create(const backend_engine_config *cfg, duel_backend *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    engine_backend *b = calloc(1, sizeof *b);
    if (!b) return duel_error_set(err, DUEL_ENOMEM, "engine backend: out of memory");
    pthread_mutex_init(&b->mu, NULL);
    b->cfg = *cfg;
    if (b->cfg.num_candidates == 0) b->cfg.num_candidates = 4;
    if (b->cfg.max_new_tokens == 0) b->cfg.max_new_tokens = 128;
    if (b->cfg.top_p == 0) b->cfg.top_p = 1.0f;
    if (b->cfg.erm_heads == 0) b->cfg.erm_heads = ERM_DEFAULT_NUM_HEADS;
    int rc = DUEL_OK;
    char path[4096];
    if (!cfg->model_dir) {
        rc = duel_error_set(err, DUEL_EINVAL, "engine backend: no model directory");
        goto fail;
    }
    if (b->cfg.num_candidates < 2) {
        rc = duel_error_set(err, DUEL_EINVAL, "engine backend: M must be at least 2 (got %d)",
                            b->cfg.num_candidates);
        goto fail;
    }
    if ((rc = duel_strategy_parse(cfg->strategy ? cfg->strategy : "ee_ts", &b->strategy, err)))
        goto fail;
    if (b->strategy == DUEL_STRATEGY_ARENA) {
        if (!cfg->snapshots) {
            rc = duel_error_set(err, DUEL_EUNSUPPORTED,
                                "engine backend: strategy arena pits the latest snapshot against "
                                "the base model: it needs snapshots (duel serve --snapshots)");
            goto fail;
        }
        if (cfg->policy_features) {
            rc = duel_error_set(err, DUEL_EUNSUPPORTED, "%s", ARENA_NEEDS_REFERENCE_FEATURES);
            goto fail;
        }
        if (b->cfg.num_candidates % 2) {
            rc = duel_error_set(err, DUEL_EINVAL,
                                "engine backend: arena splits M between two arms: M must be even "
                                "(got %d)",
                                b->cfg.num_candidates);
            goto fail;
        }
    }
    /* Checked whatever the strategy: a live knob may switch to pilaf later. */
    if (!(cfg->pilaf_beta >= 0) || !isfinite(cfg->pilaf_beta)) {
        rc = duel_error_set(err, DUEL_EINVAL,
                            "engine backend: pilaf_beta %g (duel.pilaf_beta) must be finite and "
                            ">= 0",
                            cfg->pilaf_beta);
        goto fail;
    }
    if (!(b->model_dir = strdup(cfg->model_dir))) {
        rc = duel_error_set(err, DUEL_ENOMEM, "engine backend: out of memory");
        goto fail;
    }
    model_load_options lo = {.weights = cfg->weights};
    if ((rc = model_load_with(cfg->model_dir, &lo, &b->model, err))) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer.json", cfg->model_dir);
    if ((rc = tokenizer_load(path, &b->tok, err))) goto fail;
    if ((rc = chat_template_detect(cfg->model_dir, &b->template, err))) goto fail;
    b->hidden_size = model_get_config(b->model)->hidden_size;
    const char *eot = chat_template_end_of_turn(b->template);
    if (eot) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(b->tok, eot, strlen(eot), true, &ids, &n, NULL) == 0 && n == 1)
            b->stop_tokens[b->n_stop++] = ids[0];
        free(ids);
    }
    if (cfg->erm_path) {
        if ((rc = erm_load(cfg->erm_path, 2 * b->hidden_size, &b->erm, err))) goto fail;
    } else {
        erm_config ec = {b->cfg.erm_heads, 2 * b->hidden_size, ERM_DEFAULT_HIDDEN};
        duel_rng rng;
        duel_rng_seed(&rng, cfg->erm_seed);
        if ((rc = erm_create(&ec, &rng, &b->erm, err))) goto fail;
    }
    engine_model_params mp = {"default", b->model, b->tok};
    /* The engine scores and selects (DUEL_READY). One fixed model: its own hidden states are the
     * features (no reference pass). Snapshots: the base model stays resident as the frozen
     * reference arm, so features mean the same thing whichever snapshot serves, unless
     * policy_features asks for the serving snapshot's own. */
    engine_params ep = {.models = &mp, .num_models = 1, .kv_memory_bytes = cfg->kv_memory_bytes,
                        .max_pilaf_jobs = cfg->max_pilaf_jobs,
                        .kv_bytes_per_element = cfg->kv_bytes_per_element,
                        .backend = cfg->compute,
                        .providers = cfg->providers,
                        .num_providers = cfg->num_providers,
                        .max_candidates = ENGINE_BACKEND_MAX_CANDIDATES, .erm = b->erm,
                        .reference_arm = "default",
                        .features = cfg->snapshots && !cfg->policy_features
                                        ? ENGINE_FEATURES_REFERENCE
                                        : ENGINE_FEATURES_POLICY};
    if ((rc = engine_create(&ep, &b->engine, err))) goto fail;
    out->name = "engine";
    out->trainable = true;
    out->impl = b;
    out->start = eb_start;
    out->submit = eb_submit;
    out->cancel = eb_cancel;
    out->queue_depth = eb_queue_depth;
    out->count_tokens = eb_count_tokens;
    out->encode_turn = eb_encode_turn;
    out->context_tokens = eb_context_tokens;
    out->prompt_tokens = eb_prompt_tokens;
    out->destroy = eb_destroy;
    out->install_snapshot = cfg->snapshots ? eb_install_snapshot : NULL;
    out->serving_version = eb_serving_version;
    out->hold_snapshot = cfg->snapshots ? eb_hold_snapshot : NULL;
    out->set_pins = cfg->snapshots ? eb_set_pins : NULL;
    out->snapshot_resident = eb_snapshot_resident;
    return DUEL_OK;
fail:
    eb_destroy(b);
    return rc;
}
