/* cmd_knobs.c: `duel knobs list|get|set|reset`: the live knobs (common/knobs.h) for scripts and
 * operators. list prints the table (also as the Markdown of docs/CONFIG.md); get reads duel:knobs
 * over the configuration's defaults; set and reset change it through gateway/knob_store.h, the
 * code the admin API uses: checked all or nothing, written with its audit entry (who: "cli:USER")
 * and announced on duel:notify, so every `duel serve` takes it at its next duel and `duel train`
 * before its next batch. Exit codes: 0 done, 1 Redis or the configuration failed, 2 the command
 * line was wrong (a refused knob value included: the message names the knob and its range). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_admin.h"
#include "config.h"
#include "knob_store.h"

int cmd_knobs(int argc, char **argv);

#define MAX_OPERANDS 64

static int knobs_list(int argc, char **argv) {
    bool markdown = false, json = false;
    const cli_option options[] = {
        {"--markdown", CLI_OPT_FLAG, &markdown, NULL, "the table as docs/CONFIG.md shows it", 0, 0,
         false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL, "the table as one JSON array (what /api/knobs lists)",
         0, 0, false, NULL},
    };
    const cli_command cmd = {"knobs list", "[--markdown | --json]",
                             "Prints the knob table: name, who reads it, type, allowed values, the "
                             "default (config/default.json) and its config key.",
                             options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (markdown && json) return cli_usage_error(&cmd, "--markdown and --json exclude each other");
    if (markdown) {
        char *md = duel_knobs_markdown();
        if (!md) return CLI_EXIT_FAILURE;
        fputs(md, stdout);
        free(md);
        return CLI_EXIT_OK;
    }
    json_t *arr = duel_knobs_describe(NULL);
    if (!arr) return CLI_EXIT_FAILURE;
    if (json) {
        char *text = json_dumps(arr, JSON_COMPACT);
        if (text) printf("%s\n", text);
        free(text);
    } else {
        printf("%-22s %-8s %-8s %-12s %s\n", "knob", "read by", "type", "default", "allowed");
        for (int k = 0; k < DUEL_KNOB_COUNT; k++) {
            const duel_knob_spec *s = &duel_knobs[k];
            json_t *o = json_array_get(arr, (size_t)k);
            char allowed[160];
            if (s->type == DUEL_KNOB_CHOICE) snprintf(allowed, sizeof allowed, "%s", s->choices);
            else snprintf(allowed, sizeof allowed, "%c%.10g, %.10g]", s->min_exclusive ? '(' : '[', s->min, s->max);
            printf("%-22s %-8s %-8s %-12s %s\n", s->name, duel_knob_readers_name(s->readers),
                   json_string_value(json_object_get(o, "type")),
                   json_string_value(json_object_get(o, "default")), allowed);
        }
    }
    json_decref(arr);
    return CLI_EXIT_OK;
}

static int knobs_get(int argc, char **argv) {
    cli_admin_options o = {0};
    const cli_option options[] = {CLI_ADMIN_OPTIONS(o)};
    const cli_command cmd = {
        "knobs get", "[NAME]... [--redis HOST:PORT] [--config FILE] [--json]",
        "Prints the knobs in effect: duel:knobs over the configuration's defaults. A '*' marks the\n"
        "knobs the hash sets; a value in the hash the table refuses is reported and ignored, as\n"
        "the servers ignore it. NAMEs limit the list.",
        options, sizeof options / sizeof options[0]};
    const char *sets[64], *names[MAX_OPERANDS];
    size_t n_sets = 0;
    int n_names = 0;
    duel_error err = {0};
    if (duel_config_take_sets(&argc, argv, sets, 64, &n_sets, &err))
        return cli_usage_error(&cmd, "%s", err.message);
    int rc = cli_take_operands(&cmd, &argc, argv, names, MAX_OPERANDS, &n_names);
    if (!rc) rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    for (int i = 0; i < n_names; i++)
        if (duel_knob_index(names[i]) < 0) return cli_usage_error(&cmd, "unknown knob \"%s\"", names[i]);
    cli_admin a;
    if ((rc = cli_admin_open(&cmd, o.config, sets, n_sets, o.redis, &a))) return rc;
    duel_knob_values values;
    bool set[DUEL_KNOB_COUNT];
    knob_store_bad bad;
    if (knob_store_read(a.rc, "duel:", &a.defaults, &values, set, &bad, &err)) {
        fprintf(stderr, "duel knobs get: %s\n", err.message);
        cli_admin_close(&a);
        return CLI_EXIT_FAILURE;
    }
    json_t *out = json_pack("{s:[], s:[]}", "knobs", "ignored");
    for (int k = 0; k < DUEL_KNOB_COUNT; k++) {
        bool wanted = n_names == 0;
        for (int i = 0; i < n_names; i++) wanted |= strcmp(names[i], duel_knobs[k].name) == 0;
        if (!wanted) continue;
        json_array_append_new(json_object_get(out, "knobs"),
                              json_pack("{s:s, s:s, s:s, s:b, s:s}", "name", duel_knobs[k].name,
                                        "value", values.v[k].text, "default", a.defaults.v[k].text,
                                        "set", set[k], "read_by",
                                        duel_knob_readers_name(duel_knobs[k].readers)));
    }
    for (int i = 0; i < bad.count; i++)
        json_array_append_new(json_object_get(out, "ignored"), json_string(bad.message[i]));
    if (o.json) {
        char *text = json_dumps(out, JSON_COMPACT);
        if (text) printf("%s\n", text);
        free(text);
    } else {
        printf("%-22s %-14s %-12s %s\n", "knob", "value", "default", "read by");
        size_t i;
        json_t *k;
        json_array_foreach(json_object_get(out, "knobs"), i, k) {
            char value[64];
            snprintf(value, sizeof value, "%s%s", json_string_value(json_object_get(k, "value")),
                     json_is_true(json_object_get(k, "set")) ? " *" : "");
            printf("%-22s %-14s %-12s %s\n", json_string_value(json_object_get(k, "name")), value,
                   json_string_value(json_object_get(k, "default")),
                   json_string_value(json_object_get(k, "read_by")));
        }
        for (int b = 0; b < bad.count; b++) fprintf(stderr, "duel knobs get: duel:knobs: %s\n", bad.message[b]);
    }
    json_decref(out);
    cli_admin_close(&a);
    return CLI_EXIT_OK;
}

/* set (pairs: NAME VALUE ...) or reset (NAME ...). */
static int knobs_change(int argc, char **argv, bool reset) {
    cli_admin_options o = {0};
    const cli_option options[] = {
        CLI_ADMIN_OPTIONS(o),
        {"--as", CLI_OPT_STRING, &o.who, "NAME", "who the audit log names (default cli:$USER)", 0,
         0, false, NULL},
    };
    const cli_command set_cmd = {
        "knobs set", "NAME VALUE [NAME VALUE]... [--redis HOST:PORT] [--config FILE] [--json]",
        "Changes knobs, all or nothing: every value is checked against the knob table and the\n"
        "set against the cross-knob rules (arena needs an even M); a refused change writes\n"
        "nothing and names the knob and its allowed values (exit 2). An accepted one is written\n"
        "to duel:knobs with its entry in duel:audit and announced on duel:notify: every duel\n"
        "serve uses it from its next duel, duel train from its next batch. --json prints the\n"
        "audit entry.",
        options, sizeof options / sizeof options[0]};
    const cli_command reset_cmd = {
        "knobs reset", "NAME... [--redis HOST:PORT] [--config FILE] [--json]",
        "Removes knobs from duel:knobs: each goes back to its config default (audited, all or\n"
        "nothing, like set).",
        options, sizeof options / sizeof options[0]};
    const cli_command *cmd = reset ? &reset_cmd : &set_cmd;
    const char *sets[64], *ops[MAX_OPERANDS];
    size_t n_sets = 0;
    int n_ops = 0;
    duel_error err = {0};
    if (duel_config_take_sets(&argc, argv, sets, 64, &n_sets, &err))
        return cli_usage_error(cmd, "%s", err.message);
    int rc = cli_take_operands(cmd, &argc, argv, ops, MAX_OPERANDS, &n_ops);
    if (!rc) rc = cli_parse(cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (n_ops == 0 || (!reset && n_ops % 2))
        return cli_usage_error(cmd, reset ? "name at least one knob" : "expected NAME VALUE pairs");
    const char *names[MAX_OPERANDS], *texts[MAX_OPERANDS];
    size_t n = 0;
    for (int i = 0; i < n_ops; i += reset ? 1 : 2) {
        names[n] = ops[i];
        texts[n++] = reset ? NULL : ops[i + 1];
    }
    cli_admin a;
    if ((rc = cli_admin_open(cmd, o.config, sets, n_sets, o.redis, &a))) return rc;
    char who[KNOB_STORE_WHO_MAX];
    if (o.who) snprintf(who, sizeof who, "%s", o.who);
    else cli_admin_default_who(who, sizeof who);
    json_t *audit = NULL;
    rc = knob_store_change(a.rc, "duel:", who, &a.defaults, names, texts, n, NULL, &audit, &err);
    cli_admin_close(&a);
    if (rc) {
        json_decref(audit);
        if (rc == DUEL_EINVAL) return cli_usage_error(cmd, "%s", err.message);
        fprintf(stderr, "duel %s: %s\n", cmd->name, err.message);
        return CLI_EXIT_FAILURE;
    }
    if (o.json) {
        char *text = audit ? json_dumps(audit, JSON_COMPACT) : NULL;
        printf("%s\n", text ? text : "{}");
        free(text);
    } else {
        json_t *before = json_object_get(audit, "before"), *after = json_object_get(audit, "after");
        for (size_t i = 0; i < n; i++) {
            const json_t *b = json_object_get(before, names[i]), *x = json_object_get(after, names[i]);
            printf("%s: %s -> %s\n", names[i], json_string_value(b) ? json_string_value(b) : "?",
                   json_is_null(x) ? "(default)" : json_string_value(x) ? json_string_value(x) : "?");
        }
    }
    json_decref(audit);
    return CLI_EXIT_OK;
}

int cmd_knobs(int argc, char **argv) {
    const char *usage =
        "usage: duel knobs list|get|set|reset [options]\n\n"
        "The live knobs (docs/CONFIG.md, \"Live knobs\"):\n"
        "  list                     the table: name, read by, type, allowed values, default\n"
        "  get [NAME]...            the knobs in effect (duel:knobs over the defaults)\n"
        "  set NAME VALUE [...]     change knobs, all or nothing, audited\n"
        "  reset NAME...            back to the config defaults, audited\n"
        "'duel knobs <verb> --help' describes each one's options.\n";
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    if (strcmp(argv[0], "list") == 0) return knobs_list(argc - 1, argv + 1);
    if (strcmp(argv[0], "get") == 0) return knobs_get(argc - 1, argv + 1);
    if (strcmp(argv[0], "set") == 0) return knobs_change(argc - 1, argv + 1, false);
    if (strcmp(argv[0], "reset") == 0) return knobs_change(argc - 1, argv + 1, true);
    fprintf(stderr, "duel knobs: unknown verb '%s'\n%s", argv[0], usage);
    return CLI_EXIT_USAGE;
}
