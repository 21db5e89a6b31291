/* cli.h: what the `duel` executable's files share: the table-driven option parser (so that every
 * flag is parsed, range-checked and documented in --help from one place) and the entry points of
 * the subcommands. Exit codes: CLI_EXIT_OK, CLI_EXIT_FAILURE (the work failed: missing model,
 * bad file), CLI_EXIT_USAGE (the command line was wrong). Only this folder prints. */
#ifndef DUEL_CLI_H
#define DUEL_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILURE = 1, CLI_EXIT_USAGE = 2 };

typedef enum cli_option_kind {
    CLI_OPT_FLAG,   /* bool, no value */
    CLI_OPT_STRING, /* const char *, points into argv */
    CLI_OPT_INT,    /* long long, checked against [min, max] */
    CLI_OPT_DOUBLE, /* double, checked against min/max (see min_exclusive) */
} cli_option_kind;

typedef struct cli_option {
    const char *name;    /* with dashes: "--top-p" */
    cli_option_kind kind;
    void *dest;          /* bool *, const char **, long long * or double *; holds the default */
    const char *metavar; /* "F", "DIR", ...; NULL for flags */
    const char *help;    /* one line; says the default */
    double min, max;     /* numeric range, inclusive unless min_exclusive */
    bool min_exclusive;
    bool *given;         /* optional: set to true when the option appears */
} cli_option;

typedef struct cli_command {
    const char *name;        /* "generate", "bench forward" */
    const char *synopsis;    /* after "usage: duel <name> " */
    const char *description; /* a paragraph, may contain newlines */
    const cli_option *options;
    size_t n_options;
} cli_command;

/* Parses argv[0..argc) (argv[0] is the first option, not the command name) against the table.
 * Accepts "--name value" and "--name=value"; "--help"/"-h" prints the help to stdout.
 * Returns CLI_EXIT_OK to go on, -1 when help was printed (exit 0), or CLI_EXIT_USAGE after
 * printing a message naming the bad option to stderr. */
int cli_parse(const cli_command *cmd, int argc, char **argv);
/* cli_parse for a command that reads the configuration: first takes every --set K=V out of argv
 * into sets[0..*n_sets) (at most cap; duel_config_take_sets), a bad one a usage error, then
 * parses the rest. Returns as cli_parse does. */
int cli_parse_with_sets(const cli_command *cmd, int argc, char **argv, const char **sets, size_t cap,
                        size_t *n_sets);
void cli_print_help(const cli_command *cmd, FILE *out);
/* Prints "duel <cmd>: <message>" and a hint to see --help to stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The compute backends besides the CPU that this executable hands the engine
 * (engine_params.providers): CUDA (compute_providers.c). */
struct compute_provider;
const struct compute_provider *const *cli_compute_providers(int *n);

/* The receiving end of a configuration's trainer.weight_transport (config.h's JSON) for a serving
 * process (receiving_transport.c): *out stays NULL for file; cuda_ipc and nccl get the Redis
 * where the trainer leaves the handle or id, trainer.transport_device, and rank 1 of
 * trainer.nccl_world_size. DUEL_EFORMAT naming source for bad values. The engine adapter's
 * load_snapshot is cli_snapshot_receiver_load with the receiver as its context; the caller frees
 * it (weight_transport_model_receiver_free) after the adapter. */
struct weight_transport_model_receiver;
struct json_t;
struct duel_error;
struct model;
int cli_snapshot_receiver_open(const struct json_t *root, const char *source,
                               const char *redis_host, int redis_port,
                               struct weight_transport_model_receiver **out,
                               struct duel_error *err);
int cli_snapshot_receiver_load(void *ctx, long long version, const char *dir, struct model **out,
                               struct duel_error *err);
/* The receiver's transport kind ("cuda_ipc"), NULL for none. */
const char *cli_snapshot_receiver_via(const struct weight_transport_model_receiver *r);

/* A configuration's engine.features (cmd_serve.c; duel serve, duel sim and the sweep read it
 * alike): *policy true for "policy" (the serving snapshot's own hidden states), false for
 * "reference"; DUEL_EINVAL naming the key otherwise. */
int cli_engine_policy_features(const struct json_t *root, bool *policy, struct duel_error *err);

/* Subcommands: argv[0] is the first argument after the command name. */
int cmd_info(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
/* cmd_train.c and cmd_tokenizer.c (owned by the trainer) */
int cmd_pretrain(int argc, char **argv);
int cmd_sft(int argc, char **argv);
int cmd_dpo(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);
/* cmd_bench_train.c: `duel bench train` (cmd_bench.c dispatches to it) */
int bench_train(int argc, char **argv);

#endif
