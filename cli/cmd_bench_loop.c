/* cmd_bench_loop.c: `duel bench loop`, the whole learning loop of DESIGN.md section 1 on one
 * machine without sockets (issue 7's end-to-end run and its speed figures):
 *
 *   this process: serving side = the gateway's engine adapter (gateway/duel_backend.h, engine
 *     thread, ERM scoring, E&E-TS selection) + its snapshot loader thread (duel:notify and
 *     duel:snapshots, snapshot_verify, hot-swap); a scripted user that asks the prompts of
 *     --prompts and votes with the lexical oracle against each prompt's reference answer, XADDing
 *     the vote in the duel:prefs entry format (common/vote_entry.h's encoder);
 *   a child process: `duel train` (the online trainer service) on a private redis-server.
 *
 * Figures: duels served per second; a/b votes applied by the trainer per second (while votes
 * arrive); vote-to-serving latency, from a vote's XADD to the first duel served by a snapshot
 * that includes it (the trainer applies in stream order, so snapshot v with prefs_applied P holds
 * the first P a/b votes), p50 and p95 over the votes served while the run lasted; and the
 * learning itself: on --held-out prompts, the win rate of the last served snapshot's answers
 * over the base model's, judged by the same lexical oracle against the references (ties count
 * half), with the mean oracle score before and after: greedy answers, and --eval-samples answers
 * sampled at the duels' temperature (what users are shown), with the same seeds for both; and
 * on --control prompts (what the votes should leave alone), the same greedy comparison. --rate
 * paces the votes (a user population voting R times per second); 0 votes as fast as the serving
 * side answers, which on a small machine starves the trainer of CPU (the latency then measures
 * the backlog). */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "bench_redis.h"
#include "chat_template.h"
#include "cli.h"
#include "config.h"
#include "duel_backend.h"
#include "engine.h"
#include "json_util.h"
#include "machine_limits.h"
#include "model.h"
#include "oracle.h"
#include "snapshot.h"
#include "snapshot_loader.h"
#include "timer.h"
#include "tokenizer.h"
#include "vote_entry.h"
#include "weight_transport_model.h"

extern char **environ;

int bench_loop(int argc, char **argv);

#define LOOP_MAX_SETS 64
#define LOOP_MAX_QA 100000
#define LOOP_MAX_LINE (1 << 16)
#define LOOP_EVAL_BATCH 32 /* greedy evaluation requests in flight */

typedef struct loop_qa {
    char *prompt, *reference;
} loop_qa;

typedef struct loop_qa_set {
    loop_qa *items;
    int count;
} loop_qa_set;

/* Events from the backend's thread to the main thread (the sink pushes, main pops). */
typedef struct loop_event {
    struct loop_event *next;
    duel_backend_event ev;
    double at; /* when the sink got it (seconds, duel_time_seconds) */
} loop_event;

typedef struct loop_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    loop_event *head, *tail;
} loop_queue;

static void queue_sink(void *ctx, duel_backend_event *ev) {
    loop_queue *q = ctx;
    loop_event *e = calloc(1, sizeof *e);
    if (!e) { /* nothing to do but drop it; the main loop's timeout reports the missing duel */
        duel_backend_result_free(ev->result);
        return;
    }
    e->ev = *ev;
    ev->result = NULL; /* ours now (the backend frees what the sink leaves) */
    e->at = duel_time_seconds();
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = e;
    else q->head = e;
    q->tail = e;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* Pops an event, waiting up to timeout_s; NULL on timeout. */
static loop_event *queue_pop(loop_queue *q, double timeout_s) {
    double deadline = duel_time_seconds() + timeout_s;
    pthread_mutex_lock(&q->mu);
    while (!q->head) {
        double left = deadline - duel_time_seconds();
        if (left <= 0) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + (left < 0.2 ? left : 0.2);
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&q->cv, &q->mu, &ts);
    }
    loop_event *e = q->head;
    if (e) {
        q->head = e->next;
        if (!q->head) q->tail = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    return e;
}

/* ---- prompts ------------------------------------------------------------------------------- */

/* Reads up to max JSONL objects {"prompt": text, <reference key>: text, ...}; the reference is
 * the first of "reference", "gloss", "response" present. Lines without both are skipped;
 * malformed JSON is an error naming the line. */
static int qa_load(const char *path, int max, loop_qa_set *out, duel_error *err) {
    FILE *f = fopen(path, "r");
    if (!f) return duel_error_set(err, DUEL_ENOTFOUND, "%s: %s", path, strerror(errno));
    int rc = 0, line_no = 0;
    char *line = malloc(LOOP_MAX_LINE);
    out->items = calloc((size_t)max, sizeof *out->items);
    if (!line || !out->items) rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
    while (rc == 0 && out->count < max && fgets(line, LOOP_MAX_LINE, f)) {
        line_no++;
        if (line[strspn(line, " \t\r\n")] == '\0') continue;
        json_error_t je;
        json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(o)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s:%d: not a JSON object (%s)", path, line_no, o ? "" : je.text);
            json_decref(o);
            break;
        }
        const char *prompt = json_string_value(json_object_get(o, "prompt")), *ref = NULL;
        static const char *const keys[] = {"reference", "gloss", "response"};
        for (int k = 0; k < 3 && !ref; k++) ref = json_string_value(json_object_get(o, keys[k]));
        if (prompt && ref && *prompt && *ref) {
            loop_qa *q = &out->items[out->count];
            q->prompt = strdup(prompt);
            q->reference = strdup(ref);
            if (!q->prompt || !q->reference) rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
            out->count++;
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    if (rc == 0 && out->count == 0)
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: no line has \"prompt\" and \"reference\" (or \"gloss\", \"response\")", path);
    return rc;
}

static void qa_free(loop_qa_set *s) {
    for (int i = 0; i < s->count; i++) {
        free(s->items[i].prompt);
        free(s->items[i].reference);
    }
    free(s->items);
    memset(s, 0, sizeof *s);
}

static int lexical(const char *reference, const char *answer, size_t answer_len, double *score, duel_error *err) {
    oracle_lexical_config lc;
    oracle_lexical_config_default(&lc);
    return oracle_lexical_score(&lc, reference, strlen(reference), answer, answer_len, score, NULL, err);
}

/* ---- greedy evaluation --------------------------------------------------------------------- */

/* Answers (at most max_new tokens) of the model in dir to every prompt of s: samples per prompt,
 * greedy when temperature is 0, else sampled with the fixed seed 1 + prompt index (the same
 * draws for every model compared). (*out)[i * samples + k] is prompt i's answer k. */
static int model_answers(const char *dir, const loop_qa_set *s, int max_new, double temperature, int samples,
                         char ***out, duel_error *err) {
    model *m = NULL;
    tokenizer *tok = NULL;
    engine *e = NULL;
    chat_template_kind kind;
    char path[4200];
    char **answers = calloc((size_t)s->count * (size_t)samples, sizeof *answers);
    int32_t **prompts = calloc((size_t)s->count, sizeof *prompts);
    int rc = !answers || !prompts ? duel_error_set(err, DUEL_ENOMEM, "out of memory") : 0;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (rc == 0 && (rc = model_load(dir, &m, err)) == 0 && (rc = tokenizer_load(path, &tok, err)) == 0)
        rc = chat_template_detect(dir, &kind, err);
    int32_t stops[9];
    int n_stops = 0;
    if (rc == 0) {
        const model_config *c = model_get_config(m);
        for (int i = 0; i < c->num_eos_token_ids && n_stops < 8; i++) stops[n_stops++] = c->eos_token_ids[i];
        const char *eot = chat_template_end_of_turn(kind);
        if (eot && tokenizer_token_id(tok, eot) >= 0) stops[n_stops++] = tokenizer_token_id(tok, eot);
        engine_model_params arm = {.arm = "eval", .model = m, .tokenizer = tok};
        engine_params ep = {.models = &arm, .num_models = 1};
        rc = engine_create(&ep, &e, err);
    }
    for (int first = 0; rc == 0 && first < s->count; first += LOOP_EVAL_BATCH) {
        int count = s->count - first < LOOP_EVAL_BATCH ? s->count - first : LOOP_EVAL_BATCH, submitted = 0;
        for (int i = first; rc == 0 && i < first + count; i++, submitted++) {
            chat_message msg = {.role = "user", .content = s->items[i].prompt};
            size_t n = 0;
            if ((rc = chat_template_encode(kind, tok, &msg, 1, true, &prompts[i], &n, err))) break;
            engine_request req = {.tokens = prompts[i],
                                  .num_tokens = (int)n,
                                  .num_candidates = samples,
                                  .sampling = {.temperature = (float)temperature, .top_p = 1.0f},
                                  .seed = 1 + (uint64_t)i,
                                  .max_new_tokens = max_new,
                                  .stop_tokens = stops,
                                  .num_stop_tokens = n_stops,
                                  .user = (void *)(intptr_t)i};
            uint64_t id;
            rc = engine_submit(e, &req, &id, err);
        }
        for (int done = 0; done < submitted;) {
            engine_event *ev = NULL;
            engine_poll(e, 120.0, &ev);
            if (!ev) {
                rc = rc ? rc : duel_error_set(err, DUEL_EIO, "evaluation: no answer from the engine in 120 s");
                break;
            }
            intptr_t i = (intptr_t)ev->user;
            if (ev->kind == ENGINE_EVENT_ERROR) {
                rc = rc ? rc : duel_error_set(err, ev->status, "evaluation: %s", ev->message);
                done++;
            } else if (ev->kind == ENGINE_EVENT_CANDIDATE && ev->candidate >= 0 && ev->candidate < samples) {
                /* as the chat page shows it: without the template's answer prefix */
                free(answers[i * samples + ev->candidate]);
                answers[i * samples + ev->candidate] =
                    strdup(ev->text ? chat_template_strip_answer_prefix(kind, ev->text) : "");
            } else if (ev->kind == ENGINE_EVENT_FINISHED || ev->kind == ENGINE_EVENT_CANCELLED) {
                done++;
            }
            engine_event_free(ev);
        }
    }
    engine_destroy(e);
    model_free(m);
    tokenizer_free(tok);
    for (int i = 0; prompts && i < s->count; i++) free(prompts[i]);
    free(prompts);
    const int total = s->count * samples;
    for (int i = 0; rc == 0 && i < total; i++)
        if (!answers[i] && !(answers[i] = strdup(""))) rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
    if (rc) {
        for (int i = 0; answers && i < total; i++) free(answers[i]);
        free(answers);
        answers = NULL;
    }
    *out = answers;
    return rc;
}

static void free_answers(char **a, int n) {
    for (int i = 0; a && i < n; i++) free(a[i]);
    free(a);
}

/* ---- the trainer child --------------------------------------------------------------------- */

static pid_t spawn_trainer(const char *config, const char *host, int port, const char *data_dir, const char *log) {
    char redis[300];
    snprintf(redis, sizeof redis, "%s:%d", host, port);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* the trainer must not outlive a bench that crashed or was killed */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(125);
        if (!freopen(log, "w", stderr)) _exit(126);
        if (!freopen("/dev/null", "w", stdout)) _exit(126);
        execl("/proc/self/exe", "duel", "train", "--redis", redis, "--config", config, "--data-dir", data_dir,
              (char *)NULL);
        _exit(127);
    }
    return pid;
}

static long long hash_int(redisContext *c, const char *key, const char *field) {
    redisReply *r = redisCommand(c, "HGET %s %s", key, field);
    long long v = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    if (r) freeReplyObject(r);
    return v;
}

static double hash_real(redisContext *c, const char *key, const char *field) {
    redisReply *r = redisCommand(c, "HGET %s %s", key, field);
    double v = r && r->type == REDIS_REPLY_STRING ? atof(r->str) : -1;
    if (r) freeReplyObject(r);
    return v;
}

/* One comparison of the last snapshot's answers with the base model's (compare_answers). */
typedef struct loop_comparison {
    double win_rate, score_before, score_after;
    int changed; /* prompts whose answers differ */
} loop_comparison;

/* The comparison's figures as PREFIXwin_rate, PREFIXscore_before, ... in o. */
static void json_set_comparison(json_t *o, const char *prefix, const loop_comparison *c) {
    const struct {
        const char *name;
        json_t *value;
    } fields[] = {{"win_rate", json_real(c->win_rate)},
                  {"score_before", json_real(c->score_before)},
                  {"score_after", json_real(c->score_after)},
                  {"changed", json_integer(c->changed)}};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s%s", prefix, fields[i].name);
        json_object_set_new(o, key, fields[i].value);
    }
}

/* The base model's answers against the last snapshot's on the held-out prompts, `samples` per
 * prompt ((before|after)[i * samples + k], the same seeds): per prompt the mean lexical score of
 * its answers; win_rate counts a prompt whose mean rose as a win, an equal one as half; changed
 * counts the prompts with any answer that differs. With show > 0, the first `show` prompts' first
 * answers go to stderr. */
static int compare_answers(const loop_qa_set *held, char **before, char **after, int samples, int show,
                           long long version, loop_comparison *out, duel_error *err) {
    double wins = 0, sum_before = 0, sum_after = 0;
    out->changed = 0;
    for (int i = 0; i < held->count; i++) {
        const char *reference = held->items[i].reference;
        double mb = 0, ma = 0;
        bool differs = false;
        for (int k = 0; k < samples; k++) {
            const char *b = before[i * samples + k], *a = after[i * samples + k];
            double sb, sa;
            int rc = lexical(reference, b, strlen(b), &sb, err);
            if (rc || (rc = lexical(reference, a, strlen(a), &sa, err))) return rc;
            differs |= strcmp(a, b) != 0;
            mb += sb / samples;
            ma += sa / samples;
            if (k == 0 && i < show)
                fprintf(stderr, "  %s\n    reference: %s\n    base:      %s (%.3f)\n    v%lld:%*s %s (%.3f)\n",
                        held->items[i].prompt, reference, b, sb, version, version < 10 ? 7 : 6, "", a, sa);
        }
        sum_before += mb;
        sum_after += ma;
        wins += ma > mb ? 1.0 : ma == mb ? 0.5 : 0.0;
        out->changed += differs;
    }
    out->win_rate = wins / held->count;
    out->score_before = sum_before / held->count;
    out->score_after = sum_after / held->count;
    return 0;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- one vote ------------------------------------------------------------------------------ */

/* Votes on a served duel with the lexical oracle and XADDs the entry. *choice_out is the vote. */
static int vote_and_send(redisContext *c, const duel_backend_result *r, const loop_qa *q, int serial,
                         vote_choice *choice_out, duel_error *err) {
    double sa, sb;
    int rc;
    if ((rc = lexical(q->reference, r->text_a, r->len_a, &sa, err)) ||
        (rc = lexical(q->reference, r->text_b, r->len_b, &sb, err)))
        return rc;
    oracle_preference_config pc;
    oracle_preference_config_default(&pc);
    oracle_choice oc;
    if ((rc = oracle_prefer(&pc, sa, sb, NULL, &oc, err))) return rc;
    vote_entry e;
    memset(&e, 0, sizeof e);
    snprintf(e.vote_id, sizeof e.vote_id, "bench-loop-vote-%08d", serial);
    snprintf(e.duel_id, sizeof e.duel_id, "bench-loop-duel-%08d", serial);
    snprintf(e.model_id, sizeof e.model_id, "%s", r->model_id);
    snprintf(e.strategy, sizeof e.strategy, "%s", r->strategy);
    e.ts_ms = duel_time_unix_ms();
    e.policy_version = r->policy_version;
    e.choice = oc == ORACLE_PREFER_A ? VOTE_CHOICE_A : oc == ORACLE_PREFER_B ? VOTE_CHOICE_B : VOTE_CHOICE_TIE;
    e.side_swap = r->side_swap;
    e.chosen_idx = oc == ORACLE_PREFER_B ? r->cand_b : r->cand_a;
    e.rejected_idx = oc == ORACLE_PREFER_B ? r->cand_a : r->cand_b;
    e.num_candidates = r->num_candidates;
    e.d_feat = r->d_feat;
    e.num_heads = r->num_heads;
    e.n_prompt_tokens = (int)r->n_prompt_tokens;
    e.prompt_tokens = r->prompt_tokens;
    e.n_cand_tokens = (int)r->n_cand_tokens;
    e.cand_tokens = r->cand_tokens;
    e.cand_offsets = r->cand_offsets;
    e.features = r->features;
    e.erm_rewards = r->rewards;
    e.ref_logprobs = r->ref_logprobs; /* the serving engine's reference pass */
    const bool b_won = oc == ORACLE_PREFER_B;
    vote_entry_texts texts = {r->gen_params_json, r->prompt_text, b_won ? r->text_b : r->text_a,
                              b_won ? r->text_a : r->text_b};
    vote_entry_encoded enc;
    if ((rc = vote_entry_encode(&e, &texts, &enc, err))) return rc;
    rc = bench_xadd_vote(c, "duel:prefs", &enc, err);
    vote_entry_encoded_free(&enc);
    *choice_out = e.choice;
    return rc;
}

/* ---- the command --------------------------------------------------------------------------- */

typedef struct loop_figures {
    int votes, ab, ties, served;
    double serve_seconds, vote_seconds;
    long long applied, applied_at_last_vote, pending;
    long long final_version, loaded, refused;
    int latency_count;
    double latency_p50, latency_p95, latency_max;
    int held_out, eval_samples;
    loop_comparison greedy, sampled; /* held-out: greedy answers; sampled as served */
    int control;                     /* --control prompts (0: none) */
    loop_comparison control_greedy;
    double wall_seconds;
    double gflop_per_vote, sgemm_gflops; /* the trainer's policy update on these votes; the machine */
} loop_figures;

int bench_loop(int argc, char **argv) {
    const char *model_dir = "models/default", *prompts_path = NULL, *held_out_path = NULL, *redis = NULL,
               *control_path = NULL;
    const char *config_path = NULL, *keep_dir = NULL;
    long long votes = 2000, concurrency = 16, candidates = 4, max_new = 40, held_out_n = 200, seed = 1,
              eval_samples = 4;
    double rate = 0, temperature = 1.0;
    bool json = false;
    const char *sets[LOOP_MAX_SETS];
    size_t n_sets = 0;
    duel_error err = {0};
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &model_dir, "DIR", "base policy, served first and trained from (default models/default)", 0, 0, false, NULL},
        {"--prompts", CLI_OPT_STRING, &prompts_path, "FILE", "JSONL of {\"prompt\", \"reference\"|\"gloss\"|\"response\"}: what the scripted users ask (required)", 0, 0, false, NULL},
        {"--held-out", CLI_OPT_STRING, &held_out_path, "FILE", "JSONL in the same format, never asked during the run: the win-rate evaluation (required)", 0, 0, false, NULL},
        {"--held-out-count", CLI_OPT_INT, &held_out_n, "N", "evaluate on the first N held-out (and control) prompts (default 200)", 1, LOOP_MAX_QA, false, NULL},
        {"--control", CLI_OPT_STRING, &control_path, "FILE", "JSONL in the same format, never asked either: prompts the votes should not harm (e.g. a phrasing the model already answers); the last snapshot's greedy answers against the base model's", 0, 0, false, NULL},
        {"--votes", CLI_OPT_INT, &votes, "N", "votes to send (default 2000)", 1, 10000000, false, NULL},
        {"--rate", CLI_OPT_DOUBLE, &rate, "R", "votes per second at most (default 0: as fast as duels are served)", 0, 1e6, false, NULL},
        {"--concurrency", CLI_OPT_INT, &concurrency, "N", "duels in flight (default 16)", 1, 1024, false, NULL},
        {"--candidates", CLI_OPT_INT, &candidates, "M", "candidates per duel (default 4)", 2, 64, false, NULL},
        {"--eval-samples", CLI_OPT_INT, &eval_samples, "K", "also compare K answers per held-out prompt sampled at --temperature, as duels are (default 4; 0: greedy only)", 0, 64, false, NULL},
        {"--max-new-tokens", CLI_OPT_INT, &max_new, "N", "tokens per candidate and per evaluation answer (default 40)", 1, 4096, false, NULL},
        {"--temperature", CLI_OPT_DOUBLE, &temperature, "T", "candidates' sampling temperature (default 1.0)", 0, 10, false, NULL},
        {"--seed", CLI_OPT_INT, &seed, "N", "duel seeds and the serving ERM's seed (default 1)", 0, 9.2e18, false, NULL},
        {"--config", CLI_OPT_STRING, &config_path, "FILE", "the trainer's configuration (config/default.json format; --set K=V overrides, e.g. --set trainer.lr=2e-4)", 0, 0, false, NULL},
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT", "use this Redis (its duel:* keys are deleted!); default: a private redis-server on a free port", 0, 0, false, NULL},
        {"--keep", CLI_OPT_STRING, &keep_dir, "DIR", "work in DIR (trainer log, checkpoint, snapshots) and keep it; default: a temporary folder, removed", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL, "also print the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "bench loop", "--prompts FILE.jsonl --held-out FILE.jsonl [options] [--set section.key=value ...]",
        "The whole learning loop on this machine, without sockets: the gateway's engine adapter\n"
        "serves duels (M candidates, ERM scoring, E&E-TS) to scripted users who vote with the\n"
        "lexical oracle against each prompt's reference; the votes go through a real Redis stream\n"
        "to `duel train` (a child process), whose snapshots the snapshot loader verifies and\n"
        "hot-swaps in. Prints duels served per second, votes applied per second, the trainer's\n"
        "GFLOP per vote and the ceiling this machine's sgemm rate sets on it, the latency from\n"
        "a vote's XADD to the first duel served by a snapshot that includes it (p50, p95), and the\n"
        "held-out win rate of the last snapshot's answers over the base model's (lexical oracle,\n"
        "ties half): greedy, and sampled at --temperature as duels are (fixed seeds, the same for\n"
        "both models); with --control, the same greedy comparison on prompts the votes should\n"
        "leave as good as they were. models/wordnet_data.py writes prompt files for the default\n"
        "model (sft_train.jsonl, test.jsonl); docs/BENCHMARKS.md (\"Learning loop\") shows how.",
        options, sizeof options / sizeof options[0]};
    if (duel_config_take_sets(&argc, argv, sets, LOOP_MAX_SETS, &n_sets, &err))
        return cli_usage_error(&cmd, "%s", err.message);
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (!prompts_path || !held_out_path) return cli_usage_error(&cmd, "--prompts and --held-out are required");

    loop_qa_set asks = {0}, held = {0}, control = {0};
    bench_redis rs = {0};
    redisContext *c = NULL;
    json_t *config = NULL;
    duel_backend backend = {0};
    weight_transport_model_receiver *receiver = NULL; /* snapshots through a GPU transport */
    bool backend_started = false;
    snapshot_loader *loader = NULL;
    pid_t trainer = 0;
    loop_queue queue = {.head = NULL};
    pthread_mutex_init(&queue.mu, NULL);
    pthread_cond_init(&queue.cv, NULL);
    char work[600] = "", path[1200], trainer_log[1200] = "";
    double *xadd_time = NULL, *latency = NULL;
    char **before = NULL, **after = NULL, **before_sampled = NULL, **after_sampled = NULL;
    char **control_before = NULL, **control_after = NULL;
    loop_figures f = {0};
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

    /* the trainer's configuration first: a wrong key fails before any work */
    if ((rc = duel_config_load(config_path, sets, n_sets, (const char *const *)environ, &config, NULL, &err)) ||
        (rc = qa_load(prompts_path, LOOP_MAX_QA, &asks, &err)) ||
        (rc = qa_load(held_out_path, (int)held_out_n, &held, &err)) ||
        (control_path && (rc = qa_load(control_path, (int)held_out_n, &control, &err))))
        goto done;
    if (keep_dir) {
        snprintf(work, sizeof work, "%s", keep_dir);
        if (mkdir(work, 0755) != 0 && errno != EEXIST) {
            rc = duel_error_set(&err, DUEL_EIO, "%s: %s", work, strerror(errno));
            goto done;
        }
    } else {
        snprintf(work, sizeof work, "%s/duel-bench-loop-XXXXXX", tmp);
        if (!mkdtemp(work)) {
            work[0] = '\0';
            rc = duel_error_set(&err, DUEL_EIO, "cannot create a work folder under %s", tmp);
            goto done;
        }
    }
    if (redis) rc = bench_redis_parse(redis, &rs, &err);
    else rc = bench_redis_start(&rs, tmp, "duel-bench-loop-redis", &err);
    if (rc) goto done;
    c = redisConnect(rs.host, rs.port);
    if (!c || c->err) {
        rc = duel_error_set(&err, DUEL_EIO, "redis %s:%d: cannot connect", rs.host, rs.port);
        goto done;
    }
    freeReplyObject(redisCommand(c, "DEL duel:prefs duel:prefs:dead duel:snapshots duel:trainer:status duel:knobs"));

    /* The trainer's configuration (defaults, --config, environment, --set) gets this run's model
     * and Redis. The model id is what the engine adapter writes into the votes: the model dir. */
    json_t *model_section = duel_config_section(config, "model"), *redis_section = duel_config_section(config, "redis");
    json_object_set_new(model_section, "path", json_string(model_dir));
    json_object_set_new(model_section, "id", json_string(model_dir));
    json_object_set_new(redis_section, "host", json_string(rs.host));
    json_object_set_new(redis_section, "port", json_integer(rs.port));
    int batch_size = (int)json_integer_value(json_object_get(duel_config_section(config, "trainer"), "batch_size"));
    snprintf(path, sizeof path, "%s/trainer-config.json", work);
    if (json_dump_file(config, path, JSON_INDENT(2)) != 0) {
        rc = duel_error_set(&err, DUEL_EIO, "%s: cannot write", path);
        goto done;
    }
    char data_dir[1200];
    snprintf(data_dir, sizeof data_dir, "%s/data", work);
    snprintf(trainer_log, sizeof trainer_log, "%s/trainer.log", work);
    /* The machine's sgemm rate, before anything else runs: the ceiling of the trainer's update. */
    if ((rc = machine_sgemm_best(2048, 3, &f.sgemm_gflops, &err))) goto done;
    if ((trainer = spawn_trainer(path, rs.host, rs.port, data_dir, trainer_log)) < 0) {
        trainer = 0;
        rc = duel_error_set(&err, DUEL_EIO, "fork: %s", strerror(errno));
        goto done;
    }

    /* The serving side: the gateway's engine adapter with hot-swap, and its snapshot loader. */
    backend_engine_config bc = {.model_dir = model_dir,
                                .erm_seed = (uint64_t)seed,
                                .strategy = "ee_ts",
                                .num_candidates = (int)candidates,
                                .temperature = (float)temperature,
                                .top_p = 1.0f,
                                .max_new_tokens = (int)max_new,
                                .snapshots = true};
    /* The serving side computes where engine.backend says and takes the snapshots' weights
     * through trainer.weight_transport, as duel serve would. */
    bc.compute = json_string_value(json_object_get(duel_config_section(config, "engine"), "backend"));
    bc.providers = cli_compute_providers(&bc.num_providers);
    if ((rc = cli_snapshot_receiver_open(config, "bench loop", rs.host, rs.port, &receiver, &err)))
        goto done;
    if (receiver) {
        bc.load_snapshot = cli_snapshot_receiver_load;
        bc.load_snapshot_ctx = receiver;
        bc.load_snapshot_via = cli_snapshot_receiver_via(receiver);
    }
    fprintf(stderr, "loading %s; trainer log %s\n", model_dir, trainer_log);
    if ((rc = backend_engine_create(&bc, &backend, &err))) goto done;
    if ((rc = backend.start(backend.impl, queue_sink, &queue, &err))) goto done;
    backend_started = true;
    snapshot_loader_config lc = {.host = rs.host, .port = rs.port};
    if ((rc = snapshot_loader_create(&lc, &backend, &loader, &err))) goto done;

    fprintf(stderr, "greedy answers of the base model to %d held-out prompts ...\n", held.count);
    if ((rc = model_answers(model_dir, &held, (int)max_new, 0.0, 1, &before, &err))) goto done;
    if (eval_samples > 0) {
        fprintf(stderr, "%lld sampled answers per held-out prompt of the base model ...\n", eval_samples);
        if ((rc = model_answers(model_dir, &held, (int)max_new, temperature, (int)eval_samples, &before_sampled,
                                &err)))
            goto done;
    }
    if (control_path) {
        fprintf(stderr, "greedy answers of the base model to %d control prompts ...\n", control.count);
        if ((rc = model_answers(model_dir, &control, (int)max_new, 0.0, 1, &control_before, &err))) goto done;
    }

    xadd_time = calloc((size_t)votes, sizeof *xadd_time);
    latency = calloc((size_t)votes, sizeof *latency);
    if (!xadd_time || !latency) {
        rc = duel_error_set(&err, DUEL_ENOMEM, "out of memory");
        goto done;
    }
    fprintf(stderr, "serving %lld duels (M = %lld, %lld in flight%s) to the lexical oracle ...\n", votes, candidates,
            concurrency, rate > 0 ? ", paced" : "");
    const double t0 = duel_time_seconds();
    long long submitted = 0, in_flight = 0, served_version = 0, serving_prefs = 0;
    int n_served_latency = 0;
    double last_report = t0;
    while (f.votes < votes) {
        while (submitted < votes && in_flight < concurrency) {
            const loop_qa *q = &asks.items[submitted % asks.count];
            duel_backend_request req = {.request_id = (uint64_t)submitted + 1,
                                        .text = q->prompt,
                                        .arm_snapshot = -1,
                                        .seed = (uint64_t)seed * 1000003ull + (uint64_t)submitted};
            if ((rc = backend.submit(backend.impl, &req, &err))) goto done;
            submitted++;
            in_flight++;
        }
        loop_event *le = queue_pop(&queue, 300.0);
        if (!le) {
            rc = duel_error_set(&err, DUEL_EIO, "no duel served in 300 s");
            goto done;
        }
        duel_backend_event *ev = &le->ev;
        if (ev->kind == DUEL_BACKEND_ERROR) {
            rc = duel_error_set(&err, DUEL_EIO, "duel %llu: %s", (unsigned long long)ev->request_id, ev->message);
            free(le);
            goto done;
        }
        if (ev->kind == DUEL_BACKEND_READY) {
            duel_backend_result *r = ev->result;
            in_flight--;
            f.served++;
            /* A duel served by a newer snapshot: the votes it holds have reached serving now. */
            if (r->policy_version > served_version) {
                char key[64];
                snapshot_key_version("duel:", r->policy_version, key, sizeof key, NULL);
                served_version = r->policy_version;
                serving_prefs = hash_int(c, key, "prefs_applied");
                for (; n_served_latency < serving_prefs && n_served_latency < f.ab; n_served_latency++)
                    latency[n_served_latency] = le->at - xadd_time[n_served_latency];
            }
            if (rate > 0) { /* pace: vote k no earlier than t0 + k / rate */
                double due = t0 + (double)f.votes / rate, now = duel_time_seconds();
                if (due > now) bench_sleep_ms((int)((due - now) * 1000.0));
            }
            vote_choice choice;
            const loop_qa *q = &asks.items[(ev->request_id - 1) % (uint64_t)asks.count];
            rc = vote_and_send(c, r, q, f.votes, &choice, &err);
            duel_backend_result_free(r);
            if (rc) {
                free(le);
                goto done;
            }
            if (vote_choice_is_pair(choice)) xadd_time[f.ab++] = duel_time_seconds();
            else f.ties++;
            f.votes++;
            if (duel_time_seconds() - last_report >= 10.0) {
                last_report = duel_time_seconds();
                fprintf(stderr, "  %d votes (%d a/b) in %.0f s; serving v%lld; trainer applied %lld\n", f.votes, f.ab,
                        last_report - t0, served_version, hash_int(c, "duel:trainer:status", "prefs_applied"));
            }
        }
        free(le);
    }
    f.vote_seconds = duel_time_seconds() - t0;
    f.applied_at_last_vote = hash_int(c, "duel:trainer:status", "prefs_applied");

    /* Let the trainer apply all it will: every vote but fewer than batch_size (a batch is at least
     * batch_size pairs, and it takes all that are pending once it has caught up), then wait for
     * the loader to serve the newest snapshot (the trainer publishes by time, so the last updates
     * may need a few seconds). */
    long long expect = batch_size > 1 && f.ab >= batch_size ? f.ab - (batch_size - 1) : batch_size > 1 ? 0 : f.ab;
    fprintf(stderr, "all votes sent in %.0f s; waiting for the trainer to apply at least %lld ...\n", f.vote_seconds,
            expect);
    double wait_start = duel_time_seconds();
    /* done: every a/b vote applied or pending, fewer than a batch pending (the status hash says
     * pending_pairs once the trainer idles) */
    while (((f.applied = hash_int(c, "duel:trainer:status", "prefs_applied")) < expect ||
            (f.pending = hash_int(c, "duel:trainer:status", "pending_pairs")) + f.applied != f.ab ||
            f.pending >= (batch_size > 0 ? batch_size : 1)) &&
           duel_time_seconds() - wait_start < 1800.0) {
        int status;
        if (waitpid(trainer, &status, WNOHANG) == trainer) {
            trainer = 0;
            rc = duel_error_set(&err, DUEL_EIO, "duel train exited early (see %s)", trainer_log);
            goto done;
        }
        bench_sleep_ms(100);
    }
    double applied_seconds = duel_time_seconds() - t0;
    expect = f.applied;
    const double update_gflop = hash_real(c, "duel:trainer:status", "update_gflop");
    f.gflop_per_vote = f.applied > 0 && update_gflop > 0 ? update_gflop / (double)f.applied : 0;
    wait_start = duel_time_seconds();
    snapshot_loader_stats ls;
    for (;;) {
        snapshot_loader_get_stats(loader, &ls);
        long long latest = hash_int(c, "duel:trainer:status", "snapshot");
        if (ls.serving_version >= latest && hash_int(c, "duel:trainer:status", "prefs_applied") >= expect) {
            char key[64];
            snapshot_key_version("duel:", ls.serving_version, key, sizeof key, NULL);
            if (hash_int(c, key, "prefs_applied") >= expect || duel_time_seconds() - wait_start > 60.0) break;
        }
        if (duel_time_seconds() - wait_start > 120.0) break;
        bench_sleep_ms(100);
    }
    f.final_version = ls.serving_version;
    f.loaded = (long long)ls.loaded;
    f.refused = (long long)ls.rejected;
    f.latency_count = n_served_latency;
    if (n_served_latency > 0) {
        qsort(latency, (size_t)n_served_latency, sizeof *latency, compare_double);
        f.latency_p50 = latency[n_served_latency / 2];
        f.latency_p95 = latency[(int)floor(0.95 * (n_served_latency - 1))];
        f.latency_max = latency[n_served_latency - 1];
    }
    f.serve_seconds = f.vote_seconds;

    /* The learning: the served snapshot's greedy answers against the base model's. */
    if (f.final_version > 0) {
        char key[64];
        snapshot_key_version("duel:", f.final_version, key, sizeof key, NULL);
        redisReply *r = redisCommand(c, "HGET %s path", key);
        if (!r || r->type != REDIS_REPLY_STRING) {
            if (r) freeReplyObject(r);
            rc = duel_error_set(&err, DUEL_EIO, "%s has no path", key);
            goto done;
        }
        snprintf(path, sizeof path, "%s", r->str);
        freeReplyObject(r);
    } else {
        fprintf(stderr, "no snapshot was served: the win rate compares the base model with itself\n");
        snprintf(path, sizeof path, "%s", model_dir);
    }
    fprintf(stderr, "greedy answers of %s ...\n", path);
    if ((rc = model_answers(path, &held, (int)max_new, 0.0, 1, &after, &err))) goto done;
    if (eval_samples > 0) {
        fprintf(stderr, "sampled answers of %s ...\n", path);
        if ((rc = model_answers(path, &held, (int)max_new, temperature, (int)eval_samples, &after_sampled, &err)))
            goto done;
    }
    if (control_path) {
        fprintf(stderr, "greedy answers of %s to the control prompts ...\n", path);
        if ((rc = model_answers(path, &control, (int)max_new, 0.0, 1, &control_after, &err))) goto done;
        f.control = control.count;
        if ((rc = compare_answers(&control, control_before, control_after, 1, 0, f.final_version,
                                  &f.control_greedy, &err)))
            goto done;
    }
    f.held_out = held.count;
    f.eval_samples = (int)eval_samples;
    if ((rc = compare_answers(&held, before, after, 1, 5, f.final_version, &f.greedy, &err)))
        goto done;
    if (eval_samples > 0 &&
        (rc = compare_answers(&held, before_sampled, after_sampled, (int)eval_samples, 0, f.final_version,
                              &f.sampled, &err)))
        goto done;
    f.wall_seconds = duel_time_seconds() - t0;

    printf("learning loop on %s: %d votes (%d a/b, %d ties) in %.1f s, %d in flight%s\n", model_dir, f.votes, f.ab,
           f.ties, f.vote_seconds, (int)concurrency, rate > 0 ? " (paced)" : "");
    printf("  duels served per second        %.2f\n", f.served / f.serve_seconds);
    printf("  a/b votes applied per second   %.2f  (%lld applied, all by %.1f s; %lld while votes arrived)\n",
           (double)f.applied / applied_seconds, f.applied, applied_seconds, f.applied_at_last_vote);
    if (f.gflop_per_vote > 0)
        printf("  trainer's policy update        %.2f GFLOP per a/b vote on these prompts (synthetic pairs\n"
               "                                 included): the machine's sgemm rate (%.1f GFLOP/s) caps it at\n"
               "                                 %.1f votes/s with nothing else running\n",
               f.gflop_per_vote, f.sgemm_gflops, f.sgemm_gflops / f.gflop_per_vote);
    printf("  snapshots hot-swapped          %lld (refused %lld), serving v%lld at the end\n", f.loaded, f.refused,
           f.final_version);
    if (f.latency_count > 0)
        printf("  vote -> serving latency        p50 %.2f s, p95 %.2f s, max %.2f s (%d votes served during the run)\n",
               f.latency_p50, f.latency_p95, f.latency_max, f.latency_count);
    else
        printf("  vote -> serving latency        no vote reached serving during the run\n");
    printf("  held-out win rate over base    %.3f  (%d prompts, greedy; mean oracle score %.4f -> %.4f; %d answers "
           "changed)\n",
           f.greedy.win_rate, f.held_out, f.greedy.score_before, f.greedy.score_after, f.greedy.changed);
    if (f.eval_samples > 0)
        printf("  ... sampled as duels are       %.3f  (%d answers per prompt at T=%g; mean score %.4f -> %.4f)\n",
               f.sampled.win_rate, f.eval_samples, temperature, f.sampled.score_before, f.sampled.score_after);
    if (f.control > 0)
        printf("  control prompts: win rate      %.3f  (%d prompts, greedy; mean score %.4f -> %.4f; %d answers "
               "changed)\n",
               f.control_greedy.win_rate, f.control, f.control_greedy.score_before, f.control_greedy.score_after,
               f.control_greedy.changed);
    if (json) {
        json_t *o = json_pack(
            "{s:s, s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:I, s:I, s:f, s:I, s:I, s:I, s:i, s:f, s:f, s:f, s:i, s:f, "
            "s:f, s:f, s:f, s:i, s:i}",
            "bench", "loop", "model", model_dir, "votes", f.votes, "ab_votes", f.ab, "ties", f.ties, "served", f.served,
            "duels_per_second", f.served / f.serve_seconds, "vote_seconds", f.vote_seconds, "rate", rate,
            "prefs_applied", (json_int_t)f.applied, "applied_at_last_vote", (json_int_t)f.applied_at_last_vote,
            "votes_applied_per_second", (double)f.applied / applied_seconds, "final_version",
            (json_int_t)f.final_version, "snapshots_loaded", (json_int_t)f.loaded, "snapshots_refused",
            (json_int_t)f.refused, "latency_count", f.latency_count, "latency_p50_s", f.latency_p50,
            "latency_p95_s", f.latency_p95, "latency_max_s", f.latency_max, "held_out", f.held_out, "win_rate",
            f.greedy.win_rate, "score_before", f.greedy.score_before, "score_after", f.greedy.score_after,
            "wall_seconds", f.wall_seconds,
            "batch_size", batch_size, "candidates", (int)candidates);
        if (o) json_object_set_new(o, "greedy_changed", json_integer(f.greedy.changed));
        if (o) json_object_set_new(o, "pending_pairs", json_integer(f.pending));
        if (o && f.gflop_per_vote > 0) {
            json_object_set_new(o, "gflop_per_vote", json_real(f.gflop_per_vote));
            json_object_set_new(o, "sgemm_gflops", json_real(f.sgemm_gflops));
            json_object_set_new(o, "ceiling_votes_per_second", json_real(f.sgemm_gflops / f.gflop_per_vote));
        }
        if (o && f.eval_samples > 0) {
            json_object_set_new(o, "eval_samples", json_integer(f.eval_samples));
            json_set_comparison(o, "sampled_", &f.sampled);
        }
        if (o && f.control > 0) {
            json_object_set_new(o, "control", json_integer(f.control));
            json_set_comparison(o, "control_", &f.control_greedy);
        }
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text) printf("%s\n", text);
        free(text);
        json_decref(o);
    }
done:
    if (rc) fprintf(stderr, "duel bench loop: %s%s%s\n", err.message, trainer_log[0] ? "; trainer log: " : "", trainer_log);
    if (trainer > 0) {
        kill(trainer, SIGTERM);
        waitpid(trainer, NULL, 0);
    }
    snapshot_loader_destroy(loader);
    if (backend.destroy) backend.destroy(backend.impl);
    weight_transport_model_receiver_free(receiver); /* after the adapter, which used it */
    (void)backend_started;
    for (loop_event *le = queue.head, *next; le; le = next) {
        next = le->next;
        if (le->ev.kind == DUEL_BACKEND_READY) duel_backend_result_free(le->ev.result);
        free(le);
    }
    pthread_mutex_destroy(&queue.mu);
    pthread_cond_destroy(&queue.cv);
    free_answers(before, held.count);
    free_answers(after, held.count);
    free_answers(before_sampled, held.count * (int)eval_samples);
    free_answers(after_sampled, held.count * (int)eval_samples);
    free_answers(control_before, control.count);
    free_answers(control_after, control.count);
    free(xadd_time);
    free(latency);
    json_decref(config);
    qa_free(&asks);
    qa_free(&held);
    qa_free(&control);
    if (c) redisFree(c);
    bench_redis_stop(&rs);
    if (work[0] && !keep_dir) bench_remove_tree(work);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
