/* sim_sweep.c: `duel sim sweep`, the experiment runner (DESIGN.md section 10, the SEA paper's
 * Figures 5-7): strategies x modes (online, offline) x seeds of `duel sim --inprocess` runs, each
 * a child process (OPENBLAS_NUM_THREADS=1, so that a run's numbers do not depend on how many run
 * beside it), up to --jobs at once. Everything goes into one folder:
 *   config.json         the effective configuration (its sim section holds the sweep's
 *                       parameters); the runs read it, and a rerun into the same folder must
 *                       have the same one: an interrupted sweep resumes (also one a build
 *                       with fewer configuration keys wrote, when the keys added since hold
 *                       their defaults: config_resumable), a different one is refused
 *   runs/NAME.jsonl     one run's evaluation points (NAME = strategy-mode-sSEED); written as
 *                       NAME.jsonl.partial and renamed when the run ends, so a run is done iff
 *                       its .jsonl exists; NAME.log its stderr, NAME.json its timings
 *   points.csv          every evaluation point of every run
 *   summary.csv         per strategy, mode and query count: mean and standard error over seeds
 *   table.md            final values (mean +- SE), and the queries each strategy needs to reach
 *                       passive's final offline win rate in the same mode (mean +- SE over the
 *                       seeds that reach it)
 *   *.png, sim_plot.py  the plots (sim_plot.py, compiled in, run with Debian's python3 and
 *                       matplotlib; without them the sweep says so and the rest stands)
 * --report writes the last four from the runs finished so far and starts none (the folder's
 * config.json is then the plan and is not compared).
 * bon runs online only (its policy never learns: ERM-only, the paper's EE4LLM). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_json.h"
#include "bench_redis.h"
#include "cli.h"
#include "config.h"
#include "duel.h"
#include "json_util.h"
#include "oracle.h"
#include "sim.h"
#include "timer.h"

extern char **environ;
extern const char sim_plot_py[];
extern const size_t sim_plot_py_len;

int sim_sweep_command(int argc, char **argv);

#define SWEEP_MAX_STRATEGIES 8
#define SWEEP_MAX_RUNS 4096
#define SWEEP_MAX_POINTS 100000
#define SWEEP_PATH 1400

/* The measures of an evaluation point that the summary averages over seeds. */
static const char *const MEASURES[] = {"win_share", "mean_p", "score", "kl", "online_score", "interval_tie_share",
                                       "interval_both_bad_share", "tie_share", "erm_accuracy", "train_kl"};
#define N_MEASURES (sizeof MEASURES / sizeof *MEASURES)

typedef struct sweep_run {
    char strategy[32], mode[16], name[96];
    long long seed;
    pid_t pid;
    bool done, failed;
    double started, wall;
} sweep_run;

typedef struct sweep {
    const char *out, *model, *prompts, *held_out, *labels, *strategies_arg, *modes_arg, *experiment;
    long long queries, eval_every, held_out_count, seeds, seed, candidates, passive_candidates, max_new, kl_prompts,
        jobs;
    double temperature;
    bool json, quiet, report;
    json_t *config;
    sweep_run runs[SWEEP_MAX_RUNS];
    int n_runs;
    duel_error err;
} sweep;

/* ---- the plan ------------------------------------------------------------------------------- */

/* Splits a comma list (or the config's array) into names, each checked by check. */
static int names_from(const char *list, const json_t *array, const char *what, char names[][32], int cap, int *n,
                      int (*check)(const char *, duel_error *), duel_error *err) {
    *n = 0;
    if (list) {
        const char *p = list;
        while (*p) {
            size_t len = strcspn(p, ",");
            if (len == 0 || len >= 32 || *n == cap)
                return duel_error_set(err, DUEL_EINVAL, "%s: bad list \"%s\"", what, list);
            snprintf(names[*n], 32, "%.*s", (int)len, p);
            (*n)++;
            p += len + (p[len] == ',');
        }
    } else {
        size_t i;
        json_t *v;
        json_array_foreach(array, i, v) {
            if (!json_is_string(v) || json_string_length(v) >= 32 || *n == cap)
                return duel_error_set(err, DUEL_EINVAL, "sim.%s: bad entry %zu", what, i);
            snprintf(names[(*n)++], 32, "%s", json_string_value(v));
        }
    }
    if (*n == 0) return duel_error_set(err, DUEL_EINVAL, "%s: none given", what);
    for (int i = 0; i < *n; i++) {
        int rc = check(names[i], err);
        if (rc) return duel_error_prefix(err, "--%s", what);
    }
    return 0;
}

static int check_strategy(const char *name, duel_error *err) {
    duel_strategy s;
    int rc = duel_strategy_parse(name, &s, err);
    if (rc == 0 && !sim_strategy_runs(s))
        rc = duel_error_set(err, DUEL_EUNSUPPORTED, "%s: a simulated user votes on one policy's answers (sim runs "
                                                    SIM_STRATEGIES ")",
                            name);
    return rc;
}

static int check_mode(const char *name, duel_error *err) {
    if (strcmp(name, "online") == 0 || strcmp(name, "offline") == 0) return 0;
    return duel_error_set(err, DUEL_EINVAL, "unknown mode \"%s\" (online or offline)", name);
}

static int plan(sweep *s) {
    char strategies[SWEEP_MAX_STRATEGIES][32], modes[2][32];
    int ns = 0, nm = 0, rc;
    const json_t *sec = duel_config_section(s->config, "sim");
    if ((rc = names_from(s->strategies_arg, json_object_get(sec, "strategies"), "strategies", strategies,
                         SWEEP_MAX_STRATEGIES, &ns, check_strategy, &s->err)) ||
        (rc = names_from(s->modes_arg, json_object_get(sec, "modes"), "modes", modes, 2, &nm, check_mode, &s->err)))
        return rc;
    for (int m = 0; m < nm; m++)
        for (int i = 0; i < ns; i++) {
            if (strcmp(strategies[i], "bon") == 0 && strcmp(modes[m], "offline") == 0) continue; /* online only */
            for (long long k = 0; k < s->seeds; k++) {
                if (s->n_runs == SWEEP_MAX_RUNS) return duel_error_set(&s->err, DUEL_ELIMIT, "more than %d runs", SWEEP_MAX_RUNS);
                sweep_run *r = &s->runs[s->n_runs++];
                snprintf(r->strategy, sizeof r->strategy, "%.31s", strategies[i]);
                snprintf(r->mode, sizeof r->mode, "%.15s", modes[m]);
                r->seed = s->seed + k;
                snprintf(r->name, sizeof r->name, "%.31s-%.15s-s%lld", strategies[i], modes[m], r->seed);
            }
        }
    return 0;
}

/* The plan's keys: which runs a folder holds, not what any run reads (a run takes its strategy,
 * mode and seed from its command line). A sweep into a folder may name others: the plan grows. */
static bool plan_key(const char *path) {
    return strcmp(path, "sim.strategies") == 0 || strcmp(path, "sim.modes") == 0 || strcmp(path, "sim.seeds") == 0;
}

/* Whether a sweep whose folder holds configuration `old` may resume under `now`: every key of
 * old but the plan's is in now with the same value, and every key now has that old lacks (added
 * by a later build) holds its default, which is what the folder's runs, reading old, get.
 * Otherwise `differs` names the first key that differs. *added counts the keys old lacks. */
static bool config_resumable(const json_t *old, const json_t *now, const json_t *defaults, const char *prefix,
                             char *differs, size_t cap, int *added) {
    const char *key;
    json_t *v;
    char path[SWEEP_PATH];
    json_object_foreach((json_t *)old, key, v) {
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
        if (plan_key(path)) continue;
        const json_t *w = json_object_get(now, key);
        if (json_is_object(v) && json_is_object(w)) {
            if (!config_resumable(v, w, json_object_get(defaults, key), path, differs, cap, added)) return false;
        } else if (!w || !json_equal(v, w)) {
            snprintf(differs, cap, "%.1000s differs", path);
            return false;
        }
    }
    json_object_foreach((json_t *)now, key, v) {
        if (json_object_get(old, key)) continue;
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
        if (plan_key(path)) continue;
        const json_t *d = json_object_get(defaults, key);
        if (!d || !json_equal(v, d)) {
            snprintf(differs, cap, "%.1000s is set, and the folder's configuration predates it", path);
            return false;
        }
        (*added)++;
    }
    return true;
}

/* Appends to `into` the names of `from` it lacks; whether any was. */
static bool names_union(json_t *into, const json_t *from) {
    size_t i, k;
    json_t *v, *w;
    bool grew = false;
    json_array_foreach(from, i, v) {
        bool seen = false;
        json_array_foreach(into, k, w) seen |= json_equal(v, w);
        if (!seen) {
            json_array_append(into, v);
            grew = true;
        }
    }
    return grew;
}

/* A resumed sweep's plan is the folder's and this command's together: the strategies and modes of
 * both, the larger seed count. When that is more than the folder's, `old` (the folder's
 * configuration) takes the grown plan and is written back to `path`, and the runs are planned
 * again from it; finished runs stay (their configuration is the same: config_resumable). */
static int grow_plan(sweep *s, json_t *old, const char *path) {
    json_t *mine = duel_config_section(s->config, "sim"), *theirs = json_object_get(old, "sim");
    json_t *strategies = json_array(), *modes = json_array();
    json_t *old_strategies = json_object_get(theirs, "strategies"), *old_modes = json_object_get(theirs, "modes");
    const json_t *old_seeds = json_object_get(theirs, "seeds");
    if (!json_is_array(old_strategies) || !json_is_array(old_modes) || !json_is_integer(old_seeds)) {
        json_decref(strategies);
        json_decref(modes);
        return duel_error_set(&s->err, DUEL_EFORMAT, "%s: sim.strategies, sim.modes or sim.seeds missing: not a sweep's plan", path);
    }
    names_union(strategies, old_strategies);
    names_union(modes, old_modes);
    bool grew = names_union(strategies, json_object_get(mine, "strategies"));
    grew |= names_union(modes, json_object_get(mine, "modes"));
    const long long seeds = s->seeds > json_integer_value(old_seeds) ? s->seeds : json_integer_value(old_seeds);
    grew |= seeds != json_integer_value(old_seeds);
    int rc = 0;
    if (grew) {
        json_object_set(theirs, "strategies", strategies);
        json_object_set(theirs, "modes", modes);
        json_object_set_new(theirs, "seeds", json_integer(seeds));
        if (json_dump_file(old, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
            rc = duel_error_set(&s->err, DUEL_EIO, "%s: cannot write", path);
    }
    /* The runs of the whole plan, this command's options aside (also when the plan did not grow: a
     * command naming fewer strategies resumes the folder's others too). */
    json_object_set(mine, "strategies", strategies);
    json_object_set(mine, "modes", modes);
    json_object_set_new(mine, "seeds", json_integer(seeds));
    s->strategies_arg = s->modes_arg = NULL;
    s->seeds = seeds;
    s->n_runs = 0;
    if (rc == 0) rc = plan(s);
    if (rc == 0 && grew && !s->quiet) {
        char *st = json_dumps(strategies, JSON_COMPACT), *mo = json_dumps(modes, JSON_COMPACT);
        fprintf(stderr, "sweep: %s: the plan grows to strategies %s, modes %s, %lld seed%s (%d runs)\n", path,
                st ? st : "?", mo ? mo : "?", seeds, seeds == 1 ? "" : "s", s->n_runs);
        free(st);
        free(mo);
    }
    json_decref(strategies);
    json_decref(modes);
    return rc;
}

/* The effective configuration, with the sweep's parameters in its sim section, in OUT/config.json:
 * written by the first run of a sweep, compared by a resumed one (whose plan may grow: grow_plan). */
static int write_config(sweep *s) {
    json_t *sec = duel_config_section(s->config, "sim");
    json_t *model = duel_config_section(s->config, "model");
    json_object_set_new(model, "path", json_string(s->model));
    struct {
        const char *key;
        json_t *v;
    } vals[] = {{"prompts", json_string(s->prompts)},
                {"held_out", json_string(s->held_out)},
                {"held_out_count", json_integer(s->held_out_count)},
                {"queries", json_integer(s->queries)},
                {"eval_every", json_integer(s->eval_every)},
                {"seed", json_integer(s->seed)},
                {"seeds", json_integer(s->seeds)},
                {"labels", json_string(s->labels)},
                {"candidates", json_integer(s->candidates)},
                {"passive_candidates", json_integer(s->passive_candidates)},
                {"temperature", json_real(s->temperature)},
                {"max_new_tokens", json_integer(s->max_new)},
                {"kl_prompts", json_integer(s->kl_prompts)}};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) json_object_set_new(sec, vals[i].key, vals[i].v);
    json_t *strategies = json_array(), *modes = json_array();
    for (int i = 0; i < s->n_runs; i++) {
        bool seen_s = false, seen_m = false;
        size_t k;
        json_t *v;
        json_array_foreach(strategies, k, v) seen_s |= strcmp(json_string_value(v), s->runs[i].strategy) == 0;
        json_array_foreach(modes, k, v) seen_m |= strcmp(json_string_value(v), s->runs[i].mode) == 0;
        if (!seen_s) json_array_append_new(strategies, json_string(s->runs[i].strategy));
        if (!seen_m) json_array_append_new(modes, json_string(s->runs[i].mode));
    }
    json_object_set_new(sec, "strategies", strategies);
    json_object_set_new(sec, "modes", modes);
    char path[SWEEP_PATH];
    snprintf(path, sizeof path, "%s/config.json", s->out);
    if (s->report) return 0; /* starts nothing: the folder's configuration (read as the plan) stays as it is */
    json_t *old = NULL;
    duel_error ignored;
    if (access(path, F_OK) == 0) {
        if (duel_json_load_file(path, DUEL_CONFIG_MAX_BYTES, &old, &ignored) != 0)
            return duel_error_set(&s->err, DUEL_EFORMAT, "%s: not a sweep's configuration: give another --out, or remove it",
                                  path);
        json_t *defaults = NULL;
        int rc = duel_config_defaults(&defaults, &s->err);
        char differs[SWEEP_PATH] = "";
        int added = 0;
        if (rc == 0 && !config_resumable(old, s->config, defaults, "", differs, sizeof differs, &added))
            rc = duel_error_set(&s->err, DUEL_EINVAL,
                                "%s holds a sweep with another configuration (%s): give another --out, or remove it",
                                path, differs);
        json_decref(defaults);
        if (rc == 0) rc = grow_plan(s, old, path);
        json_decref(old);
        if (rc == 0 && added && !s->quiet)
            fprintf(stderr, "sweep: %s lacks %d configuration key%s this build added; resuming with %s at %s default%s\n",
                    path, added, added == 1 ? "" : "s", added == 1 ? "it" : "them", added == 1 ? "its" : "their",
                    added == 1 ? "" : "s");
        return rc; /* the runs read the folder's file: a key it lacks takes its default */
    }
    if (json_dump_file(s->config, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        return duel_error_set(&s->err, DUEL_EIO, "%s: cannot write", path);
    return 0;
}

/* ---- running ------------------------------------------------------------------------------ */

static void run_path(const sweep *s, const sweep_run *r, const char *ext, char *out, size_t cap) {
    snprintf(out, cap, "%s/runs/%s%s", s->out, r->name, ext);
}

static pid_t start_run(const sweep *s, const sweep_run *r) {
    char config[SWEEP_PATH], partial[SWEEP_PATH], log[SWEEP_PATH], timing[SWEEP_PATH], seed[32];
    snprintf(config, sizeof config, "%s/config.json", s->out);
    run_path(s, r, ".jsonl.partial", partial, sizeof partial);
    run_path(s, r, ".log", log, sizeof log);
    run_path(s, r, ".json", timing, sizeof timing);
    snprintf(seed, sizeof seed, "%lld", r->seed);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* a run must not outlive its sweep */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(125);
        if (!freopen(log, "w", stderr) || !freopen(timing, "w", stdout)) _exit(126);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execl("/proc/self/exe", "duel", "sim", "--inprocess", "--config", config, "--strategy", r->strategy, "--mode",
              r->mode, "--seed", seed, "--out", partial, "--json", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Lines of a file (0 when it cannot be read). */
static long long count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long long n = 0;
    int c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

static long long expected_points(const sweep *s) {
    return 1 + s->queries / s->eval_every + (s->queries % s->eval_every != 0);
}

/* The progress line: runs done, running, failed, and an ETA from the runs' own progress (a
 * running run's share of its evaluation points written; finished runs count whole). */
static void report_progress(const sweep *s, int done, int running, int failed, double t0) {
    if (s->quiet) return;
    const long long points = expected_points(s);
    double work_done = 0, work_left = 0;
    for (int i = 0; i < s->n_runs; i++) {
        const sweep_run *r = &s->runs[i];
        if (r->done || r->failed) continue;
        double frac = 0;
        if (r->pid > 0 && points > 1) {
            char partial[SWEEP_PATH];
            run_path(s, r, ".jsonl.partial", partial, sizeof partial);
            long long n = count_lines(partial);
            frac = n > 1 ? (double)(n - 1) / (double)(points - 1) : 0;
            if (frac > 0) work_done += frac;
        }
        work_left += 1 - frac;
    }
    for (int i = 0; i < s->n_runs; i++) work_done += s->runs[i].done && s->runs[i].wall > 0;
    const double elapsed = duel_time_seconds() - t0;
    char eta[32] = "?";
    if (work_done > 0) snprintf(eta, sizeof eta, "%.0f s", work_left * elapsed / work_done);
    fprintf(stderr, "\rsweep: %d/%d runs done, %d running, %d failed, %.0f s, ETA %s   ", done, s->n_runs, running,
            failed, elapsed, eta);
}

static int run_all(sweep *s, int *failed_out) {
    char path[SWEEP_PATH], final_path[SWEEP_PATH];
    snprintf(path, sizeof path, "%s/runs", s->out);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return duel_error_set(&s->err, DUEL_EIO, "%s: %s", path, strerror(errno));
    int done = 0, failed = 0, running = 0, next = 0;
    double t0 = duel_time_seconds();
    const long long points = expected_points(s);
    for (int i = 0; i < s->n_runs; i++) {
        run_path(s, &s->runs[i], ".jsonl", final_path, sizeof final_path);
        if (count_lines(final_path) == points) s->runs[i].done = true, done++;
    }
    if (s->report) { /* --report: the finished runs only; nothing starts */
        if (!s->quiet) fprintf(stderr, "sweep: %d of %d runs done in %s: reporting those\n", done, s->n_runs, s->out);
        *failed_out = 0;
        return 0;
    }
    if (!s->quiet && done) fprintf(stderr, "sweep: %d of %d runs already done in %s: resuming\n", done, s->n_runs, s->out);
    double last_report = 0;
    while (done + failed < s->n_runs) {
        while (running < s->jobs && next < s->n_runs) {
            sweep_run *r = &s->runs[next++];
            if (r->done) continue;
            if ((r->pid = start_run(s, r)) < 0) return duel_error_set(&s->err, DUEL_EIO, "fork: %s", strerror(errno));
            r->started = duel_time_seconds();
            running++;
        }
        if (duel_time_seconds() - last_report >= 5.0) {
            report_progress(s, done, running, failed, t0);
            last_report = duel_time_seconds();
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0) {
            bench_sleep_ms(500);
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR) continue;
            return duel_error_set(&s->err, DUEL_EIO, "wait: %s", strerror(errno));
        }
        for (int i = 0; i < s->n_runs; i++) {
            sweep_run *r = &s->runs[i];
            if (r->pid != pid) continue;
            r->pid = 0;
            running--;
            r->wall = duel_time_seconds() - r->started;
            char partial[SWEEP_PATH];
            run_path(s, r, ".jsonl.partial", partial, sizeof partial);
            run_path(s, r, ".jsonl", final_path, sizeof final_path);
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && count_lines(partial) == points &&
                rename(partial, final_path) == 0) {
                r->done = true;
                done++;
            } else {
                r->failed = true;
                failed++;
                run_path(s, r, ".log", path, sizeof path);
                fprintf(stderr, "\nsweep: run %s failed (status %d); see %s\n", r->name, status, path);
            }
        }
    }
    report_progress(s, done, running, failed, t0);
    if (!s->quiet) fprintf(stderr, "\n");
    *failed_out = failed;
    return 0;
}

/* ---- aggregation ------------------------------------------------------------------------ */

typedef struct point {
    int run;
    long long queries;
    double v[N_MEASURES];
    bool known[N_MEASURES];
} point;

static int read_points(sweep *s, point **out, int *n) {
    *out = NULL;
    *n = 0;
    int cap = 0;
    for (int i = 0; i < s->n_runs; i++) {
        if (!s->runs[i].done) continue;
        char path[SWEEP_PATH];
        run_path(s, &s->runs[i], ".jsonl", path, sizeof path);
        FILE *f = fopen(path, "r");
        if (!f) return duel_error_set(&s->err, DUEL_EIO, "%s: %s", path, strerror(errno));
        char line[1 << 14];
        int line_no = 0;
        while (fgets(line, sizeof line, f)) {
            line_no++;
            json_error_t je;
            json_t *o = json_loads(line, 0, &je);
            if (!json_is_object(o) || !json_is_integer(json_object_get(o, "queries"))) {
                json_decref(o);
                fclose(f);
                return duel_error_set(&s->err, DUEL_EFORMAT, "%s:%d: not an evaluation point", path, line_no);
            }
            if (*n == cap) {
                cap = cap ? 2 * cap : 256;
                point *grown = cap <= SWEEP_MAX_POINTS ? realloc(*out, sizeof **out * (size_t)cap) : NULL;
                if (!grown) {
                    json_decref(o);
                    fclose(f);
                    return duel_error_set(&s->err, DUEL_ENOMEM, "too many evaluation points");
                }
                *out = grown;
            }
            point *p = &(*out)[(*n)++];
            p->run = i;
            p->queries = json_integer_value(json_object_get(o, "queries"));
            for (size_t m = 0; m < N_MEASURES; m++) {
                json_t *v = json_object_get(o, MEASURES[m]);
                p->known[m] = json_is_number(v);
                p->v[m] = p->known[m] ? json_number_value(v) : 0;
            }
            json_decref(o);
        }
        fclose(f);
    }
    return 0;
}

typedef struct stat_acc {
    double sum, sum2;
    int n;
} stat_acc;

static void acc_add(stat_acc *a, double x) {
    a->sum += x;
    a->sum2 += x * x;
    a->n++;
}
static double acc_mean(const stat_acc *a) { return a->n ? a->sum / a->n : NAN; }
/* Standard error of the mean over seeds (sample standard deviation / sqrt(n)); 0 for one seed. */
static double acc_se(const stat_acc *a) {
    if (a->n < 2) return 0;
    double m = a->sum / a->n, var = (a->sum2 - a->n * m * m) / (a->n - 1);
    return sqrt(var > 0 ? var : 0) / sqrt((double)a->n);
}

static void print_num(FILE *f, double x) {
    if (isfinite(x)) fprintf(f, "%.6g", x);
}

/* The (strategy, mode) groups in plan order. */
static int group_of(const sweep *s, int run, int *first_runs, int *n_groups) {
    for (int g = 0; g < *n_groups; g++) {
        const sweep_run *a = &s->runs[first_runs[g]], *b = &s->runs[run];
        if (strcmp(a->strategy, b->strategy) == 0 && strcmp(a->mode, b->mode) == 0) return g;
    }
    first_runs[*n_groups] = run;
    return (*n_groups)++;
}

static int write_points_csv(sweep *s, const point *pts, int n) {
    char path[SWEEP_PATH];
    snprintf(path, sizeof path, "%s/points.csv", s->out);
    FILE *f = fopen(path, "w");
    if (!f) return duel_error_set(&s->err, DUEL_EIO, "%s: %s", path, strerror(errno));
    fprintf(f, "strategy,mode,seed,queries");
    for (size_t m = 0; m < N_MEASURES; m++) fprintf(f, ",%s", MEASURES[m]);
    fprintf(f, "\n");
    for (int i = 0; i < n; i++) {
        const sweep_run *r = &s->runs[pts[i].run];
        fprintf(f, "%s,%s,%lld,%lld", r->strategy, r->mode, r->seed, pts[i].queries);
        for (size_t m = 0; m < N_MEASURES; m++) {
            fputc(',', f);
            if (pts[i].known[m]) print_num(f, pts[i].v[m]);
        }
        fputc('\n', f);
    }
    return fclose(f) == 0 ? 0 : duel_error_set(&s->err, DUEL_EIO, "%s: write failed", path);
}

static int write_summary_csv(sweep *s, const point *pts, int n, const int *group, int n_groups, const int *first) {
    char path[SWEEP_PATH];
    snprintf(path, sizeof path, "%s/summary.csv", s->out);
    FILE *f = fopen(path, "w");
    if (!f) return duel_error_set(&s->err, DUEL_EIO, "%s: %s", path, strerror(errno));
    fprintf(f, "strategy,mode,queries,seeds");
    for (size_t m = 0; m < N_MEASURES; m++) fprintf(f, ",%s_mean,%s_se", MEASURES[m], MEASURES[m]);
    fprintf(f, "\n");
    for (int g = 0; g < n_groups; g++) {
        for (long long q = 0; q <= s->queries; q++) {
            stat_acc acc[N_MEASURES] = {{0}};
            int seeds = 0;
            for (int i = 0; i < n; i++) {
                if (group[i] != g || pts[i].queries != q) continue;
                seeds++;
                for (size_t m = 0; m < N_MEASURES; m++)
                    if (pts[i].known[m]) acc_add(&acc[m], pts[i].v[m]);
            }
            if (!seeds) continue;
            const sweep_run *r = &s->runs[first[g]];
            fprintf(f, "%s,%s,%lld,%d", r->strategy, r->mode, q, seeds);
            for (size_t m = 0; m < N_MEASURES; m++) {
                fputc(',', f);
                if (acc[m].n) print_num(f, acc_mean(&acc[m]));
                fputc(',', f);
                if (acc[m].n) print_num(f, acc_se(&acc[m]));
            }
            fputc('\n', f);
        }
    }
    return fclose(f) == 0 ? 0 : duel_error_set(&s->err, DUEL_EIO, "%s: write failed", path);
}

/* A run's value of measure m at its last point, and the first query count at which win_share
 * reaches target (-1: never). */
static void run_final(const point *pts, int n, int run, size_t m, double *final, bool *known) {
    long long best = -1;
    *known = false;
    for (int i = 0; i < n; i++)
        if (pts[i].run == run && pts[i].queries > best) {
            best = pts[i].queries;
            *final = pts[i].v[m];
            *known = pts[i].known[m];
        }
}

static long long run_reach(const point *pts, int n, int run, double target) {
    long long first = -1;
    for (int i = 0; i < n; i++)
        if (pts[i].run == run && pts[i].v[0] >= target && (first < 0 || pts[i].queries < first)) first = pts[i].queries;
    return first;
}

/* Mean over a run's points after the first of measure m (the online score over the whole run). */
static bool run_mean(const point *pts, int n, int run, size_t m, double *out) {
    stat_acc a = {0};
    for (int i = 0; i < n; i++)
        if (pts[i].run == run && pts[i].known[m]) acc_add(&a, pts[i].v[m]);
    *out = acc_mean(&a);
    return a.n > 0;
}

static void cell(FILE *f, const stat_acc *a, const char *fmt) {
    if (!a->n) {
        fprintf(f, " - |");
        return;
    }
    fprintf(f, " ");
    fprintf(f, fmt, acc_mean(a));
    fprintf(f, " ± ");
    fprintf(f, fmt, acc_se(a));
    fprintf(f, " |");
}

static int write_table(sweep *s, const point *pts, int n, int n_groups, const int *first, double wall) {
    char path[SWEEP_PATH];
    snprintf(path, sizeof path, "%s/table.md", s->out);
    FILE *f = fopen(path, "w");
    if (!f) return duel_error_set(&s->err, DUEL_EIO, "%s: %s", path, strerror(errno));
    fprintf(f, "Final values after %lld queries, mean ± standard error over the finished seeds (planned: %lld from %lld; the seeds column "
               "counts those finished); win rate "
               "= share of %lld held-out prompts whose greedy answer the oracle prefers to the base model's (P > "
               "1/2); online score = mean oracle score of the answers shown, over the whole run; queries to reach "
               "passive's final win rate in the same mode, over the seeds that reach it.\n\n",
            s->queries, s->seeds, s->seed, s->held_out_count);
    fprintf(f, "| strategy | mode | seeds | win rate | mean P | oracle score | KL | online score | tie share | queries "
               "to passive's final win rate |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (int g = 0; g < n_groups; g++) {
        const sweep_run *head = &s->runs[first[g]];
        /* passive's final win rate in this mode, averaged over its seeds */
        stat_acc target = {0};
        for (int i = 0; i < s->n_runs; i++) {
            double v;
            bool known;
            if (!s->runs[i].done || strcmp(s->runs[i].strategy, "passive") != 0 || strcmp(s->runs[i].mode, head->mode) != 0)
                continue;
            run_final(pts, n, i, 0, &v, &known);
            if (known) acc_add(&target, v);
        }
        stat_acc win = {0}, meanp = {0}, score = {0}, kl = {0}, online = {0}, ties = {0}, reach = {0};
        int seeds = 0;
        for (int i = 0; i < s->n_runs; i++) {
            const sweep_run *r = &s->runs[i];
            if (!r->done || strcmp(r->strategy, head->strategy) != 0 || strcmp(r->mode, head->mode) != 0) continue;
            seeds++;
            double v;
            bool known;
            stat_acc *accs[] = {&win, &meanp, &score, &kl};
            for (size_t m = 0; m < 4; m++) {
                run_final(pts, n, i, m, &v, &known);
                if (known) acc_add(accs[m], v);
            }
            if (run_mean(pts, n, i, 4, &v)) acc_add(&online, v);
            run_final(pts, n, i, 7, &v, &known);
            if (known) acc_add(&ties, v);
            if (target.n) {
                long long q = run_reach(pts, n, i, acc_mean(&target));
                if (q >= 0) acc_add(&reach, (double)q);
            }
        }
        fprintf(f, "| %s | %s | %d |", head->strategy, head->mode, seeds);
        cell(f, &win, "%.3f");
        cell(f, &meanp, "%.3f");
        cell(f, &score, "%.4f");
        cell(f, &kl, "%.3f");
        cell(f, &online, "%.4f");
        cell(f, &ties, "%.3f");
        if (!target.n) fprintf(f, " no passive run |\n");
        else if (!reach.n) fprintf(f, " not reached in %lld (0 of %d seeds; target %.3f) |\n", s->queries, seeds, acc_mean(&target));
        else fprintf(f, " %.0f ± %.0f (%d of %d seeds; target %.3f) |\n", acc_mean(&reach), acc_se(&reach), reach.n, seeds,
                     acc_mean(&target));
    }
    double run_wall = 0;
    int timed = 0;
    for (int i = 0; i < s->n_runs; i++) {
        char tp[SWEEP_PATH];
        run_path(s, &s->runs[i], ".json", tp, sizeof tp);
        json_t *t = json_load_file(tp, 0, NULL);
        if (json_is_number(json_object_get(t, "wall_seconds"))) run_wall += json_number_value(json_object_get(t, "wall_seconds")), timed++;
        json_decref(t);
    }
    fprintf(f, "\n%d runs (%d timed: %.0f s of run time in all, %.0f s each on average); this invocation took %.0f s "
               "with %lld jobs.\n",
            s->n_runs, timed, run_wall, timed ? run_wall / timed : 0, wall, s->jobs);
    return fclose(f) == 0 ? 0 : duel_error_set(&s->err, DUEL_EIO, "%s: write failed", path);
}

/* Writes the plot script next to the CSV and runs it. A missing python3 or matplotlib is said,
 * not fatal: the numbers stand without the pictures. */
static void plot(sweep *s) {
    char script[SWEEP_PATH], cmd[3 * SWEEP_PATH];
    snprintf(script, sizeof script, "%s/sim_plot.py", s->out);
    FILE *f = fopen(script, "w");
    if (!f || fwrite(sim_plot_py, 1, sim_plot_py_len, f) != sim_plot_py_len) {
        if (f) fclose(f);
        fprintf(stderr, "sweep: %s: cannot write the plot script; no plots\n", script);
        return;
    }
    fclose(f);
    const char *python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s/summary.csv' '%s' >&2", python, script, s->out, s->out);
    if (system(cmd) != 0)
        fprintf(stderr, "sweep: no plots (the command above failed: %s); the CSV and table are written\n", cmd);
}

static int aggregate(sweep *s, double wall) {
    point *pts = NULL;
    int n = 0, rc = read_points(s, &pts, &n);
    int *group = rc == 0 ? calloc((size_t)(n ? n : 1), sizeof *group) : NULL;
    int first[SWEEP_MAX_RUNS], n_groups = 0;
    if (rc == 0 && !group) rc = duel_error_set(&s->err, DUEL_ENOMEM, "out of memory");
    for (int i = 0; rc == 0 && i < s->n_runs; i++) (void)group_of(s, i, first, &n_groups); /* plan order */
    for (int i = 0; rc == 0 && i < n; i++) group[i] = group_of(s, pts[i].run, first, &n_groups);
    if (rc == 0 && (rc = write_points_csv(s, pts, n)) == 0 && (rc = write_summary_csv(s, pts, n, group, n_groups, first)) == 0)
        rc = write_table(s, pts, n, n_groups, first, wall);
    free(group);
    free(pts);
    if (rc == 0 && n > 0) plot(s);
    return rc;
}

/* ---- the command ---------------------------------------------------------------------------- */

int sim_sweep_command(int argc, char **argv) {
    sweep *s = calloc(1, sizeof *s);
    if (!s) return CLI_EXIT_FAILURE;
    long long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const cli_option options[] = {
        {"--experiment", CLI_OPT_STRING, &s->experiment, "FILE", "an experiment: a configuration file (its sim section describes the sweep; oracle, trainer, erm as usual); --set K=V overrides", 0, 0, false, NULL},
        {"--model", CLI_OPT_STRING, &s->model, "DIR", "base policy (default: model.path, else models/default)", 0, 0, false, NULL},
        {"--prompts", CLI_OPT_STRING, &s->prompts, "FILE", "JSONL the users ask (sim.prompts)", 0, 0, false, NULL},
        {"--held-out", CLI_OPT_STRING, &s->held_out, "FILE", "JSONL of the offline evaluation (sim.held_out)", 0, 0, false, NULL},
        {"--held-out-count", CLI_OPT_INT, &s->held_out_count, "N", "held-out prompts evaluated (sim.held_out_count)", 1, ORACLE_PROMPT_MAX_ITEMS, false, NULL},
        {"--strategies", CLI_OPT_STRING, &s->strategies_arg, "LIST", "comma-separated: passive, ee_ts, bai_ts, uncertainty, bon, pilaf (M = 2, online and offline) (sim.strategies)", 0, 0, false, NULL},
        {"--modes", CLI_OPT_STRING, &s->modes_arg, "LIST", "online, offline or both (sim.modes)", 0, 0, false, NULL},
        {"--seeds", CLI_OPT_INT, &s->seeds, "N", "runs per strategy and mode (sim.seeds)", 1, 1000, false, NULL},
        {"--seed", CLI_OPT_INT, &s->seed, "S", "the first seed; runs use S .. S+N-1 (sim.seed)", 0, 1e15, false, NULL},
        {"--queries", CLI_OPT_INT, &s->queries, "N", "query budget per run (sim.queries)", 1, 1e9, false, NULL},
        {"--eval-every", CLI_OPT_INT, &s->eval_every, "K", "an evaluation point every K queries (sim.eval_every)", 1, 1e9, false, NULL},
        {"--labels", CLI_OPT_STRING, &s->labels, "L", "SEA mixture labels: erm or oracle (sim.labels)", 0, 0, false, NULL},
        {"--candidates", CLI_OPT_INT, &s->candidates, "M", "candidates per duel (sim.candidates)", 2, 64, false, NULL},
        {"--passive-candidates", CLI_OPT_INT, &s->passive_candidates, "M", "candidates of a passive duel (sim.passive_candidates)", 2, 64, false, NULL},
        {"--temperature", CLI_OPT_DOUBLE, &s->temperature, "T", "candidates' temperature (sim.temperature)", 0, 10, false, NULL},
        {"--max-new-tokens", CLI_OPT_INT, &s->max_new, "N", "tokens per answer (sim.max_new_tokens)", 1, 4096, false, NULL},
        {"--kl-prompts", CLI_OPT_INT, &s->kl_prompts, "N", "held-out prompts of the KL estimate (sim.kl_prompts)", 0, ORACLE_PROMPT_MAX_ITEMS, false, NULL},
        {"--jobs", CLI_OPT_INT, &s->jobs, "J", "runs at once; 0: the core count (sim.jobs)", 0, 1024, false, NULL},
        {"--out", CLI_OPT_STRING, &s->out, "DIR", "the sweep's folder; a rerun resumes it (sim.out_dir)", 0, 0, false, NULL},
        {"--quiet", CLI_OPT_FLAG, &s->quiet, NULL, "no progress on stderr", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &s->json, NULL, "one JSON object on the last line of stdout: runs, failures, wall time, files", 0, 0, false, NULL},
        {"--report", CLI_OPT_FLAG, &s->report, NULL, "start no run: the CSVs, table and plots of the runs already finished in --out, planned by its config.json (an interrupted sweep so far)", 0, 0, false, NULL},
    };
    static const char *const keys[] = {NULL, NULL, "prompts", "held_out", "held_out_count", NULL, NULL, "seeds", "seed",
                                       "queries", "eval_every", "labels", "candidates", "passive_candidates",
                                       "temperature", "max_new_tokens", "kl_prompts", "jobs", "out_dir", NULL, NULL, NULL};
    const size_t n = sizeof options / sizeof *options;
    bool given[sizeof options / sizeof *options];
    cli_option opts[sizeof options / sizeof *options];
    sim_options_track(options, n, opts, given);
    const cli_command cmd = {
        "sim sweep", "[--experiment FILE] [--strategies LIST] [--modes LIST] [--seeds N] [options] [--set K=V ...]",
        "The experiment runner: every strategy x mode x seed as one `duel sim --inprocess` run, in\n"
        "parallel processes (--jobs), into one folder: each run's JSONL of evaluation points,\n"
        "points.csv, summary.csv (mean and standard error over seeds per query count), table.md\n"
        "(final values; the queries each strategy needs to reach passive's final offline win rate)\n"
        "and PNG plots of the offline win rate, the online score and the KL against queries with\n"
        "+-1 standard-error bands (python3 with matplotlib). Rerun the same command to resume an\n"
        "interrupted sweep: finished runs are kept, unfinished ones start again (a folder an older\n"
        "build wrote resumes too, the configuration keys added since at their defaults). A rerun may\n"
        "name other strategies, modes or more seeds: the folder's plan grows to both (every other\n"
        "option must be the folder's), and the whole plan's unfinished runs run; --report writes\n"
        "the outputs of the runs finished so far and starts none (the plan is OUT/config.json; the\n"
        "table's seeds column says how many each row has). Every option's default comes from the sim section of the\n"
        "configuration (--experiment FILE, --set; OUT/config.json is one).",
        opts, n};
    const char *sets[SIM_MAX_SETS];
    size_t n_sets = 0;
    int rc = 0, failed = 0;
    double t0 = duel_time_seconds();
    if (duel_config_take_sets(&argc, argv, sets, SIM_MAX_SETS, &n_sets, &s->err)) {
        rc = cli_usage_error(&cmd, "%s", s->err.message);
        goto out;
    }
    if ((rc = cli_parse(&cmd, argc, argv))) {
        rc = rc < 0 ? CLI_EXIT_OK : rc;
        goto out;
    }
    char report_config[SWEEP_PATH];
    if (s->report) {
        /* The folder's own configuration is the plan, read as an experiment, so that a sweep
         * recorded before a later default was added still reports (nothing runs to be mixed). */
        if (!s->out || s->experiment) {
            rc = cli_usage_error(&cmd, "--report takes --out DIR and reads DIR/config.json (no --experiment)");
            goto out;
        }
        snprintf(report_config, sizeof report_config, "%s/config.json", s->out);
        if (access(report_config, F_OK) != 0) {
            fprintf(stderr, "duel sim sweep: --report: %s: no sweep there (%s)\n", s->out, strerror(errno));
            rc = CLI_EXIT_FAILURE;
            goto out;
        }
        s->experiment = report_config;
    }
    if (duel_config_load(s->experiment, sets, n_sets, (const char *const *)environ, &s->config, NULL, &s->err) ||
        sim_options_from_config(opts, keys, given, n, duel_config_section(s->config, "sim"), &s->err) || plan(s)) {
        fprintf(stderr, "duel sim sweep: %s\n", s->err.message);
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (!s->model) {
        const char *path = json_string_value(json_object_get(duel_config_section(s->config, "model"), "path"));
        s->model = path && *path ? path : "models/default";
    }
    if (!s->prompts || !s->held_out) {
        rc = cli_usage_error(&cmd, "--prompts and --held-out are required (or sim.prompts and sim.held_out)");
        goto out;
    }
    if (!s->out) {
        rc = cli_usage_error(&cmd, "--out is required (or sim.out_dir)");
        goto out;
    }
    if (!s->labels || (strcmp(s->labels, "erm") != 0 && strcmp(s->labels, "oracle") != 0)) {
        rc = cli_usage_error(&cmd, "--labels must be erm or oracle, got '%s'", s->labels ? s->labels : "");
        goto out;
    }
    if (s->jobs == 0) s->jobs = cores > 0 ? cores : 1;
    /* Inputs are checked once here (the runs would each fail the same way): the prompt files and
     * the oracle, before any folder is made. */
    {
        oracle_config oc;
        oracle_config_default(&oc);
        oracle_user *u = NULL;
        oracle_prompt_set a = {0}, h = {0};
        rc = oracle_config_from_json(duel_config_section(s->config, "oracle"), "oracle", &oc, &s->err);
        if (rc == 0) rc = oracle_user_open(&oc, &u, &s->err);
        if (rc == 0 && !oracle_user_has_scores(u))
            rc = duel_error_set(&s->err, DUEL_EUNSUPPORTED, "oracle.kind judge gives no scores: a sweep needs lexical or rm");
        const bool refs = oc.kind == ORACLE_LEXICAL;
        if (rc == 0) rc = oracle_prompt_set_load(s->prompts, ORACLE_PROMPT_MAX_ITEMS, refs, &a, &s->err);
        if (rc == 0) rc = oracle_prompt_set_load(s->held_out, (int)s->held_out_count, refs, &h, &s->err);
        if (rc == 0) rc = oracle_user_check(u, &a, &s->err);
        if (rc == 0) rc = oracle_user_check(u, &h, &s->err);
        bool policy_features; /* checked before any run starts; each run reads it again */
        if (rc == 0) rc = cli_engine_policy_features(s->config, &policy_features, &s->err);
        if (rc == 0 && s->kl_prompts > h.count)
            rc = duel_error_set(&s->err, DUEL_EINVAL, "--kl-prompts %lld: %s has %d prompts", s->kl_prompts, s->held_out, h.count);
        oracle_prompt_set_free(&a);
        oracle_prompt_set_free(&h);
        oracle_user_close(u);
        if (rc) {
            fprintf(stderr, "duel sim sweep: %s\n", s->err.message);
            rc = CLI_EXIT_FAILURE;
            goto out;
        }
    }
    if (mkdir(s->out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "duel sim sweep: %s: %s\n", s->out, strerror(errno));
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    if (write_config(s) || run_all(s, &failed) || aggregate(s, duel_time_seconds() - t0)) {
        fprintf(stderr, "duel sim sweep: %s\n", s->err.message);
        rc = CLI_EXIT_FAILURE;
        goto out;
    }
    if (!s->quiet) fprintf(stderr, "sweep: %s/table.md, summary.csv, points.csv, *.png\n", s->out);
    if (s->json) {
        json_t *o = json_pack("{s:s, s:i, s:i, s:f}", "out", s->out, "runs", s->n_runs, "failed", failed,
                              "wall_seconds", duel_time_seconds() - t0);
        if (bench_json_print("sim sweep", o)) failed++;
    }
    rc = failed ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
out:
    json_decref(s->config);
    free(s);
    return rc;
}
