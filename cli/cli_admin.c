/* cli_admin.c: the configuration, Redis and operands of the operators' commands (see
 * cli_admin.h). */
#include "cli_admin.h"

#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "config.h"
#include "redis_link.h"

extern char **environ;

#define ADMIN_TIMEOUT_MS 5000 /* connect and command timeout */

int cli_take_operands(const cli_command *cmd, int *argc, char **argv, const char **operands,
                      int cap, int *n) {
    int out = 0;
    *n = 0;
    bool options_done = false;
    for (int i = 0; i < *argc; i++) {
        const char *a = argv[i];
        bool option = !options_done && strncmp(a, "--", 2) == 0 && a[2] != '\0';
        if (!options_done && strcmp(a, "--") == 0) {
            options_done = true;
            continue;
        }
        if (!option && !(strcmp(a, "-h") == 0 && !options_done)) {
            if (*n >= cap) return cli_usage_error(cmd, "too many arguments (at most %d)", cap);
            operands[(*n)++] = a;
            continue;
        }
        argv[out++] = argv[i];
        /* an option that takes a value as the next argument keeps it */
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        for (size_t k = 0; !eq && k < cmd->n_options; k++) {
            const cli_option *o = &cmd->options[k];
            if (strlen(o->name) == len && strncmp(o->name, a, len) == 0 && o->kind != CLI_OPT_FLAG &&
                i + 1 < *argc) {
                argv[out++] = argv[++i];
                break;
            }
        }
    }
    *argc = out;
    argv[out] = NULL;
    return CLI_EXIT_OK;
}

int cli_admin_open(const cli_command *cmd, const char *config_path, const char *const *sets,
                   size_t n_sets, const char *redis, cli_admin *a) {
    memset(a, 0, sizeof *a);
    duel_error err = {0};
    if (duel_config_load(config_path, sets, n_sets, (const char *const *)environ, &a->config, NULL,
                         &err)) {
        fprintf(stderr, "duel %s: %s\n", cmd->name, err.message);
        return n_sets > 0 && strncmp(err.message, "--set", 5) == 0 ? CLI_EXIT_USAGE
                                                                  : CLI_EXIT_FAILURE;
    }
    if (duel_knobs_defaults(a->config, NULL, &a->defaults, &err)) {
        fprintf(stderr, "duel %s: %s\n", cmd->name, err.message);
        cli_admin_close(a);
        return CLI_EXIT_FAILURE;
    }
    const json_t *r = duel_config_section(a->config, "redis");
    snprintf(a->host, sizeof a->host, "%s", json_string_value(json_object_get(r, "host")));
    a->port = (long)json_integer_value(json_object_get(r, "port"));
    if (redis && duel_config_parse_host_port("--redis", redis, 1, a->host, sizeof a->host, &a->port,
                                             &err)) {
        cli_admin_close(a);
        return cli_usage_error(cmd, "%s", err.message);
    }
    /* The master (redis.sentinels when configured), authenticated from the environment. */
    redis_link_config link;
    if (redis_link_config_read(&link, r, config_path ? config_path : "config", &err)) {
        fprintf(stderr, "duel %s: %s\n", cmd->name, err.message);
        cli_admin_close(a);
        return CLI_EXIT_FAILURE;
    }
    if (redis) link.num_sentinels = 0; /* --redis names the server itself */
    a->rc = redis_link_connect(&link, a->host, (int)a->port, ADMIN_TIMEOUT_MS, NULL, 0, &err);
    if (!a->rc) {
        fprintf(stderr, "duel %s: %s\n", cmd->name, err.message);
        cli_admin_close(a);
        return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK;
}

void cli_admin_close(cli_admin *a) {
    if (a->rc) redisFree(a->rc);
    json_decref(a->config);
    memset(a, 0, sizeof *a);
}

void cli_admin_default_who(char *out, size_t cap) {
    const char *user = getenv("USER");
    struct passwd *pw = user && *user ? NULL : getpwuid(getuid());
    snprintf(out, cap, "cli:%.48s", user && *user ? user : pw ? pw->pw_name : "unknown");
}

int cli_run_verb(const char *command, const char *usage, const cli_verb *verbs, size_t n_verbs,
                 int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    for (size_t i = 0; i < n_verbs; i++)
        if (strcmp(argv[0], verbs[i].name) == 0) return verbs[i].run(argc - 1, argv + 1);
    fprintf(stderr, "duel %s: unknown verb '%s'\n%s", command, argv[0], usage);
    return CLI_EXIT_USAGE;
}
