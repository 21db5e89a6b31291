/* main.c: the `duel` executable. A table of subcommands, each with a one-line summary and its
 * own parser and --help (cli.h); `duel --help` lists them. Exit codes: 0 ok, 1 the work failed,
 * 2 the command line was wrong. On a CPU newer than the OpenBLAS library, main first re-executes
 * itself with OPENBLAS_CORETYPE set (blas_core.c). */
#include <stdio.h>
#include <string.h>

#include "blas_core.h"
#include "cli.h"
#include "version.h"

typedef struct cli_subcommand {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} cli_subcommand;

int cmd_serve(int argc, char **argv); /* cmd_serve.c (gateway) */
int cmd_train_service(int argc, char **argv); /* cmd_train_service.c (online trainer) */
int cmd_knobs(int argc, char **argv); /* cmd_knobs.c (live knobs) */
int cmd_ops(int argc, char **argv);   /* cmd_ops.c (operators' status) */
int cmd_sim(int argc, char **argv);     /* cmd_sim.c (simulated users) */
int cmd_rollout(int argc, char **argv); /* cmd_rollout.c (A/B rollout of snapshots) */
int cmd_arena(int argc, char **argv);   /* cmd_rollout.c (arena ratings) */

static const cli_subcommand SUBCOMMANDS[] = {
    {"info", "version, backends built in (cpu, cuda) and whether a GPU answers", cmd_info},
    {"generate", "generate text from a prompt, or chat, with a local model", cmd_generate},
    {"bench", "benchmarks: forward pass speed, machine limits (sgemm, memory bandwidth)",
     cmd_bench},
    {"pretrain", "train a language model on text (next-token loss), with checkpoints and resume",
     cmd_pretrain},
    {"sft", "fine-tune on prompt/response JSONL (loss on the response), with resume", cmd_sft},
    {"dpo", "offline DPO/IPO/SLiC on a preference JSONL file (prompt, chosen, rejected)", cmd_dpo},
    {"tokenizer", "tokenizer tools: 'tokenizer train' learns a byte-level BPE tokenizer.json",
     cmd_tokenizer},
    {"serve", "the chat server: web page, duel.v1 websocket, votes into Redis", cmd_serve},
    {"train", "the online trainer: votes from Redis -> ERM and policy updates, snapshots",
     cmd_train_service},
    {"knobs", "live knobs: list the table, get the values in effect, set or reset (audited)",
     cmd_knobs},
    {"ops", "'ops status': instances, versions, regret, trainer lag, last changes (from Redis)",
     cmd_ops},
    {"sim", "simulated users: in-process runs, strategy sweeps (CSV, plots), load over websockets",
     cmd_sim},
    {"rollout", "A/B rollout of snapshots: status, set, weight, pause, resume, promote, abort",
     cmd_rollout},
    {"arena", "'arena ratings': Bradley-Terry ratings of the arms from the arena votes", cmd_arena},
};
#define N_SUBCOMMANDS (sizeof SUBCOMMANDS / sizeof SUBCOMMANDS[0])

static void print_help(FILE *out) {
    fprintf(out,
            "usage: duel <command> [options]\n\n"
            "duel: a chat model server that learns from pairwise votes (see README.md).\n\n"
            "commands:\n");
    for (size_t i = 0; i < N_SUBCOMMANDS; i++)
        fprintf(out, "  %-10s %s\n", SUBCOMMANDS[i].name, SUBCOMMANDS[i].summary);
    fprintf(out,
            "\noptions:\n"
            "  --help, -h  print this help and exit\n"
            "  --version   print the version and exit\n\n"
            "'duel <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv) {
    blas_core_fix(argv); /* returns at once unless OpenBLAS fell back to generic kernels */
    if (argc < 2) {
        print_help(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        if (strcmp(name, "help") == 0 && argc > 2) {
            /* `duel help generate` is `duel generate --help`. */
            for (size_t i = 0; i < N_SUBCOMMANDS; i++) {
                if (strcmp(argv[2], SUBCOMMANDS[i].name) == 0) {
                    char *help_argv[] = {"--help", NULL};
                    return SUBCOMMANDS[i].run(1, help_argv);
                }
            }
            fprintf(stderr, "duel: unknown command '%s' (see 'duel --help')\n", argv[2]);
            return CLI_EXIT_USAGE;
        }
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0) {
        printf("duel %s\n", duel_version());
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < N_SUBCOMMANDS; i++)
        if (strcmp(name, SUBCOMMANDS[i].name) == 0) return SUBCOMMANDS[i].run(argc - 2, argv + 2);
    fprintf(stderr, "duel: unknown command '%s' (see 'duel --help')\n", name);
    return CLI_EXIT_USAGE;
}
