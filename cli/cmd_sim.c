/* cmd_sim.c: `duel sim`, simulated users (DESIGN.md section 10), three forms:
 *   duel sim --inprocess ...   one seeded, deterministic run of the learning loop in this process
 *                              (sim_inprocess.c): JSONL of evaluation points;
 *   duel sim sweep ...         strategies x modes x seeds of such runs in parallel processes,
 *                              resumable, with CSV, plots and a table (sim_sweep.c);
 *   duel sim --gateway URL ... simulated users over real websockets against running gateways
 *                              (sim_gateway.c).
 * Every option's default is the configuration's sim section (config/default.json,
 * docs/CONFIG.md), read after --config and --set, so a flag wins over both. This file owns that
 * bridge and the command lines; the work is in the files named above. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_json.h"
#include "cli.h"
#include "config.h"
#include "oracle.h"
#include "sim.h"

extern char **environ;

int cmd_sim(int argc, char **argv);
int sim_gateway_command(int argc, char **argv); /* sim_gateway.c */
int sim_sweep_command(int argc, char **argv);   /* sim_sweep.c */

void sim_options_track(const cli_option *options, size_t n, cli_option *opts, bool *given) {
    for (size_t i = 0; i < n; i++) {
        opts[i] = options[i];
        given[i] = false;
        opts[i].given = &given[i];
    }
}

int sim_options_from_config(const cli_option *options, const char *const *keys, const bool *given, size_t n,
                            const json_t *section, duel_error *err) {
    for (size_t i = 0; i < n; i++) {
        if (!keys[i] || given[i]) continue;
        const json_t *v = json_object_get(section, keys[i]);
        const cli_option *o = &options[i];
        if (!v) return duel_error_set(err, DUEL_EFORMAT, "sim.%s: missing from the configuration", keys[i]);
        switch (o->kind) {
        case CLI_OPT_STRING:
            if (!json_is_string(v)) return duel_error_set(err, DUEL_EFORMAT, "sim.%s must be a string", keys[i]);
            *(const char **)o->dest = json_string_length(v) ? json_string_value(v) : NULL;
            break;
        case CLI_OPT_INT: {
            if (!json_is_integer(v)) return duel_error_set(err, DUEL_EFORMAT, "sim.%s must be an integer", keys[i]);
            long long x = json_integer_value(v);
            if ((double)x < o->min || (double)x > o->max)
                return duel_error_set(err, DUEL_EFORMAT, "sim.%s = %lld is outside [%.15g, %.15g] (%s)", keys[i], x,
                                      o->min, o->max, o->name);
            *(long long *)o->dest = x;
            break;
        }
        case CLI_OPT_DOUBLE: {
            if (!json_is_number(v)) return duel_error_set(err, DUEL_EFORMAT, "sim.%s must be a number", keys[i]);
            double x = json_number_value(v);
            if (x < o->min || x > o->max || (o->min_exclusive && x == o->min))
                return duel_error_set(err, DUEL_EFORMAT, "sim.%s = %g is outside [%.15g, %.15g] (%s)", keys[i], x,
                                      o->min, o->max, o->name);
            *(double *)o->dest = x;
            break;
        }
        case CLI_OPT_FLAG:
            if (!json_is_boolean(v)) return duel_error_set(err, DUEL_EFORMAT, "sim.%s must be true or false", keys[i]);
            *(bool *)o->dest = json_is_true(v);
            break;
        }
    }
    return 0;
}

/* `duel sim --inprocess`. */
static int sim_inprocess_command(int argc, char **argv) {
    sim_run_options o = {.model_dir = NULL, .out_path = "-", .strategy = "ee_ts", .labels = "erm"};
    const char *config_path = NULL, *mode = "online";
    bool inprocess = false, json = false;
    const cli_option options[] = {
        {"--inprocess", CLI_OPT_FLAG, &inprocess, NULL, "this form: one run in this process, no sockets", 0, 0, false, NULL},
        {"--model", CLI_OPT_STRING, &o.model_dir, "DIR", "base policy and frozen reference (default: model.path, else models/default)", 0, 0, false, NULL},
        {"--prompts", CLI_OPT_STRING, &o.prompts_path, "FILE", "JSONL the users ask (oracle/oracle.h, prompt sets; sim.prompts)", 0, 0, false, NULL},
        {"--held-out", CLI_OPT_STRING, &o.held_out_path, "FILE", "JSONL never asked: the offline evaluation (sim.held_out)", 0, 0, false, NULL},
        {"--held-out-count", CLI_OPT_INT, &o.held_out, "N", "evaluate on the first N held-out prompts (sim.held_out_count)", 1, ORACLE_PROMPT_MAX_ITEMS, false, NULL},
        {"--strategy", CLI_OPT_STRING, &o.strategy, "S", "ee_ts, bai_ts, uncertainty, passive, bon (ERM-only learning, best-of-M answers) or pilaf (two answers, mixed with the base model's logits by duel.pilaf_beta; no ERM) (default ee_ts)", 0, 0, false, NULL},
        {"--mode", CLI_OPT_STRING, &mode, "M", "online (pairs from the current policy) or offline (all pairs from the initial policy) (default online)", 0, 0, false, NULL},
        {"--labels", CLI_OPT_STRING, &o.labels, "L", "labels of the SEA mixture's synthetic pairs: erm (the ERM head's, the paper's) or oracle (the oracle orders the pair the head chose, as the paper's code does) (sim.labels)", 0, 0, false, NULL},
        {"--queries", CLI_OPT_INT, &o.queries, "N", "query budget: duels voted (sim.queries)", 1, 1e9, false, NULL},
        {"--eval-every", CLI_OPT_INT, &o.eval_every, "K", "an evaluation point every K queries (sim.eval_every)", 1, 1e9, false, NULL},
        {"--seed", CLI_OPT_INT, &o.seed, "N", "the run's seed: prompt order, duels, oracle noise, trainer (sim.seed)", 0, 1e15, false, NULL},
        {"--candidates", CLI_OPT_INT, &o.candidates, "M", "candidates per duel, pilaf's always 2 (sim.candidates)", 2, 64, false, NULL},
        {"--passive-candidates", CLI_OPT_INT, &o.passive_candidates, "M", "candidates per passive duel: its pair is the first two (sim.passive_candidates)", 2, 64, false, NULL},
        {"--temperature", CLI_OPT_DOUBLE, &o.temperature, "T", "candidates' sampling temperature (sim.temperature)", 0, 10, false, NULL},
        {"--max-new-tokens", CLI_OPT_INT, &o.max_new_tokens, "N", "tokens per candidate and evaluation answer (sim.max_new_tokens)", 1, 4096, false, NULL},
        {"--kl-prompts", CLI_OPT_INT, &o.kl_prompts, "N", "held-out prompts of the KL estimate, 0: none (sim.kl_prompts)", 0, ORACLE_PROMPT_MAX_ITEMS, false, NULL},
        {"--out", CLI_OPT_STRING, &o.out_path, "FILE", "the JSONL of evaluation points (default -: stdout)", 0, 0, false, NULL},
        {"--keep", CLI_OPT_STRING, &o.work_dir, "DIR", "work in DIR (trainer data, snapshots) and keep it (default: a temporary folder, removed)", 0, 0, false, NULL},
        {"--config", CLI_OPT_STRING, &config_path, "FILE", "configuration (sections sim, oracle, trainer, erm, model; docs/CONFIG.md); --set K=V overrides", 0, 0, false, NULL},
        {"--quiet", CLI_OPT_FLAG, &o.quiet, NULL, "no progress on stderr", 0, 0, false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL, "the run's timings as one JSON object on the last line of stdout (after the JSONL when --out is -)", 0, 0, false, NULL},
    };
    static const char *const keys[] = {NULL, NULL, "prompts", "held_out", "held_out_count", NULL, NULL, "labels",
                                       "queries", "eval_every", "seed", "candidates", "passive_candidates",
                                       "temperature", "max_new_tokens", "kl_prompts", NULL, NULL, NULL, NULL, NULL};
    const size_t n = sizeof options / sizeof *options;
    bool given[sizeof options / sizeof *options];
    cli_option opts[sizeof options / sizeof *options];
    sim_options_track(options, n, opts, given);
    const cli_command cmd = {
        "sim --inprocess", "--prompts FILE --held-out FILE [--strategy S] [--mode online|offline] [options] [--set K=V ...]",
        "One run of the learning loop in this process, no sockets: the gateway's engine adapter\n"
        "serves duels (candidates, ERM scoring, the strategy's selection), a simulated user votes by\n"
        "the oracle and its noise model (the oracle section), and the online trainer of `duel train`\n"
        "learns from the votes (ERM, DAP loss, SEA mixture; the trainer and erm sections); online,\n"
        "each update's snapshot serves the next duels. Seeded and deterministic: the same command\n"
        "writes byte-identical JSONL (on one machine, with the same OPENBLAS_NUM_THREADS: the\n"
        "summation order of the BLAS follows its thread count; sweeps run each with 1). Every\n"
        "--eval-every queries (and at 0) one line: the held-out greedy answers' win share\n"
        "(P > 1/2) and mean P against the base model's by the oracle, their mean oracle score,\n"
        "the KL to the base, and the mean oracle score of the answers shown since the last line,\n"
        "with tie and both-bad shares. `duel sim sweep` runs many of these.",
        opts, n};
    const char *sets[SIM_MAX_SETS];
    size_t n_sets = 0;
    duel_error err = {0};
    int rc = cli_parse_with_sets(&cmd, argc, argv, sets, SIM_MAX_SETS, &n_sets);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (strcmp(mode, "online") != 0 && strcmp(mode, "offline") != 0)
        return cli_usage_error(&cmd, "--mode must be online or offline, got '%s'", mode);
    o.offline = strcmp(mode, "offline") == 0;
    json_t *config = NULL;
    if (duel_config_load(config_path, sets, n_sets, (const char *const *)environ, &config, NULL, &err) ||
        sim_options_from_config(opts, keys, given, n, duel_config_section(config, "sim"), &err)) {
        fprintf(stderr, "duel sim: %s\n", err.message);
        json_decref(config);
        return CLI_EXIT_USAGE;
    }
    if (!o.model_dir) {
        const char *path = json_string_value(json_object_get(duel_config_section(config, "model"), "path"));
        o.model_dir = path && *path ? path : "models/default";
    }
    if (!o.prompts_path || !o.held_out_path) {
        json_decref(config);
        return cli_usage_error(&cmd, "--prompts and --held-out are required (or sim.prompts and sim.held_out)");
    }
    o.config = config;
    o.config_path = config_path;
    o.sets = sets;
    o.n_sets = n_sets;
    json_t *summary = NULL;
    rc = sim_run_inprocess(&o, json ? &summary : NULL, &err);
    if (rc) fprintf(stderr, "duel sim: %s\n", err.message);
    else if (json && bench_json_print("sim", summary)) rc = DUEL_EIO;
    else if (!json) json_decref(summary);
    json_decref(config);
    return rc == 0 ? CLI_EXIT_OK : rc == DUEL_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE;
}

static void print_help(FILE *out) {
    fprintf(out,
            "usage: duel sim --inprocess [options]     one seeded run of the loop in this process (JSONL)\n"
            "       duel sim sweep [options]           strategies x modes x seeds: CSV, plots, table\n"
            "       duel sim --gateway ws://HOST:PORT[,ws://...] --users N --votes V [options]\n"
            "                                          simulated users over real websockets\n\n"
            "Simulated users (DESIGN.md section 10) who ask from a prompt set and vote by an oracle\n"
            "(lexical, rm, judge) with a noise model. 'duel sim --inprocess --help', 'duel sim sweep\n"
            "--help' and 'duel sim --gateway --help' describe each form's options.\n");
}

int cmd_sim(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--inprocess") == 0) return sim_inprocess_command(argc, argv);
        if (strncmp(argv[i], "--gateway", 9) == 0 && (argv[i][9] == '\0' || argv[i][9] == '='))
            return sim_gateway_command(argc, argv);
    }
    if (argc > 0 && strcmp(argv[0], "sweep") == 0) return sim_sweep_command(argc - 1, argv + 1);
    if (argc > 0 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    fprintf(stderr, "duel sim: say which form: --inprocess, sweep or --gateway URL\n\n");
    print_help(stderr);
    return CLI_EXIT_USAGE;
}
