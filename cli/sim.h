/* sim.h: what the files of `duel sim` share (DESIGN.md section 10): the in-process run
 * (sim_inprocess.c), the experiment runner over many of them (sim_sweep.c) and the load
 * generator over real websockets (sim_gateway.c); cmd_sim.c parses the command lines. Only cli/
 * uses it. */
#ifndef DUEL_CLI_SIM_H
#define DUEL_CLI_SIM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "duel.h"
#include "error.h"

#define SIM_MAX_SETS 64

/* The strategies a simulation runs: every one but arena, whose votes rate two snapshots
 * against each other instead of teaching one policy. */
#define SIM_STRATEGIES "ee_ts, bai_ts, uncertainty, passive, bon and pilaf"
static inline bool sim_strategy_runs(duel_strategy s) { return s != DUEL_STRATEGY_ARENA; }

/* One in-process run: one strategy, one mode, one seed. */
typedef struct sim_run_options {
    const char *model_dir;     /* the base policy (and the frozen reference) */
    const char *prompts_path;  /* what the users ask */
    const char *held_out_path; /* the offline evaluation's prompts, never asked */
    const char *out_path;      /* JSONL, one line per evaluation point ("-": stdout) */
    const char *work_dir;      /* NULL: a temporary folder, removed at the end */
    const char *strategy;      /* ee_ts, bai_ts, uncertainty, passive, bon, pilaf */
    bool offline;              /* pairs from the initial policy (and ERM) throughout */
    const char *labels;        /* "erm": the trainer's SEA labels; "oracle" */
    long long queries, eval_every, held_out, seed, candidates, passive_candidates, max_new_tokens;
    long long kl_prompts;      /* held-out prompts of the KL estimate (0: none) */
    double temperature;
    bool quiet;                /* no progress line */
    json_t *config;            /* the loaded configuration (trainer, erm, oracle sections) */
    const char *config_path;   /* for messages and trainer.beta */
    const char *const *sets;
    size_t n_sets;
} sim_run_options;

/* Runs it (sim_inprocess.c). The JSONL's lines depend only on the options and the seed: the
 * same command gives byte-identical lines. Wall-clock figures go to stderr and, as one JSON
 * object, to *summary (optional; caller json_decrefs). */
int sim_run_inprocess(const sim_run_options *options, json_t **summary, duel_error *err);

/* Copies options[0..n) into opts with opts[i].given = &given[i] (cleared), so that parsing opts
 * records which options the command line gave. */
void sim_options_track(const cli_option *options, size_t n, cli_option *opts, bool *given);

/* The sim section's values for the options a command line did not give (cmd_sim.c): keys[i]
 * (NULL: none) is options[i]'s key in section, given[i] whether the line had it. Types and the
 * options' ranges are checked; a string "" means unset (NULL). */
int sim_options_from_config(const cli_option *options, const char *const *keys, const bool *given, size_t n,
                            const json_t *section, duel_error *err);

#endif
