/* cli_admin.h: what the operators' commands (`duel knobs`, `duel ops`) share: the configuration
 * (--config, --set, DUEL_* as the servers assemble it), the Redis it names (or --redis), the knob
 * defaults it gives, and the operands a command takes besides its options. Only cli/ uses it. */
#ifndef DUEL_CLI_ADMIN_H
#define DUEL_CLI_ADMIN_H

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "cli.h"
#include "knobs.h"

typedef struct cli_admin {
    json_t *config;
    char host[256];
    long port;
    redisContext *rc;
    duel_knob_values defaults; /* the knobs' defaults from config */
} cli_admin;

/* The options every operators' command takes (a cli_option table's entries). */
typedef struct cli_admin_options {
    const char *redis, *config, *set_doc, *who;
    bool json;
} cli_admin_options;

#define CLI_ADMIN_OPTIONS(o)                                                                       \
    {"--redis", CLI_OPT_STRING, &(o).redis, "HOST:PORT",                                           \
     "Redis (default redis.host:redis.port of the configuration, or DUEL_REDIS)", 0, 0, false,     \
     NULL},                                                                                        \
        {"--config", CLI_OPT_STRING, &(o).config, "FILE",                                          \
         "configuration the defaults come from (default: the built-in config/default.json)", 0, 0, \
         false, NULL},                                                                             \
        {"--set", CLI_OPT_STRING, &(o).set_doc, "SECTION.KEY=VALUE",                               \
         "override one configuration key, repeatable", 0, 0, false, NULL},                         \
        {"--json", CLI_OPT_FLAG, &(o).json, NULL, "one JSON object on stdout", 0, 0, false, NULL}

/* An operators' command's verbs ("duel ops status", "duel arena ratings"). */
typedef struct cli_verb {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the verb's first option */
} cli_verb;

/* Runs argv[0]'s verb of command: usage to stdout for --help or -h (exit 0), to stderr when
 * there is no verb or an unknown one (exit 2, naming it). */
int cli_run_verb(const char *command, const char *usage, const cli_verb *verbs, size_t n_verbs,
                 int argc, char **argv);

/* "cli:USER": who made a change, for the audit log. */
void cli_admin_default_who(char *out, size_t cap);

/* Moves the arguments that are neither options nor their values (per cmd's table; "--" ends the
 * options) to operands[0..*n) (at most cap), leaving the options in argv for cli_parse.
 * CLI_EXIT_USAGE (printed) when there are more than cap. */
int cli_take_operands(const cli_command *cmd, int *argc, char **argv, const char **operands,
                      int cap, int *n);

/* Loads the configuration and connects to Redis (redis "HOST:PORT" wins over redis.host/port).
 * Prints the problem and returns CLI_EXIT_USAGE (a bad --set or --redis) or CLI_EXIT_FAILURE
 * (the file, Redis not answering); CLI_EXIT_OK with *a ready. */
int cli_admin_open(const cli_command *cmd, const char *config_path, const char *const *sets,
                   size_t n_sets, const char *redis, cli_admin *a);
void cli_admin_close(cli_admin *a);

#endif
