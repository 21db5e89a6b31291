/* cmd_bench_loop.c: `duel bench loop`, the whole learning loop of DESIGN.md section 1 on one
 * machine without sockets (issue 7's end-to-end run and its speed figures):
 *
 *   this process: serving side = the gateway's engine adapter (gateway/duel_backend.h, engine
 *     thread, ERM scoring, E&E-TS selection) + its snapshot loader thread (duel:notify and
 *     duel:snapshots, snapshot_verify, hot-swap); a scripted user that asks the prompts of
 *     --prompts and votes by the configured oracle (oracle/: lexical by default, against each
 *     prompt's reference answer), XADDing the vote in the duel:prefs entry format
 *     (common/vote_entry.h's encoder);
 *   a child process: `duel train` (the online trainer service) on a private redis-server.
 *
 * Figures: duels served per second; a/b votes applied by the trainer per second (while votes
 * arrive); vote-to-serving latency, from a vote's XADD to the first duel served by a snapshot
 * that includes it (the trainer applies in stream order, so snapshot v with prefs_applied P holds
 * the first P a/b votes), p50 and p95 over the votes served while the run lasted; and the
 * learning itself: on --held-out prompts, the win rate of the last served snapshot's answers
 * over the base model's, judged by the same oracle against the references (ties count half),
 * with the mean oracle score before and after: greedy answers, and --eval-samples answers
 * sampled at the duels' temperature (what users are shown), with the same seeds for both; and
 * on --control prompts (what the votes should leave alone), the same greedy comparison. --rate
 * paces the votes (a user population voting R times per second); 0 votes as fast as the serving
 * side answers, which on a small machine starves the trainer of CPU (the latency then measures
 * the backlog).
 *
 * What it shares with `duel sim --inprocess` (the event queue, the vote entry of a served duel,
 * a model's answers and their comparison) lives in duel_loop.c; this file keeps what is its own:
 * the trainer child, Redis, the hot-swap latency. bench_loop is the steps below in order. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
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

#include "bench_json.h"
#include "bench_redis.h"
#include "cli.h"
#include "config.h"
#include "duel_backend.h"
#include "duel_loop.h"
#include "machine_limits.h"
#include "oracle.h"
#include "snapshot.h"
#include "snapshot_loader.h"
#include "timer.h"
#include "vote_entry.h"
#include "weight_transport_model.h"

extern char **environ;

int bench_loop(int argc, char **argv);

#define LOOP_MAX_SETS 64
#define LOOP_MAX_QA 100000
#define LOOP_EVAL_IN_FLIGHT 32 /* evaluation requests decoded at once */

typedef struct loop_options {
    const char *model_dir, *prompts_path, *held_out_path, *redis, *control_path, *config_path, *keep_dir;
    long long votes, concurrency, candidates, max_new, held_out_n, seed, eval_samples, max_lag;
    double rate, temperature;
    bool json;
    const char *sets[LOOP_MAX_SETS];
    size_t n_sets;
} loop_options;

typedef struct loop_figures {
    int votes, ab, ties, served;
    double vote_seconds, applied_seconds;
    double lag_wait_seconds; /* spent with no duel asked: --max-lag votes not yet serving */
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

/* Everything one run holds; released by loop_release whatever step failed. */
typedef struct loop_run {
    loop_options o;
    duel_error err;
    oracle_prompt_set asks, held, control;
    oracle_user *oracle;
    duel_rng vote_rng;
    json_t *config;
    int batch_size;
    bench_redis rs;
    redisContext *c;
    char work[600], path[1200], trainer_log[1200];
    pid_t trainer;
    duel_backend backend;
    weight_transport_model_receiver *receiver; /* snapshots through a GPU transport */
    snapshot_loader *loader;
    loop_queue queue;
    double *xadd_time, *latency;
    loop_answers before, after, before_sampled, after_sampled, control_before, control_after;
    loop_figures f;
    double t0;
} loop_run;

/* ---- the trainer child and its status --------------------------------------------------------- */

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

static long long status_int(const loop_run *run, const char *field) {
    return hash_int(run->c, "duel:trainer:status", field);
}

/* prefs_applied of snapshot `version`'s registration. */
static long long snapshot_prefs(const loop_run *run, long long version) {
    char key[64];
    snapshot_key_version("duel:", version, key, sizeof key, NULL);
    return hash_int(run->c, key, "prefs_applied");
}

/* ---- steps ------------------------------------------------------------------------------------- */

/* The command line; returns a CLI_EXIT code to stop with, or -2 to go on. */
static int parse_options(int argc, char **argv, loop_options *o) {
    *o = (loop_options){.model_dir = "models/default", .votes = 2000, .concurrency = 16, .candidates = 4,
                        .max_new = 40, .held_out_n = 200, .seed = 1, .eval_samples = 4, .temperature = 1.0};
    const cli_option options[] = {
        {"--model", CLI_OPT_STRING, &o->model_dir, "DIR", "base policy, served first and trained from (default models/default)", 0, 0, false, NULL},
        {"--prompts", CLI_OPT_STRING, &o->prompts_path, "FILE", "JSONL of {\"prompt\", \"reference\"|\"gloss\"|\"response\"} (oracle/oracle.h, prompt sets): what the scripted users ask (required)", 0, 0, false, NULL},
        {"--held-out", CLI_OPT_STRING, &o->held_out_path, "FILE", "JSONL in the same format, never asked during the run: the win-rate evaluation (required)", 0, 0, false, NULL},
        {"--held-out-count", CLI_OPT_INT, &o->held_out_n, "N", "evaluate on the first N held-out (and control) prompts (default 200)", 1, LOOP_MAX_QA, false, NULL},
        {"--control", CLI_OPT_STRING, &o->control_path, "FILE", "JSONL in the same format, never asked either: prompts the votes should not harm (e.g. a phrasing the model already answers); the last snapshot's greedy answers against the base model's", 0, 0, false, NULL},
        {"--votes", CLI_OPT_INT, &o->votes, "N", "votes to send (default 2000)", 1, 10000000, false, NULL},
        {"--rate", CLI_OPT_DOUBLE, &o->rate, "R", "votes per second at most (default 0: as fast as duels are served)", 0, 1e6, false, NULL},
        {"--concurrency", CLI_OPT_INT, &o->concurrency, "N", "duels in flight (default 16)", 1, 1024, false, NULL},
        {"--max-lag", CLI_OPT_INT, &o->max_lag, "N", "ask no new duel while more than N a/b votes are not yet in the snapshot serving (default 0: no bound). What the votes teach depends on how far serving trails them; the bound makes a run's learning the same on a slow or busy machine, which then only takes longer", 0, 10000000, false, NULL},
        {"--candidates", CLI_OPT_INT, &o->candidates, "M", "candidates per duel (default 4)", 2, 64, false, NULL},
        {"--eval-samples", CLI_OPT_INT, &o->eval_samples, "K", "also compare K answers per held-out prompt sampled at --temperature, as duels are (default 4; 0: greedy only)", 0, 64, false, NULL},
        {"--max-new-tokens", CLI_OPT_INT, &o->max_new, "N", "tokens per candidate and per evaluation answer (default 40)", 1, 4096, false, NULL},
        {"--temperature", CLI_OPT_DOUBLE, &o->temperature, "T", "candidates' sampling temperature (default 1.0)", 0, 10, false, NULL},
        {"--seed", CLI_OPT_INT, &o->seed, "N", "duel seeds, the serving ERM's seed and the oracle's noise (default 1)", 0, 9.2e18, false, NULL},
        {"--config", CLI_OPT_STRING, &o->config_path, "FILE", "the trainer's and the oracle's configuration (config/default.json format; --set K=V overrides, e.g. --set trainer.lr=2e-4)", 0, 0, false, NULL},
        {"--redis", CLI_OPT_STRING, &o->redis, "HOST:PORT", "use this Redis (its duel:* keys are deleted!); default: a private redis-server on a free port", 0, 0, false, NULL},
        {"--keep", CLI_OPT_STRING, &o->keep_dir, "DIR", "work in DIR (trainer log, checkpoint, snapshots) and keep it; default: a temporary folder, removed", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &o->json, NULL, "also print the figures as one JSON object on the last line of stdout", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "bench loop", "--prompts FILE.jsonl --held-out FILE.jsonl [options] [--set section.key=value ...]",
        "The whole learning loop on this machine, without sockets: the gateway's engine adapter\n"
        "serves duels (M candidates, ERM scoring, E&E-TS) to scripted users who vote by the\n"
        "configured oracle (oracle.kind, lexical by default, against each prompt's reference); the\n"
        "votes go through a real Redis stream to `duel train` (a child process), whose snapshots\n"
        "the snapshot loader verifies and hot-swaps in. Prints duels served per second, votes\n"
        "applied per second, the trainer's GFLOP per vote and the ceiling this machine's sgemm rate\n"
        "sets on it, the latency from a vote's XADD to the first duel served by a snapshot that\n"
        "includes it (p50, p95), and the held-out win rate of the last snapshot's answers over the\n"
        "base model's (the oracle's, ties half): greedy, and sampled at --temperature as duels are\n"
        "(fixed seeds, the same for both models); with --control, the same greedy comparison on\n"
        "prompts the votes should leave as good as they were. models/wordnet_data.py writes prompt\n"
        "files for the default model (sft_train.jsonl, test.jsonl); docs/BENCHMARKS.md (\"Learning\n"
        "loop\") shows how. `duel sim` compares selection strategies in one process.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse_with_sets(&cmd, argc, argv, o->sets, LOOP_MAX_SETS, &o->n_sets);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (!o->prompts_path || !o->held_out_path) return cli_usage_error(&cmd, "--prompts and --held-out are required");
    return -2;
}

/* Everything that can be wrong with the input, before any work: the configuration, the oracle,
 * the prompt files. */
static int load_inputs(loop_run *run) {
    const loop_options *o = &run->o;
    oracle_config oc;
    oracle_config_default(&oc);
    int rc;
    if ((rc = duel_config_load(o->config_path, o->sets, o->n_sets, (const char *const *)environ, &run->config, NULL,
                               &run->err)) ||
        (rc = oracle_config_from_json(duel_config_section(run->config, "oracle"), "oracle", &oc, &run->err)) ||
        (rc = oracle_user_open(&oc, &run->oracle, &run->err)))
        return rc;
    const bool refs = oc.kind == ORACLE_LEXICAL;
    if ((rc = oracle_prompt_set_load(o->prompts_path, LOOP_MAX_QA, refs, &run->asks, &run->err)) ||
        (rc = oracle_prompt_set_load(o->held_out_path, (int)o->held_out_n, refs, &run->held, &run->err)) ||
        (o->control_path &&
         (rc = oracle_prompt_set_load(o->control_path, (int)o->held_out_n, refs, &run->control, &run->err))) ||
        (rc = oracle_user_check(run->oracle, &run->asks, &run->err)) ||
        (rc = oracle_user_check(run->oracle, &run->held, &run->err)) ||
        (o->control_path && (rc = oracle_user_check(run->oracle, &run->control, &run->err))))
        return rc;
    if (!oracle_user_has_scores(run->oracle))
        return duel_error_set(&run->err, DUEL_EUNSUPPORTED,
                              "oracle.kind judge gives no scores; the win rates need lexical or rm");
    duel_rng_seed(&run->vote_rng, (uint64_t)o->seed);
    run->xadd_time = calloc((size_t)o->votes, sizeof *run->xadd_time);
    run->latency = calloc((size_t)o->votes, sizeof *run->latency);
    if (!run->xadd_time || !run->latency) return duel_error_set(&run->err, DUEL_ENOMEM, "out of memory");
    return 0;
}

/* The work folder, Redis, the trainer's configuration file and the trainer child; the machine's
 * sgemm rate is measured before anything else runs (the ceiling of the trainer's update). */
static int start_trainer(loop_run *run) {
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    int rc;
    if (run->o.keep_dir) {
        snprintf(run->work, sizeof run->work, "%s", run->o.keep_dir);
        if (mkdir(run->work, 0755) != 0 && errno != EEXIST)
            return duel_error_set(&run->err, DUEL_EIO, "%s: %s", run->work, strerror(errno));
    } else {
        snprintf(run->work, sizeof run->work, "%s/duel-bench-loop-XXXXXX", tmp);
        if (!mkdtemp(run->work)) {
            run->work[0] = '\0';
            return duel_error_set(&run->err, DUEL_EIO, "cannot create a work folder under %s", tmp);
        }
    }
    if (run->o.redis) rc = bench_redis_parse(run->o.redis, &run->rs, &run->err);
    else rc = bench_redis_start(&run->rs, tmp, "duel-bench-loop-redis", &run->err);
    if (rc) return rc;
    run->c = redisConnect(run->rs.host, run->rs.port);
    if (!run->c || run->c->err)
        return duel_error_set(&run->err, DUEL_EIO, "redis %s:%d: cannot connect", run->rs.host, run->rs.port);
    freeReplyObject(redisCommand(run->c, "DEL duel:prefs duel:prefs:dead duel:snapshots duel:trainer:status duel:knobs"));

    /* The trainer's configuration (defaults, --config, environment, --set) gets this run's model
     * and Redis. The model id is what the engine adapter writes into the votes: the model dir. */
    json_t *model_section = duel_config_section(run->config, "model"),
           *redis_section = duel_config_section(run->config, "redis");
    json_object_set_new(model_section, "path", json_string(run->o.model_dir));
    json_object_set_new(model_section, "id", json_string(run->o.model_dir));
    json_object_set_new(redis_section, "host", json_string(run->rs.host));
    json_object_set_new(redis_section, "port", json_integer(run->rs.port));
    run->batch_size =
        (int)json_integer_value(json_object_get(duel_config_section(run->config, "trainer"), "batch_size"));
    snprintf(run->path, sizeof run->path, "%s/trainer-config.json", run->work);
    if (json_dump_file(run->config, run->path, JSON_INDENT(2)) != 0)
        return duel_error_set(&run->err, DUEL_EIO, "%s: cannot write", run->path);
    char data_dir[1200];
    snprintf(data_dir, sizeof data_dir, "%s/data", run->work);
    snprintf(run->trainer_log, sizeof run->trainer_log, "%s/trainer.log", run->work);
    if ((rc = machine_sgemm_best(2048, 3, &run->f.sgemm_gflops, &run->err))) return rc;
    if ((run->trainer = spawn_trainer(run->path, run->rs.host, run->rs.port, data_dir, run->trainer_log)) < 0) {
        run->trainer = 0;
        return duel_error_set(&run->err, DUEL_EIO, "fork: %s", strerror(errno));
    }
    return 0;
}

/* The serving side: the gateway's engine adapter with hot-swap, and its snapshot loader. */
static int start_serving(loop_run *run) {
    backend_engine_config bc = {.model_dir = run->o.model_dir,
                                .erm_seed = (uint64_t)run->o.seed,
                                .strategy = "ee_ts",
                                .num_candidates = (int)run->o.candidates,
                                .temperature = (float)run->o.temperature,
                                .top_p = 1.0f,
                                .max_new_tokens = (int)run->o.max_new,
                                .snapshots = true};
    /* The serving side computes where engine.backend says and takes the snapshots' weights
     * through trainer.weight_transport, as duel serve would. */
    bc.compute = json_string_value(json_object_get(duel_config_section(run->config, "engine"), "backend"));
    bc.providers = cli_compute_providers(&bc.num_providers);
    int rc;
    if ((rc = cli_snapshot_receiver_open(run->config, "bench loop", run->rs.host, run->rs.port, &run->receiver, &run->err)))
        return rc;
    if (run->receiver) {
        bc.load_snapshot = cli_snapshot_receiver_load;
        bc.load_snapshot_ctx = run->receiver;
        bc.load_snapshot_via = cli_snapshot_receiver_via(run->receiver);
    }
    fprintf(stderr, "loading %s; trainer log %s\n", run->o.model_dir, run->trainer_log);
    if ((rc = backend_engine_create(&bc, &run->backend, &run->err)) ||
        (rc = run->backend.start(run->backend.impl, loop_queue_sink, &run->queue, &run->err)))
        return rc;
    snapshot_loader_config lc = {.host = run->rs.host, .port = run->rs.port};
    return snapshot_loader_create(&lc, &run->backend, &run->loader, &run->err);
}

/* The answers of the model in dir: greedy to the held-out (and control) prompts, and
 * --eval-samples sampled at the duels' temperature, with the same seeds for every model. */
static int answer_all(loop_run *run, const char *dir, loop_answers *greedy, loop_answers *sampled,
                      loop_answers *control) {
    const loop_options *o = &run->o;
    loop_answer_params p = {.max_new_tokens = (int)o->max_new, .samples = 1, .in_flight = LOOP_EVAL_IN_FLIGHT,
                            .seed = 1};
    fprintf(stderr, "greedy answers of %s to %d held-out prompts ...\n", dir, run->held.count);
    int rc = loop_answers_make(dir, &run->held, run->held.count, &p, greedy, &run->err);
    if (rc == 0 && o->eval_samples > 0) {
        fprintf(stderr, "%lld sampled answers per held-out prompt of %s ...\n", o->eval_samples, dir);
        loop_answer_params ps = p;
        ps.temperature = o->temperature;
        ps.samples = (int)o->eval_samples;
        rc = loop_answers_make(dir, &run->held, run->held.count, &ps, sampled, &run->err);
    }
    if (rc == 0 && o->control_path) {
        fprintf(stderr, "greedy answers of %s to %d control prompts ...\n", dir, run->control.count);
        rc = loop_answers_make(dir, &run->control, run->control.count, &p, control, &run->err);
    }
    return rc;
}

/* Votes on a served duel by the oracle and XADDs the entry. *choice_out is the vote. */
static int vote_and_send(loop_run *run, const duel_backend_result *r, const oracle_turn *turn, int serial,
                         vote_choice *choice_out) {
    oracle_vote v;
    int rc = oracle_user_vote(run->oracle, turn, r->text_a, r->text_b, &run->vote_rng, &v, &run->err);
    if (rc) return rc;
    char vote_id[64], duel_id[64];
    snprintf(vote_id, sizeof vote_id, "bench-loop-vote-%08d", serial);
    snprintf(duel_id, sizeof duel_id, "bench-loop-duel-%08d", serial);
    vote_entry e;
    vote_entry_texts texts;
    loop_vote_entry(r, v.choice, vote_id, duel_id, duel_time_unix_ms(), &e, &texts);
    vote_entry_encoded enc;
    if ((rc = vote_entry_encode(&e, &texts, &enc, &run->err))) return rc;
    rc = bench_xadd_vote(run->c, "duel:prefs", &enc, &run->err);
    vote_entry_encoded_free(&enc);
    *choice_out = e.choice;
    return rc;
}

/* One served duel: the hot-swap latency of the votes its snapshot holds, pacing, the vote. */
static int on_duel_ready(loop_run *run, const loop_event *le, long long *served_version) {
    duel_backend_result *r = le->ev.result;
    loop_figures *f = &run->f;
    f->served++;
    /* A duel served by a newer snapshot: the votes it holds have reached serving now. */
    if (r->policy_version > *served_version) {
        *served_version = r->policy_version;
        long long serving_prefs = snapshot_prefs(run, r->policy_version);
        for (; f->latency_count < serving_prefs && f->latency_count < f->ab; f->latency_count++)
            run->latency[f->latency_count] = le->at - run->xadd_time[f->latency_count];
    }
    if (run->o.rate > 0) { /* pace: vote k no earlier than t0 + k / rate */
        double due = run->t0 + (double)f->votes / run->o.rate, now = duel_time_seconds();
        if (due > now) bench_sleep_ms((int)((due - now) * 1000.0));
    }
    const oracle_prompt *q = &run->asks.items[(le->ev.request_id - 1) % (uint64_t)run->asks.count];
    vote_choice choice;
    int rc = vote_and_send(run, r, &q->turns[0], f->votes, &choice);
    if (rc) return rc;
    if (vote_choice_is_pair(choice)) run->xadd_time[f->ab++] = duel_time_seconds();
    else f->ties++;
    f->votes++;
    return 0;
}

/* Whether more than --max-lag a/b votes are not yet in the snapshot serving now (its
 * registration's prefs_applied, read again only when the serving version changed). */
static bool votes_lag_serving(loop_run *run, long long *seen_version, long long *seen_prefs) {
    if (run->o.max_lag <= 0) return false;
    snapshot_loader_stats ls;
    snapshot_loader_get_stats(run->loader, &ls);
    if (ls.serving_version != *seen_version) {
        *seen_version = ls.serving_version;
        *seen_prefs = ls.serving_version > 0 ? snapshot_prefs(run, ls.serving_version) : 0;
    }
    return run->f.ab - (*seen_prefs > 0 ? *seen_prefs : 0) > run->o.max_lag;
}

/* Serves --votes duels (--concurrency in flight) to the scripted users, who vote on each. */
static int serve_votes(loop_run *run) {
    const loop_options *o = &run->o;
    loop_figures *f = &run->f;
    fprintf(stderr, "serving %lld duels (M = %lld, %lld in flight%s) to the %s oracle ...\n", o->votes,
            o->candidates, o->concurrency, o->rate > 0 ? ", paced" : "",
            oracle_kind_name(oracle_user_config(run->oracle)->kind));
    run->t0 = duel_time_seconds();
    long long submitted = 0, in_flight = 0, served_version = 0;
    double last_report = run->t0;
    int rc = 0;
    long long lag_version = -1, lag_prefs = 0;
    while (rc == 0 && f->votes < o->votes) {
        bool lagging = votes_lag_serving(run, &lag_version, &lag_prefs);
        while (rc == 0 && !lagging && submitted < o->votes && in_flight < o->concurrency) {
            const oracle_prompt *q = &run->asks.items[submitted % run->asks.count];
            duel_backend_request req = {.request_id = (uint64_t)submitted + 1,
                                        .text = q->turns[0].prompt,
                                        .arm_snapshot = -1,
                                        .seed = (uint64_t)o->seed * 1000003ull + (uint64_t)submitted};
            if ((rc = run->backend.submit(run->backend.impl, &req, &run->err)) == 0) submitted++, in_flight++;
        }
        if (rc) break;
        if (in_flight == 0) { /* lagging, nothing to vote on: the trainer and the loader catch up */
            double wait_start = duel_time_seconds();
            while (votes_lag_serving(run, &lag_version, &lag_prefs) && duel_time_seconds() - wait_start < 600.0)
                bench_sleep_ms(50);
            f->lag_wait_seconds += duel_time_seconds() - wait_start;
            if (votes_lag_serving(run, &lag_version, &lag_prefs))
                return duel_error_set(&run->err, DUEL_EIO,
                                      "serving trailed the votes by more than --max-lag %lld for 600 s (serving "
                                      "v%lld; does the trainer publish when idle? trainer.publish_when_idle)",
                                      o->max_lag, lag_version);
            continue;
        }
        loop_event *le = loop_queue_pop(&run->queue, 300.0);
        if (!le) return duel_error_set(&run->err, DUEL_EIO, "no duel served in 300 s");
        if (le->ev.kind == DUEL_BACKEND_ERROR) {
            rc = duel_error_set(&run->err, DUEL_EIO, "duel %llu: %s", (unsigned long long)le->ev.request_id,
                                le->ev.message);
        } else if (le->ev.kind == DUEL_BACKEND_READY) {
            in_flight--;
            rc = on_duel_ready(run, le, &served_version);
        }
        loop_event_free(le);
        if (duel_time_seconds() - last_report >= 10.0) {
            last_report = duel_time_seconds();
            fprintf(stderr, "  %d votes (%d a/b) in %.0f s; serving v%lld; trainer applied %lld\n", f->votes, f->ab,
                    last_report - run->t0, served_version, status_int(run, "prefs_applied"));
        }
    }
    f->vote_seconds = duel_time_seconds() - run->t0;
    f->applied_at_last_vote = status_int(run, "prefs_applied");
    return rc;
}

/* Lets the trainer apply all it will: every vote but fewer than batch_size (a batch is at least
 * batch_size pairs, and it takes all that are pending once it has caught up: done when every
 * a/b vote is applied or pending, fewer than a batch pending; the status hash says pending_pairs
 * once the trainer idles), then waits for the loader to serve the newest snapshot (the trainer
 * publishes by time, so the last updates may need a few seconds). */
static int wait_for_trainer(loop_run *run) {
    loop_figures *f = &run->f;
    const long long bs = run->batch_size;
    long long expect = bs > 1 && f->ab >= bs ? f->ab - (bs - 1) : bs > 1 ? 0 : f->ab;
    fprintf(stderr, "all votes sent in %.0f s; waiting for the trainer to apply at least %lld ...\n", f->vote_seconds,
            expect);
    double wait_start = duel_time_seconds();
    while (((f->applied = status_int(run, "prefs_applied")) < expect ||
            (f->pending = status_int(run, "pending_pairs")) + f->applied != f->ab ||
            f->pending >= (bs > 0 ? bs : 1)) &&
           duel_time_seconds() - wait_start < 1800.0) {
        int status;
        if (waitpid(run->trainer, &status, WNOHANG) == run->trainer) {
            run->trainer = 0;
            return duel_error_set(&run->err, DUEL_EIO, "duel train exited early (see %s)", run->trainer_log);
        }
        bench_sleep_ms(100);
    }
    f->applied_seconds = duel_time_seconds() - run->t0;
    expect = f->applied;
    const double update_gflop = hash_real(run->c, "duel:trainer:status", "update_gflop");
    f->gflop_per_vote = f->applied > 0 && update_gflop > 0 ? update_gflop / (double)f->applied : 0;
    wait_start = duel_time_seconds();
    snapshot_loader_stats ls;
    for (;;) {
        snapshot_loader_get_stats(run->loader, &ls);
        long long latest = status_int(run, "snapshot");
        if (ls.serving_version >= latest && status_int(run, "prefs_applied") >= expect &&
            (snapshot_prefs(run, ls.serving_version) >= expect || duel_time_seconds() - wait_start > 60.0))
            break;
        if (duel_time_seconds() - wait_start > 120.0) break;
        bench_sleep_ms(100);
    }
    f->final_version = ls.serving_version;
    f->loaded = (long long)ls.loaded;
    f->refused = (long long)ls.rejected;
    if (f->latency_count > 0) {
        f->latency_max = loop_percentile(run->latency, f->latency_count, 1.0);
        f->latency_p50 = loop_percentile(run->latency, f->latency_count, 0.5);
        f->latency_p95 = loop_percentile(run->latency, f->latency_count, 0.95);
    }
    return 0;
}

/* The learning: the served snapshot's answers against the base model's. */
static int evaluate(loop_run *run) {
    loop_figures *f = &run->f;
    if (f->final_version > 0) {
        char key[64];
        snapshot_key_version("duel:", f->final_version, key, sizeof key, NULL);
        redisReply *r = redisCommand(run->c, "HGET %s path", key);
        if (!r || r->type != REDIS_REPLY_STRING) {
            if (r) freeReplyObject(r);
            return duel_error_set(&run->err, DUEL_EIO, "%s has no path", key);
        }
        snprintf(run->path, sizeof run->path, "%s", r->str);
        freeReplyObject(r);
    } else {
        fprintf(stderr, "no snapshot was served: the win rate compares the base model with itself\n");
        snprintf(run->path, sizeof run->path, "%s", run->o.model_dir);
    }
    int rc = answer_all(run, run->path, &run->after, &run->after_sampled, &run->control_after);
    if (rc) return rc;
    f->held_out = run->held.count;
    f->eval_samples = (int)run->o.eval_samples;
    f->control = run->o.control_path ? run->control.count : 0;
    double *before = calloc((size_t)run->held.count, sizeof *before), *after = calloc((size_t)run->held.count, sizeof *after);
    if (!before || !after) rc = duel_error_set(&run->err, DUEL_ENOMEM, "out of memory");
    if (rc == 0) rc = loop_compare(run->oracle, &run->held, &run->before, &run->after, &f->greedy, before, after, &run->err);
    for (int i = 0; rc == 0 && i < 5 && i < run->held.count; i++) /* what changed, for the reader */
        fprintf(stderr, "  %s\n    reference: %s\n    base:      %s (%.3f)\n    v%lld:%*s %s (%.3f)\n",
                run->held.items[i].turns[0].prompt, run->held.items[i].turns[0].reference, run->before.items[i].text,
                before[i], f->final_version, f->final_version < 10 ? 7 : 6, "", run->after.items[i].text, after[i]);
    free(before);
    free(after);
    if (rc == 0 && f->eval_samples > 0)
        rc = loop_compare(run->oracle, &run->held, &run->before_sampled, &run->after_sampled, &f->sampled, NULL, NULL,
                          &run->err);
    if (rc == 0 && f->control > 0)
        rc = loop_compare(run->oracle, &run->control, &run->control_before, &run->control_after, &f->control_greedy,
                          NULL, NULL, &run->err);
    f->wall_seconds = duel_time_seconds() - run->t0;
    return rc;
}

static void print_figures(const loop_run *run) {
    const loop_figures *f = &run->f;
    const loop_options *o = &run->o;
    printf("learning loop on %s: %d votes (%d a/b, %d ties) in %.1f s, %d in flight%s\n", o->model_dir, f->votes,
           f->ab, f->ties, f->vote_seconds, (int)o->concurrency, o->rate > 0 ? " (paced)" : "");
    if (o->max_lag > 0)
        printf("  waited for serving to follow   %.1f s  (--max-lag %lld a/b votes)\n", f->lag_wait_seconds, o->max_lag);
    printf("  duels served per second        %.2f\n", f->served / f->vote_seconds);
    printf("  a/b votes applied per second   %.2f  (%lld applied, all by %.1f s; %lld while votes arrived)\n",
           (double)f->applied / f->applied_seconds, f->applied, f->applied_seconds, f->applied_at_last_vote);
    if (f->gflop_per_vote > 0)
        printf("  trainer's policy update        %.2f GFLOP per a/b vote on these prompts (synthetic pairs\n"
               "                                 included): the machine's sgemm rate (%.1f GFLOP/s) caps it at\n"
               "                                 %.1f votes/s with nothing else running\n",
               f->gflop_per_vote, f->sgemm_gflops, f->sgemm_gflops / f->gflop_per_vote);
    printf("  snapshots hot-swapped          %lld (refused %lld), serving v%lld at the end\n", f->loaded, f->refused,
           f->final_version);
    if (f->latency_count > 0)
        printf("  vote -> serving latency        p50 %.2f s, p95 %.2f s, max %.2f s (%d votes served during the run)\n",
               f->latency_p50, f->latency_p95, f->latency_max, f->latency_count);
    else
        printf("  vote -> serving latency        no vote reached serving during the run\n");
    printf("  held-out win rate over base    %.3f  (%d prompts, greedy; mean oracle score %.4f -> %.4f; %d answers "
           "changed)\n",
           f->greedy.win_rate, f->held_out, f->greedy.score_before, f->greedy.score_after, f->greedy.changed);
    if (f->eval_samples > 0)
        printf("  ... sampled as duels are       %.3f  (%d answers per prompt at T=%g; mean score %.4f -> %.4f)\n",
               f->sampled.win_rate, f->eval_samples, o->temperature, f->sampled.score_before, f->sampled.score_after);
    if (f->control > 0)
        printf("  control prompts: win rate      %.3f  (%d prompts, greedy; mean score %.4f -> %.4f; %d answers "
               "changed)\n",
               f->control_greedy.win_rate, f->control, f->control_greedy.score_before, f->control_greedy.score_after,
               f->control_greedy.changed);
}

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

static int print_json(const loop_run *run) {
    const loop_figures *f = &run->f;
    const loop_options *o = &run->o;
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:I, s:I, s:f, s:I, s:I, s:I, s:i, s:f, s:f, s:f, "
                          "s:i, s:i, s:I, s:f, s:i, s:i}",
                          "model", o->model_dir, "votes", f->votes, "ab_votes", f->ab, "ties", f->ties, "served",
                          f->served, "duels_per_second", f->served / f->vote_seconds, "vote_seconds", f->vote_seconds,
                          "rate", o->rate, "prefs_applied", (json_int_t)f->applied, "applied_at_last_vote",
                          (json_int_t)f->applied_at_last_vote, "votes_applied_per_second",
                          (double)f->applied / f->applied_seconds, "final_version", (json_int_t)f->final_version,
                          "snapshots_loaded", (json_int_t)f->loaded, "snapshots_refused", (json_int_t)f->refused,
                          "latency_count", f->latency_count, "latency_p50_s", f->latency_p50, "latency_p95_s",
                          f->latency_p95, "latency_max_s", f->latency_max, "held_out", f->held_out, "batch_size",
                          run->batch_size, "pending_pairs", (json_int_t)f->pending, "wall_seconds", f->wall_seconds,
                          "candidates", (int)o->candidates, "greedy_changed", f->greedy.changed);
    if (j) {
        json_set_comparison(j, "", &f->greedy);
        json_object_del(j, "changed"); /* greedy_changed, as before the comparisons had a prefix */
        json_object_set_new(j, "oracle", json_string(oracle_kind_name(oracle_user_config(run->oracle)->kind)));
        json_object_set_new(j, "max_lag", json_integer(o->max_lag));
        json_object_set_new(j, "lag_wait_seconds", json_real(f->lag_wait_seconds));
    }
    if (j && f->gflop_per_vote > 0) {
        json_object_set_new(j, "gflop_per_vote", json_real(f->gflop_per_vote));
        json_object_set_new(j, "sgemm_gflops", json_real(f->sgemm_gflops));
        json_object_set_new(j, "ceiling_votes_per_second", json_real(f->sgemm_gflops / f->gflop_per_vote));
    }
    if (j && f->eval_samples > 0) {
        json_object_set_new(j, "eval_samples", json_integer(f->eval_samples));
        json_set_comparison(j, "sampled_", &f->sampled);
    }
    if (j && f->control > 0) {
        json_object_set_new(j, "control", json_integer(f->control));
        json_set_comparison(j, "control_", &f->control_greedy);
    }
    return bench_json_print("loop", j);
}

static void loop_release(loop_run *run) {
    if (run->trainer > 0) {
        kill(run->trainer, SIGTERM);
        waitpid(run->trainer, NULL, 0);
    }
    snapshot_loader_destroy(run->loader);
    if (run->backend.destroy) run->backend.destroy(run->backend.impl);
    weight_transport_model_receiver_free(run->receiver); /* after the adapter, which used it */
    loop_queue_destroy(&run->queue);
    loop_answers *answers[] = {&run->before, &run->after, &run->before_sampled, &run->after_sampled,
                               &run->control_before, &run->control_after};
    for (size_t i = 0; i < sizeof answers / sizeof *answers; i++) loop_answers_free(answers[i]);
    free(run->xadd_time);
    free(run->latency);
    json_decref(run->config);
    oracle_prompt_set_free(&run->asks);
    oracle_prompt_set_free(&run->held);
    oracle_prompt_set_free(&run->control);
    oracle_user_close(run->oracle);
    if (run->c) redisFree(run->c);
    bench_redis_stop(&run->rs);
    if (run->work[0] && !run->o.keep_dir) bench_remove_tree(run->work);
}

int bench_loop(int argc, char **argv) {
    loop_run *run = calloc(1, sizeof *run);
    if (!run) return CLI_EXIT_FAILURE;
    int rc = parse_options(argc, argv, &run->o);
    if (rc != -2) {
        free(run);
        return rc;
    }
    loop_queue_init(&run->queue);
    if ((rc = load_inputs(run)) == 0 && (rc = start_trainer(run)) == 0 && (rc = start_serving(run)) == 0 &&
        (rc = answer_all(run, run->o.model_dir, &run->before, &run->before_sampled, &run->control_before)) == 0 &&
        (rc = serve_votes(run)) == 0 && (rc = wait_for_trainer(run)) == 0 && (rc = evaluate(run)) == 0) {
        print_figures(run);
        if (run->o.json && print_json(run)) rc = duel_error_set(&run->err, DUEL_EIO, "the JSON line could not be printed");
    }
    if (rc)
        fprintf(stderr, "duel bench loop: %s%s%s\n", run->err.message, run->trainer_log[0] ? "; trainer log: " : "",
                run->trainer_log);
    loop_release(run);
    free(run);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
