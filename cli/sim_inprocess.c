/* sim_inprocess.c: `duel sim --inprocess`, one run of the learning loop with simulated users
 * and no sockets (DESIGN.md section 10): the gateway's engine adapter serves duels
 * (gateway/duel_backend.h: the engine's candidates, ERM scoring and the strategy's selection,
 * exactly as `duel serve`), a simulated user votes by the oracle and its noise model
 * (oracle/oracle.h), the vote is encoded and decoded as a duel:prefs entry
 * (common/vote_entry.h) and offered to the online trainer (trainer/online_trainer.h: the ERM
 * and DAP updates and the SEA mixture of `duel train`), whose snapshots (trainer/snapshot_write.h) the
 * adapter installs as `duel serve` does (the ERM's features as engine.features says: the base
 * model's, or the serving snapshot's own). Nothing of selection, ERM, loss or update is written
 * here a second time.
 *
 * Determinism: one duel at a time (loop_serve_one), the evaluation's answers one prompt at a
 * time, votes offered with stream ids made from the query number, the trainer seeded from the
 * run's seed: the JSONL lines depend on the options alone (timings go elsewhere), on one machine
 * and BLAS thread count (OpenBLAS splits sums by its threads; a sweep runs each with 1). Strategies
 * with the same seed see the same prompts in the same order (common random numbers).
 *
 * Modes: online (each update's snapshot serves the next duels: pairs from the current policy
 * and ERM) and offline (the same number of queries, every pair from the initial policy and ERM;
 * the trainer learns from them in order, so the curve at k queries is the policy trained on the
 * first k pairs of a fixed data set). `bon` is the paper's EE4LLM variant: best-of-M answers by
 * the ERM, the policy never updated (its learning rate is scaled by 0), online only. `pilaf`
 * (two answers, M = 2): online, a snapshot's mixed duels mix its logits with the base model's
 * (the engine's reference arm, the trainer's reference); its votes carry no ERM features, so
 * the ERM never learns and the SEA mixture has no duels to label (erm_accuracy stays null,
 * synthetic 0). Offline, every pair comes from the initial policy, which is the reference
 * itself: the mixed logits equal the policy's, so offline pilaf is plain sampling of pairs
 * (passive with two candidates, up to its seeds).
 *
 * Each evaluation point (every eval_every queries, and at 0) measures:
 *   offline quality: the greedy answers (bon: its best-of-M pick) of the current policy to the
 *     held-out prompts against the base model's greedy answers, by the oracle: per prompt P =
 *     the user's probability of preferring the policy's answer (a tie is 1/2), win_share =
 *     share with P > 1/2, mean_p = mean P, score = mean oracle score; kl = mean over kl_prompts
 *     held-out prompts of log pi(y) - log pi_ref(y) for y sampled from the policy at T = 1;
 *   online quality: the mean oracle score of the answers shown in the interval, tie and
 *     both-bad shares, and the trainer's figures. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench_redis.h"
#include "chat_template.h"
#include "cli.h"
#include "config.h"
#include "duel.h"
#include "duel_backend.h"
#include "duel_loop.h"
#include "erm.h"
#include "model.h"
#include "online_trainer.h"
#include "oracle.h"
#include "sim.h"
#include "snapshot_write.h"
#include "timer.h"
#include "tokenizer.h"
#include "trainer_config.h"

#define SIM_SERVE_TIMEOUT_S 600.0
#define SIM_EVAL_REQUEST_BASE (1ull << 40) /* request ids of the evaluation's duels (bon) */
#define SIM_EVAL_SEED 0x6576616c00000000ull /* "eval": the evaluation answers' seeds */
#define SIM_PROGRESS_S 5.0                  /* seconds between progress lines */

/* The state of one run; released by run_release whatever step failed. */
typedef struct sim_run {
    const sim_run_options *o;
    duel_error *err;
    duel_strategy strategy;
    oracle_prompt_set asks, held;
    oracle_user *oracle;
    duel_rng vote_rng;
    int *order; /* the asks' order: a seeded shuffle */
    trainer_config tc;
    online_trainer *trainer;
    char work[700], data_dir[800], erm0[800], snapshot_dir[4200];
    bool own_work;
    duel_backend backend;
    loop_queue queue;
    bool queue_ready;
    model *reference; /* the base model, for the KL estimate */
    /* --labels oracle: the turn each query asked, and what turns candidates into text */
    const oracle_turn **turn_of; /* [queries] */
    tokenizer *tokenizer;
    chat_template_kind template_kind;
    duel_rng relabel_rng;
    long long oracle_labels, oracle_swaps;
    loop_answers base; /* the base model's greedy answers to the held-out prompts */
    FILE *out;
    int64_t version;   /* the last snapshot written (0: none) */
    int64_t installed; /* the last one serving (online) */
    int64_t published_step; /* the trainer's step the last snapshot holds */
    /* counters: total and since the last evaluation point */
    long long queries, ab, ties, both_bad, interval_votes, interval_ties, interval_both_bad;
    double interval_score_sum;
    long long interval_answers;
    double t0, serve_s, train_s, publish_s, eval_s, last_progress;
} sim_run;

/* ---- setup --------------------------------------------------------------------------------- */

static int open_inputs(sim_run *r) {
    const sim_run_options *o = r->o;
    oracle_config oc;
    oracle_config_default(&oc);
    int rc;
    if ((rc = duel_strategy_parse(o->strategy, &r->strategy, r->err))) return duel_error_prefix(r->err, "--strategy");
    if (!sim_strategy_runs(r->strategy))
        return duel_error_set(r->err, DUEL_EUNSUPPORTED,
                              "--strategy %s: a simulated user votes on one policy's answers (sim runs "
                              SIM_STRATEGIES ")",
                              o->strategy);
    if (r->strategy == DUEL_STRATEGY_BON && o->offline)
        return duel_error_set(r->err, DUEL_EUNSUPPORTED,
                              "--strategy bon learns only its ERM, online (the paper's EE4LLM): no offline mode");
    if (strcmp(o->labels, "erm") != 0 && strcmp(o->labels, "oracle") != 0)
        return duel_error_set(r->err, DUEL_EINVAL, "--labels %s: erm (the ERM head's, the paper's) or oracle",
                              o->labels);
    if ((rc = oracle_config_from_json(duel_config_section(o->config, "oracle"), "oracle", &oc, r->err)) ||
        (rc = oracle_user_open(&oc, &r->oracle, r->err)))
        return rc;
    if (!oracle_user_has_scores(r->oracle))
        return duel_error_set(r->err, DUEL_EUNSUPPORTED,
                              "oracle.kind judge gives no scores: the in-process measures need lexical or rm");
    const bool refs = oc.kind == ORACLE_LEXICAL;
    if ((rc = oracle_prompt_set_load(o->prompts_path, ORACLE_PROMPT_MAX_ITEMS, refs, &r->asks, r->err)) ||
        (rc = oracle_prompt_set_load(o->held_out_path, (int)o->held_out, refs, &r->held, r->err)) ||
        (rc = oracle_user_check(r->oracle, &r->asks, r->err)) || (rc = oracle_user_check(r->oracle, &r->held, r->err)))
        return rc;
    if (o->kl_prompts > r->held.count)
        return duel_error_set(r->err, DUEL_EINVAL, "--kl-prompts %lld: %s has %d prompts", o->kl_prompts,
                              o->held_out_path, r->held.count);
    duel_rng_seed(&r->vote_rng, (uint64_t)o->seed * 0x9e3779b97f4a7c15ull + 2);
    return oracle_prompt_order(&r->asks, (uint64_t)o->seed * 0x9e3779b97f4a7c15ull + 1, &r->order, r->err);
}

/* A work folder: the trainer's data, the snapshots. tmpfs when there is one (snapshots are
 * written and read back after every update), else TMPDIR. */
static int make_work(sim_run *r) {
    if (r->o->work_dir) {
        snprintf(r->work, sizeof r->work, "%s", r->o->work_dir);
        if (mkdir(r->work, 0755) != 0 && errno != EEXIST)
            return duel_error_set(r->err, DUEL_EIO, "%s: %s", r->work, strerror(errno));
    } else {
        const char *tmp = getenv("TMPDIR");
        if (!tmp) tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(r->work, sizeof r->work, "%s/duel-sim-XXXXXX", tmp);
        if (!mkdtemp(r->work)) {
            r->work[0] = '\0';
            return duel_error_set(r->err, DUEL_EIO, "cannot create a work folder under %s", tmp);
        }
        r->own_work = true;
    }
    snprintf(r->data_dir, sizeof r->data_dir, "%s/data", r->work);
    snprintf(r->erm0, sizeof r->erm0, "%s/erm0.safetensors", r->work);
    return 0;
}

/* --labels oracle: the SEA mixture's synthetic pair (the ERM head chose which two candidates)
 * ordered by the oracle, as the paper's public code does: the stored duel's query tells the turn
 * (its reference), the candidates' tokens the texts. A tie or both_bad keeps the head's order. */
static int relabel_by_oracle(void *context, const vote_entry *entry, int *chosen, int *rejected, duel_error *err) {
    sim_run *r = context;
    long long q = -1;
    if (sscanf(entry->duel_id, "sim-duel-%lld", &q) != 1 || q < 0 || q > r->queries || !r->turn_of[q])
        return duel_error_set(err, DUEL_EINVAL, "oracle labels: stored duel %s is not one of this run's", entry->duel_id);
    char *text[2] = {NULL, NULL};
    int idx[2] = {*chosen, *rejected}, rc = 0;
    for (int k = 0; rc == 0 && k < 2; k++) {
        int n;
        const int32_t *tokens = vote_entry_candidate(entry, idx[k], &n);
        size_t len;
        rc = tokenizer_decode(r->tokenizer, tokens, (size_t)n, true, &text[k], &len, err);
    }
    oracle_vote v;
    if (rc == 0)
        rc = oracle_user_vote(r->oracle, r->turn_of[q], chat_template_strip_answer_prefix(r->template_kind, text[0]),
                              chat_template_strip_answer_prefix(r->template_kind, text[1]), &r->relabel_rng, &v, err);
    free(text[0]);
    free(text[1]);
    if (rc) return rc;
    r->oracle_labels++;
    if (v.choice == ORACLE_PREFER_B) {
        *chosen = idx[1];
        *rejected = idx[0];
        r->oracle_swaps++;
    }
    return 0;
}

/* The trainer with the configuration's trainer and erm sections, this run's model and seed;
 * the serving side starts from the trainer's own initial ERM. */
static int open_trainer(sim_run *r) {
    const sim_run_options *o = r->o;
    int rc = trainer_config_load(o->config, o->config_path, o->sets, o->n_sets, &r->tc, r->err);
    if (rc) return rc;
    online_trainer_options *t = &r->tc.trainer;
    t->model_dir = o->model_dir;
    t->model_id = o->model_dir; /* what the engine adapter writes into the votes */
    t->erm_path = r->tc.erm_path[0] ? r->tc.erm_path : NULL;
    t->seed = (uint64_t)o->seed;
    t->publish_every = 0;                  /* published here, after every update */
    t->checkpoint_every = 1 << 30;         /* a run is repeated, never resumed */
    if (r->strategy == DUEL_STRATEGY_BON) t->lr_scale = 0; /* ERM-only learning */
    if (strcmp(o->labels, "oracle") == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/tokenizer.json", o->model_dir);
        if (!(r->turn_of = calloc((size_t)o->queries, sizeof *r->turn_of)))
            return duel_error_set(r->err, DUEL_ENOMEM, "out of memory");
        if ((rc = tokenizer_load(path, &r->tokenizer, r->err)) ||
            (rc = chat_template_detect(o->model_dir, &r->template_kind, r->err)))
            return rc;
        duel_rng_seed(&r->relabel_rng, (uint64_t)o->seed * 0x9e3779b97f4a7c15ull + 3);
        t->sea_relabel = relabel_by_oracle;
        t->sea_relabel_context = r;
    }
    if ((rc = online_trainer_open(t, r->data_dir, &r->trainer, r->err))) return rc;
    return erm_save(online_trainer_erm(r->trainer), r->erm0, r->err);
}

/* duel.pilaf_beta of the configuration (pilaf's mixed logits), as `duel serve` reads it. */
static int pilaf_beta(const sim_run *r, double *beta) {
    const json_t *v = json_object_get(duel_config_section(r->o->config, "duel"), "pilaf_beta");
    *beta = json_is_number(v) ? json_number_value(v) : -1;
    if (!(*beta >= 0 && *beta <= 1e6))
        return duel_error_set(r->err, DUEL_EINVAL, "duel.pilaf_beta must be a number in [0, 1e6]");
    return 0;
}

static int open_serving(sim_run *r) {
    const sim_run_options *o = r->o;
    backend_engine_config bc = {
        .model_dir = o->model_dir,
        .erm_path = r->erm0,
        .strategy = o->strategy,
        /* pilaf: two answers whatever --candidates says (the adapter serves it so) */
        .num_candidates = (int)(r->strategy == DUEL_STRATEGY_PASSIVE ? o->passive_candidates
                                : r->strategy == DUEL_STRATEGY_PILAF ? 2
                                                                     : o->candidates),
        .temperature = (float)o->temperature,
        .top_p = 1.0f,
        .max_new_tokens = (int)o->max_new_tokens,
        .snapshots = true, /* the base model is the frozen reference arm: the ERM's features */
    };
    int rc = pilaf_beta(r, &bc.pilaf_beta);
    /* the ERM's features: the frozen base model's hidden states, or the serving snapshot's own */
    if (rc == 0) rc = cli_engine_policy_features(r->o->config, &bc.policy_features, r->err);
    if (rc == 0) rc = model_load(o->model_dir, &r->reference, r->err);
    if (rc) return rc;
    /* one duel at a time, on two arms while a snapshot is swapped in: a few contexts' worth */
    bc.kv_memory_bytes = loop_kv_bytes(model_get_config(r->reference), 4 * bc.num_candidates, bc.max_new_tokens);
    if ((rc = backend_engine_create(&bc, &r->backend, r->err))) return rc;
    loop_queue_init(&r->queue);
    r->queue_ready = true;
    return r->backend.start(r->backend.impl, loop_queue_sink, &r->queue, r->err);
}

/* ---- snapshots ------------------------------------------------------------------------------ */

/* Writes the trainer's state as the next snapshot (when it has updates the last one lacks). */
static int publish(sim_run *r) {
    online_trainer_status s;
    online_trainer_get_status(r->trainer, &s);
    if (s.step == r->published_step) return 0; /* nothing new since the last one (or no update yet) */
    double t = duel_time_seconds();
    int64_t v = r->version + 1;
    snapshot_info info = {v, r->version, s.step, s.prefs_applied, 0, r->o->model_dir, NULL, 0};
    int rc = snapshot_write(r->data_dir, &info, online_trainer_policy(r->trainer), online_trainer_config_json(r->trainer),
                            online_trainer_erm(r->trainer), r->o->model_dir, r->snapshot_dir, sizeof r->snapshot_dir,
                            r->err);
    if (rc) return rc;
    online_trainer_set_published(r->trainer, v);
    if (r->version > 0 && r->version != r->installed) snapshot_remove(r->data_dir, r->version, NULL);
    r->version = v;
    r->published_step = s.step;
    r->publish_s += duel_time_seconds() - t;
    return 0;
}

/* Online: the serving side takes the newest snapshot (the previous one's folder goes: its
 * weights are in memory). */
static int install(sim_run *r) {
    if (r->o->offline || r->version == r->installed) return 0;
    double t = duel_time_seconds();
    int rc = r->backend.install_snapshot(r->backend.impl, r->version, r->snapshot_dir, r->err);
    if (rc) return rc;
    if (r->installed > 0) snapshot_remove(r->data_dir, r->installed, NULL);
    r->installed = r->version;
    r->publish_s += duel_time_seconds() - t;
    return 0;
}

/* ---- one query ------------------------------------------------------------------------------ */

/* The vote as the gateway would write it, through the stream entry's encoder and decoder (so the
 * trainer gets what `duel train` would read), offered under stream id "<q+1>-0". */
static int offer(sim_run *r, const duel_backend_result *res, oracle_choice choice) {
    char vote_id[64], duel_id[64], stream_id[STREAM_ID_MAX];
    snprintf(vote_id, sizeof vote_id, "sim-%lld-%lld", r->o->seed, r->queries);
    snprintf(duel_id, sizeof duel_id, "sim-duel-%lld", r->queries);
    snprintf(stream_id, sizeof stream_id, "%lld-0", r->queries + 1);
    vote_entry borrowed, owned;
    vote_entry_texts texts;
    loop_vote_entry(res, choice, vote_id, duel_id, r->queries, &borrowed, &texts);
    vote_entry_encoded enc;
    int rc = vote_entry_encode(&borrowed, &texts, &enc, r->err);
    if (rc) return rc;
    vote_entry_limits limits;
    online_trainer_limits(r->trainer, &limits);
    memset(&owned, 0, sizeof owned);
    rc = vote_entry_decode(enc.fields, enc.n_fields, &limits, &owned, r->err);
    vote_entry_encoded_free(&enc);
    online_offer_result result;
    if (rc == 0) rc = online_trainer_offer(r->trainer, stream_id, &owned, &result, r->err);
    vote_entry_free(&owned);
    if (rc || !online_trainer_cut_due(r->trainer, true)) return rc;
    double t = duel_time_seconds();
    if ((rc = online_trainer_apply(r->trainer, r->err))) return rc;
    r->train_s += duel_time_seconds() - t;
    if (r->o->offline) return 0; /* published when an evaluation needs it */
    if ((rc = publish(r))) return rc;
    return install(r);
}

/* Serves turn t of prompt item (history: the earlier turns with the answers the user chose),
 * votes, offers. *chosen (malloc'd) receives the answer that joins the conversation. */
static int query(sim_run *r, const oracle_prompt *item, int t, const duel_backend_turn *history, char **chosen) {
    const oracle_turn *turn = &item->turns[t];
    if (r->turn_of) r->turn_of[r->queries] = turn;
    duel_backend_request req = {.request_id = (uint64_t)r->queries + 1,
                                .history = history,
                                .n_history = (size_t)t,
                                .text = turn->prompt,
                                .arm_snapshot = -1,
                                .seed = (uint64_t)r->o->seed * 1000003ull + (uint64_t)r->queries};
    duel_backend_result *res = NULL;
    double t0 = duel_time_seconds();
    int rc = loop_serve_one(&r->backend, &r->queue, &req, SIM_SERVE_TIMEOUT_S, &res, r->err);
    r->serve_s += duel_time_seconds() - t0;
    if (rc) return rc;
    oracle_vote v;
    if ((rc = oracle_user_vote(r->oracle, turn, res->text_a, res->text_b, &r->vote_rng, &v, r->err)) == 0) {
        r->interval_score_sum += v.score_a + v.score_b;
        r->interval_answers += 2;
        r->interval_votes++;
        if (vote_choice_is_pair(loop_vote_choice(v.choice))) r->ab++;
        else if (v.choice == ORACLE_TIE) r->ties++, r->interval_ties++;
        else r->both_bad++, r->interval_both_bad++;
        *chosen = strdup(v.choice == ORACLE_PREFER_B ? res->text_b : res->text_a);
        if (!*chosen) rc = duel_error_set(r->err, DUEL_ENOMEM, "out of memory");
    }
    if (rc == 0) rc = offer(r, res, v.choice);
    duel_backend_result_free(res);
    r->queries++;
    return rc;
}

/* ---- evaluation ------------------------------------------------------------------------------ */

/* bon's answers: the best-of-M pick (y1, the ensemble mean's argmax) of a duel served by the
 * current snapshot, with the same seeds at every evaluation point. */
static int bon_answers(sim_run *r, loop_answers *out) {
    memset(out, 0, sizeof *out);
    out->count = r->held.count;
    out->samples = 1;
    if (!(out->items = calloc((size_t)r->held.count, sizeof *out->items)))
        return duel_error_set(r->err, DUEL_ENOMEM, "out of memory");
    for (int i = 0; i < r->held.count; i++) {
        duel_backend_request req = {.request_id = SIM_EVAL_REQUEST_BASE + (uint64_t)i,
                                    .text = r->held.items[i].turns[0].prompt,
                                    .arm_snapshot = -1,
                                    .seed = SIM_EVAL_SEED + (uint64_t)i};
        duel_backend_result *res = NULL;
        int rc = loop_serve_one(&r->backend, &r->queue, &req, SIM_SERVE_TIMEOUT_S, &res, r->err);
        if (rc) return rc;
        out->items[i].text = strdup(res->side_swap ? res->text_b : res->text_a); /* a = y1 unless swapped */
        duel_backend_result_free(res);
        if (!out->items[i].text) return duel_error_set(r->err, DUEL_ENOMEM, "out of memory");
    }
    return 0;
}

/* Mean of log pi(y) - log pi_ref(y) over the first kl_prompts held-out prompts, y sampled from
 * the policy in dir at temperature 1. */
static int kl_estimate(sim_run *r, const char *dir, double *out) {
    *out = 0;
    if (r->o->kl_prompts == 0) return 0;
    loop_answer_params p = {.max_new_tokens = (int)r->o->max_new_tokens, .temperature = 1.0, .samples = 1,
                            .in_flight = 1, .seed = SIM_EVAL_SEED ^ 0x6b6cull};
    loop_answers a;
    model *policy = NULL;
    int rc = loop_answers_make(dir, &r->held, (int)r->o->kl_prompts, &p, &a, r->err);
    if (rc) return rc;
    if ((rc = model_load(dir, &policy, r->err)) == 0) {
        double sum = 0;
        for (int i = 0; rc == 0 && i < a.count; i++) {
            double lp = 0, lr = 0;
            const loop_answer *y = &a.items[i];
            if ((rc = loop_sequence_logprob(policy, a.prompts[i], a.n_prompt[i], y->tokens, y->n_tokens, &lp, r->err)) ==
                    0 &&
                (rc = loop_sequence_logprob(r->reference, a.prompts[i], a.n_prompt[i], y->tokens, y->n_tokens, &lr,
                                            r->err)) == 0)
                sum += lp - lr;
        }
        if (rc == 0) *out = sum / a.count;
    }
    model_free(policy);
    loop_answers_free(&a);
    return rc;
}

static json_t *real_or_null(double v, bool known) { return known ? json_real(v) : json_null(); }

/* One evaluation point: the line of the JSONL. */
static int evaluate(sim_run *r) {
    double t = duel_time_seconds();
    int rc = r->o->offline ? publish(r) : 0;
    if (rc) return rc;
    const char *dir = r->version > 0 ? r->snapshot_dir : r->o->model_dir;
    loop_answers now;
    loop_comparison c;
    double kl = 0;
    if (r->strategy == DUEL_STRATEGY_BON) rc = bon_answers(r, &now);
    else {
        loop_answer_params p = {.max_new_tokens = (int)r->o->max_new_tokens, .samples = 1, .in_flight = 1,
                                .seed = SIM_EVAL_SEED};
        rc = loop_answers_make(dir, &r->held, r->held.count, &p, &now, r->err);
    }
    if (rc == 0) rc = loop_compare(r->oracle, &r->held, &r->base, &now, &c, NULL, NULL, r->err);
    loop_answers_free(&now);
    if (rc == 0) rc = kl_estimate(r, dir, &kl);
    if (rc) return rc;
    online_trainer_status s;
    online_trainer_get_status(r->trainer, &s);
    const bool interval = r->interval_votes > 0;
    const long long votes = r->ab + r->ties + r->both_bad;
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:i}",
                          "strategy", r->o->strategy, "mode", r->o->offline ? "offline" : "online", "seed",
                          (json_int_t)r->o->seed, "queries", (json_int_t)r->queries, "ab", (json_int_t)r->ab, "ties",
                          (json_int_t)r->ties, "both_bad", (json_int_t)r->both_bad, "updates", (json_int_t)s.step,
                          "prefs_applied", (json_int_t)s.prefs_applied, "win_share", c.win_share, "mean_p", c.win_rate,
                          "score", c.score_after, "base_score", c.score_before, "kl", kl, "changed", c.changed);
    if (!o) return duel_error_set(r->err, DUEL_ENOMEM, "out of memory");
    json_object_set_new(o, "online_score",
                        real_or_null(interval ? r->interval_score_sum / (double)r->interval_answers : 0, interval));
    json_object_set_new(o, "interval_tie_share",
                        real_or_null(interval ? (double)r->interval_ties / (double)r->interval_votes : 0, interval));
    json_object_set_new(o, "interval_both_bad_share",
                        real_or_null(interval ? (double)r->interval_both_bad / (double)r->interval_votes : 0, interval));
    json_object_set_new(o, "tie_share", real_or_null(votes ? (double)r->ties / (double)votes : 0, votes > 0));
    json_object_set_new(o, "erm_accuracy", real_or_null(s.erm_accuracy, s.erm_scored > 0));
    json_object_set_new(o, "train_kl", real_or_null(s.kl, s.step > 0));
    json_object_set_new(o, "loss", real_or_null(s.loss, s.step > 0));
    json_object_set_new(o, "synthetic", json_integer((json_int_t)s.synthetic_total));
    json_object_set_new(o, "labels", json_string(r->o->labels));
    json_object_set_new(o, "oracle_labels", json_integer((json_int_t)r->oracle_labels));
    json_object_set_new(o, "oracle_label_swaps", json_integer((json_int_t)r->oracle_swaps));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line) return duel_error_set(r->err, DUEL_ENOMEM, "out of memory");
    int w = fprintf(r->out, "%s\n", line);
    free(line);
    if (w < 0 || fflush(r->out) != 0)
        return duel_error_set(r->err, DUEL_EIO, "%s: %s", r->o->out_path, strerror(errno));
    if (!r->o->quiet)
        fprintf(stderr, "  %s %s seed %lld at %lld queries: win share %.3f, mean P %.3f, score %.4f, kl %.3f%s\n",
                r->o->strategy, r->o->offline ? "offline" : "online", r->o->seed, r->queries, c.win_share, c.win_rate,
                c.score_after, kl, "");
    r->interval_votes = r->interval_ties = r->interval_both_bad = r->interval_answers = 0;
    r->interval_score_sum = 0;
    r->eval_s += duel_time_seconds() - t;
    return 0;
}

static void progress(sim_run *r) {
    if (r->o->quiet) return;
    double now = duel_time_seconds();
    if (now - r->last_progress < SIM_PROGRESS_S && r->queries < r->o->queries) return;
    r->last_progress = now;
    double rate = r->queries / (now - r->t0 > 0 ? now - r->t0 : 1);
    double eta = rate > 0 ? (double)(r->o->queries - r->queries) / rate : 0;
    fprintf(stderr, "\r%s %s seed %lld: %lld/%lld queries, %.2f q/s, ETA %.0f s   ", r->o->strategy,
            r->o->offline ? "offline" : "online", r->o->seed, r->queries, r->o->queries, rate, eta);
    if (r->queries >= r->o->queries) fprintf(stderr, "\n");
}

/* ---- the run ----------------------------------------------------------------------------- */

static int run_queries(sim_run *r) {
    int rc = evaluate(r); /* the starting point: the base model against itself */
    duel_backend_turn history[ORACLE_PROMPT_MAX_TURNS];
    char *chosen[ORACLE_PROMPT_MAX_TURNS] = {0};
    for (long long item = 0; rc == 0 && r->queries < r->o->queries; item++) {
        const oracle_prompt *p = &r->asks.items[r->order[item % r->asks.count]];
        int t = 0;
        for (; rc == 0 && t < p->num_turns && r->queries < r->o->queries; t++) {
            if ((rc = query(r, p, t, history, &chosen[t]))) break;
            history[t] = (duel_backend_turn){.user = p->turns[t].prompt, .assistant = chosen[t]}; /* no ids: re-encoded */
            if (r->queries % r->o->eval_every == 0 || r->queries == r->o->queries) rc = evaluate(r);
            progress(r);
        }
        for (int k = 0; k < ORACLE_PROMPT_MAX_TURNS; k++) {
            free(chosen[k]);
            chosen[k] = NULL;
        }
    }
    return rc;
}

static void run_release(sim_run *r) {
    if (r->backend.destroy) r->backend.destroy(r->backend.impl);
    if (r->queue_ready) loop_queue_destroy(&r->queue);
    online_trainer_close(r->trainer);
    model_free(r->reference);
    tokenizer_free(r->tokenizer);
    free(r->turn_of);
    loop_answers_free(&r->base);
    oracle_user_close(r->oracle);
    oracle_prompt_set_free(&r->asks);
    oracle_prompt_set_free(&r->held);
    free(r->order);
    if (r->out && r->out != stdout) fclose(r->out);
    if (r->own_work && r->work[0]) bench_remove_tree(r->work);
}

int sim_run_inprocess(const sim_run_options *o, json_t **summary, duel_error *err) {
    if (summary) *summary = NULL;
    sim_run *r = calloc(1, sizeof *r);
    if (!r) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    r->o = o;
    r->err = err;
    int rc;
    if (o->queries < 1 || o->eval_every < 1 || o->held_out < 1)
        rc = duel_error_set(err, DUEL_EINVAL, "queries, eval_every and held_out must be >= 1");
    else if ((rc = open_inputs(r)) == 0 && (rc = make_work(r)) == 0 && (rc = open_trainer(r)) == 0 &&
             (rc = open_serving(r)) == 0) {
        r->out = strcmp(o->out_path, "-") == 0 ? stdout : fopen(o->out_path, "w");
        if (!r->out) rc = duel_error_set(err, DUEL_EIO, "%s: %s", o->out_path, strerror(errno));
    }
    if (rc == 0) {
        r->t0 = r->last_progress = duel_time_seconds();
        loop_answer_params p = {.max_new_tokens = (int)o->max_new_tokens, .samples = 1, .in_flight = 1,
                                .seed = SIM_EVAL_SEED};
        rc = loop_answers_make(o->model_dir, &r->held, r->held.count, &p, &r->base, err);
        r->eval_s += duel_time_seconds() - r->t0;
    }
    if (rc == 0) rc = run_queries(r);
    if (rc == 0 && summary) {
        double wall = duel_time_seconds() - r->t0;
        *summary = json_pack("{s:s, s:s, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "strategy", o->strategy,
                             "mode", o->offline ? "offline" : "online", "seed", (json_int_t)o->seed, "queries",
                             (json_int_t)r->queries, "wall_seconds", wall, "queries_per_second",
                             r->queries / (wall > 0 ? wall : 1), "serve_seconds", r->serve_s, "train_seconds",
                             r->train_s, "publish_seconds", r->publish_s, "eval_seconds", r->eval_s,
                             "loop_queries_per_second",
                             r->queries / (r->serve_s + r->train_s + r->publish_s > 0 ? r->serve_s + r->train_s + r->publish_s : 1));
    }
    run_release(r);
    free(r);
    return rc;
}
