/* cli_options.c: the table-driven command-line parser and help printer (cli.h). Every option a
 * command accepts is one row of its table, so parsing, range checks and --help cannot drift
 * apart. Numbers are parsed strictly: the whole value must be a number, finite, and in range. */
#include "cli.h"
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int cli_usage_error(const cli_command *cmd, const char *fmt, ...) {
    fprintf(stderr, "duel %s: ", cmd->name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see 'duel %s --help')\n", cmd->name);
    return CLI_EXIT_USAGE;
}

void cli_print_help(const cli_command *cmd, FILE *out) {
    fprintf(out, "usage: duel %s %s\n\n%s\n", cmd->name, cmd->synopsis, cmd->description);
    fprintf(out, "\noptions:\n");
    for (size_t i = 0; i < cmd->n_options; i++) {
        const cli_option *o = &cmd->options[i];
        char left[64];
        if (o->metavar) snprintf(left, sizeof left, "%s %s", o->name, o->metavar);
        else snprintf(left, sizeof left, "%s", o->name);
        fprintf(out, "  %-24s %s\n", left, o->help);
    }
    fprintf(out, "  %-24s %s\n", "--help, -h", "print this help and exit");
}

static const cli_option *find_option(const cli_command *cmd, const char *name, size_t len) {
    for (size_t i = 0; i < cmd->n_options; i++) {
        const char *n = cmd->options[i].name;
        if (strlen(n) == len && strncmp(n, name, len) == 0) return &cmd->options[i];
    }
    return NULL;
}

static int range_error(const cli_command *cmd, const cli_option *o, const char *value) {
    char lo[32], hi[32];
    snprintf(lo, sizeof lo, "%.15g", o->min);
    snprintf(hi, sizeof hi, "%.15g", o->max);
    return cli_usage_error(cmd, "%s must be %s in %s%s, %s], got '%s'", o->name,
                           o->kind == CLI_OPT_INT ? "an integer" : "a number",
                           o->min_exclusive ? "(" : "[", lo, hi, value);
}

static int set_value(const cli_command *cmd, const cli_option *o, const char *value) {
    switch (o->kind) {
    case CLI_OPT_FLAG: break; /* handled by the caller */
    case CLI_OPT_STRING: *(const char **)o->dest = value; break;
    case CLI_OPT_INT: {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (!*value || *end || errno) return range_error(cmd, o, value);
        if ((double)v < o->min || (double)v > o->max || (o->min_exclusive && (double)v == o->min))
            return range_error(cmd, o, value);
        *(long long *)o->dest = v;
        break;
    }
    case CLI_OPT_DOUBLE: {
        char *end = NULL;
        errno = 0;
        double v = strtod(value, &end);
        if (!*value || *end || errno || !isfinite(v)) return range_error(cmd, o, value);
        if (v < o->min || v > o->max || (o->min_exclusive && v == o->min))
            return range_error(cmd, o, value);
        *(double *)o->dest = v;
        break;
    }
    }
    if (o->given) *o->given = true;
    return CLI_EXIT_OK;
}

int cli_parse(const cli_command *cmd, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            cli_print_help(cmd, stdout);
            return -1;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return cli_usage_error(cmd, "unexpected argument '%s'", arg);
        const char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const cli_option *o = find_option(cmd, arg, name_len);
        if (!o) return cli_usage_error(cmd, "unknown option '%.*s'", (int)name_len, arg);
        if (o->kind == CLI_OPT_FLAG) {
            if (eq) return cli_usage_error(cmd, "%s takes no value", o->name);
            *(bool *)o->dest = true;
            if (o->given) *o->given = true;
            continue;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= argc) return cli_usage_error(cmd, "%s needs a value (%s)", o->name,
                                                      o->metavar ? o->metavar : "value");
            value = argv[++i];
        }
        int rc = set_value(cmd, o, value);
        if (rc) return rc;
    }
    return CLI_EXIT_OK;
}

int cli_parse_with_sets(const cli_command *cmd, int argc, char **argv, const char **sets, size_t cap,
                        size_t *n_sets) {
    duel_error err = {0};
    if (duel_config_take_sets(&argc, argv, sets, cap, n_sets, &err))
        return cli_usage_error(cmd, "%s", err.message);
    return cli_parse(cmd, argc, argv);
}
