/* cmd_rollout.c: `duel rollout status|set|weight|pause|resume|promote|abort` and
 * `duel arena ratings`: the A/B rollout of snapshots (docs/SERVING.md, "Rollouts") for operators
 * and scripts. Every change goes through gateway/rollout_store.h, the code the admin API uses:
 * the whole resulting spec checked (rollout.max_arms, the registered snapshots), written with its
 * duel:audit entry (who: "cli:USER" or --as) and announced on duel:notify. Exit codes: 0 done,
 * 1 Redis or the configuration failed, 2 the command line was wrong or the change was refused
 * (the message names the field; nothing was written). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena_ratings.h"
#include "cli_admin.h"
#include "config.h"
#include "knob_store.h"
#include "rollout_store.h"

int cmd_rollout(int argc, char **argv);
int cmd_arena(int argc, char **argv);

#define MAX_OPERANDS 4
#define SPEC_FILE_MAX (ROLLOUT_MAX_TEXT + 1)

static void print_json(json_t *o) {
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    printf("%s\n", text ? text : "null");
    free(text);
}

static void print_spec(const rollout_spec *s) {
    printf("revision %lld, status %s, stable arm %s, arena_fraction %g\n", s->revision,
           rollout_status_name(s->status), s->arms[s->stable].name, s->arena_fraction);
    printf("%-20s %-10s %s\n", "arm", "snapshot", "weight");
    for (int i = 0; i < s->n_arms; i++) {
        char snap[24];
        if (s->arms[i].snapshot == ROLLOUT_SNAPSHOT_LATEST) snprintf(snap, sizeof snap, "latest");
        else if (s->arms[i].snapshot == ROLLOUT_SNAPSHOT_BASE) snprintf(snap, sizeof snap, "base");
        else snprintf(snap, sizeof snap, "%lld", s->arms[i].snapshot);
        printf("%-20s %-10s %d%%\n", s->arms[i].name, snap, s->arms[i].weight);
    }
    if (s->n_steps) printf("step %d of %d\n", s->step, s->n_steps);
}

/* A file's text (path "-": stdin), at most ROLLOUT_MAX_TEXT bytes; NULL with a message. */
static char *read_spec(const char *path) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "duel rollout set: %s: cannot open\n", path);
        return NULL;
    }
    char *text = malloc(SPEC_FILE_MAX + 1);
    size_t n = text ? fread(text, 1, SPEC_FILE_MAX, f) : 0;
    if (f != stdin) fclose(f);
    if (!text || n >= SPEC_FILE_MAX) {
        fprintf(stderr, "duel rollout set: %s: over %d bytes\n", path, ROLLOUT_MAX_TEXT);
        free(text);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

static int rollout_verb(const char *verb, int argc, char **argv) {
    cli_admin_options o = {0};
    const cli_option options[] = {
        CLI_ADMIN_OPTIONS(o),
        {"--as", CLI_OPT_STRING, &o.who, "NAME", "who the audit log names (default cli:$USER)", 0,
         0, false, NULL},
    };
    char name[32], synopsis[160];
    snprintf(name, sizeof name, "rollout %s", verb);
    const char *operands_doc = strcmp(verb, "set") == 0       ? "FILE|-"
                               : strcmp(verb, "weight") == 0  ? "ARM PERCENT"
                               : strcmp(verb, "promote") == 0 ? "[ARM]"
                                                              : "";
    snprintf(synopsis, sizeof synopsis, "%s [--redis HOST:PORT] [--config FILE] [--json] [--as NAME]",
             operands_doc);
    const cli_command cmd = {name, synopsis,
                             "See 'duel rollout --help' and docs/SERVING.md (\"Rollouts\").",
                             options, sizeof options / sizeof options[0]};
    const char *sets[64], *ops[MAX_OPERANDS];
    size_t n_sets = 0;
    int n_ops = 0;
    duel_error err = {0};
    if (duel_config_take_sets(&argc, argv, sets, 64, &n_sets, &err))
        return cli_usage_error(&cmd, "%s", err.message);
    int rc = cli_take_operands(&cmd, &argc, argv, ops, MAX_OPERANDS, &n_ops);
    if (!rc) rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    bool status = strcmp(verb, "status") == 0;
    rollout_change change = {0};
    if (!status && rollout_action_parse(verb, &change.action))
        return cli_usage_error(&cmd, "unknown verb");
    int wanted = status ? 0 : change.action == ROLLOUT_ACTION_SET ? 1
                          : change.action == ROLLOUT_ACTION_WEIGHT ? 2 : 0;
    if (change.action == ROLLOUT_ACTION_PROMOTE && n_ops <= 1) wanted = n_ops;
    if (n_ops != wanted) return cli_usage_error(&cmd, "expected %s", operands_doc[0] ? operands_doc : "no operands");
    char *spec_text = NULL;
    if (!status && change.action == ROLLOUT_ACTION_SET && !(spec_text = read_spec(ops[0])))
        return CLI_EXIT_FAILURE;
    change.spec_text = spec_text;
    if (change.action == ROLLOUT_ACTION_WEIGHT || change.action == ROLLOUT_ACTION_PROMOTE)
        change.arm = n_ops ? ops[0] : NULL;
    if (change.action == ROLLOUT_ACTION_WEIGHT) {
        char *end;
        long w = strtol(ops[1], &end, 10);
        if (*end || end == ops[1] || w < 0 || w > ROLLOUT_WEIGHT_TOTAL)
            return cli_usage_error(&cmd, "PERCENT must be an integer in 0..%d", ROLLOUT_WEIGHT_TOTAL);
        change.weight = (int)w;
    }
    cli_admin a;
    if ((rc = cli_admin_open(&cmd, o.config, sets, n_sets, o.redis, &a))) {
        free(spec_text);
        return rc;
    }
    rollout_spec *spec = calloc(1, sizeof *spec);
    bool present = false;
    json_t *audit = NULL;
    if (!spec) {
        rc = duel_error_set(&err, DUEL_ENOMEM, "out of memory");
    } else if (status) {
        rc = rollout_store_read(a.rc, "duel:", spec, &present, &err);
    } else {
        char who[KNOB_STORE_WHO_MAX];
        if (o.who) snprintf(who, sizeof who, "%s", o.who);
        else cli_admin_default_who(who, sizeof who);
        long long max = json_integer_value(
            json_object_get(duel_config_section(a.config, "rollout"), "max_arms"));
        rc = max < 1 || max > ROLLOUT_MAX_ARMS
                 ? duel_error_set(&err, DUEL_EINVAL, "rollout.max_arms = %lld: not in 1..%d", max,
                                  ROLLOUT_MAX_ARMS)
                 : rollout_store_change(a.rc, "duel:", who, &change, (int)max, spec, &audit, &err);
        present = true;
    }
    cli_admin_close(&a);
    free(spec_text);
    if (rc) {
        free(spec);
        json_decref(audit);
        if (rc == DUEL_EINVAL || rc == DUEL_EFORMAT) return cli_usage_error(&cmd, "%s", err.message);
        fprintf(stderr, "duel %s: %s\n", cmd.name, err.message);
        return CLI_EXIT_FAILURE;
    }
    if (o.json) {
        json_t *out = json_pack("{s:o}", "rollout", present ? rollout_spec_json(spec) : json_null());
        if (audit) json_object_set(out, "audit", audit);
        print_json(out);
        json_decref(out);
    } else if (!present) {
        printf("no rollout (duel:rollout is empty): every duel follows the latest snapshot\n");
    } else {
        print_spec(spec);
    }
    json_decref(audit);
    free(spec);
    return CLI_EXIT_OK;
}

int cmd_rollout(int argc, char **argv) {
    const char *usage =
        "usage: duel rollout status|set|weight|pause|resume|promote|abort [options]\n\n"
        "The A/B rollout of snapshots in duel:rollout (docs/SERVING.md, \"Rollouts\"). Each change\n"
        "is checked as a whole (weights summing to 100, at most rollout.max_arms arms, registered\n"
        "snapshots), audited in duel:audit and announced on duel:notify; a refused one writes\n"
        "nothing (exit 2, the message names the field):\n"
        "  status                   the spec in effect (or: none, serving follows the latest)\n"
        "  set FILE|-               replace the spec with FILE's JSON (- reads stdin)\n"
        "  weight ARM PERCENT       set ARM's weight; the stable arm takes the rest\n"
        "  pause | resume           stop or continue the steps (status paused / progressing)\n"
        "  promote [ARM]            ARM (default: the canary) becomes the stable arm at 100 %\n"
        "  abort                    every arm but the stable one to 0 %, status aborted\n"
        "Options: --redis HOST:PORT, --config FILE, --set K=V, --json, --as NAME.\n";
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    rollout_action action;
    if (strcmp(argv[0], "status") != 0 && rollout_action_parse(argv[0], &action)) {
        fprintf(stderr, "duel rollout: unknown verb '%s'\n%s", argv[0], usage);
        return CLI_EXIT_USAGE;
    }
    return rollout_verb(argv[0], argc - 1, argv + 1);
}

static int arena_ratings(int argc, char **argv) {
    cli_admin_options o = {0};
    long long rounds = ARENA_RATINGS_ROUNDS, seed = ARENA_RATINGS_SEED;
    const cli_option options[] = {
        CLI_ADMIN_OPTIONS(o),
        {"--rounds", CLI_OPT_INT, &rounds, "N", "bootstrap rounds", 1, 10000, false, NULL},
        {"--seed", CLI_OPT_INT, &seed, "S", "the bootstrap's seed", 0, 1e15, false, NULL},
    };
    const cli_command cmd = {
        "arena ratings", "[--redis HOST:PORT] [--config FILE] [--json] [--rounds N] [--seed S]",
        "Bradley-Terry ratings of the arms from the arena votes in duel:prefs, as Chatbot Arena\n"
        "publishes its leaderboard: ties and both_bad count half a win; 400 r + 1000 (mean 1000);\n"
        "95 % intervals from --rounds bootstrap resamples drawn from --seed (the same votes and\n"
        "seed give the same intervals); rank = 1 + the arms whose lower bound is above this arm's\n"
        "upper bound.",
        options, sizeof options / sizeof options[0]};
    const char *sets[64];
    size_t n_sets = 0;
    duel_error err = {0};
    int rc = cli_parse_with_sets(&cmd, argc, argv, sets, 64, &n_sets);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    cli_admin a;
    if ((rc = cli_admin_open(&cmd, o.config, sets, n_sets, o.redis, &a))) return rc;
    arena_tally t = {0};
    rc = rollout_store_arena(a.rc, "duel:", &t, &err);
    cli_admin_close(&a);
    json_t *board = rc ? NULL : arena_ratings_json(&t, (int)rounds, (uint64_t)seed, &err);
    arena_tally_free(&t);
    if (!board) {
        fprintf(stderr, "duel arena ratings: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    if (o.json) {
        print_json(board);
    } else {
        printf("%-5s %-20s %8s %19s %8s %8s\n", "rank", "arm", "rating", "95% interval", "battles",
               "score");
        size_t i;
        json_t *arm;
        json_array_foreach(json_object_get(board, "arms"), i, arm) {
            printf("%-5lld %-20s %8.1f [%7.1f, %7.1f] %8lld %8.1f\n",
                   (long long)json_integer_value(json_object_get(arm, "rank")),
                   json_string_value(json_object_get(arm, "name")),
                   json_real_value(json_object_get(arm, "rating")),
                   json_real_value(json_object_get(arm, "lower")),
                   json_real_value(json_object_get(arm, "upper")),
                   (long long)json_integer_value(json_object_get(arm, "battles")),
                   json_real_value(json_object_get(arm, "score")));
        }
        if (json_array_size(json_object_get(board, "arms")) == 0)
            printf("no arena votes in duel:prefs yet\n");
        long long skipped = json_integer_value(json_object_get(board, "skipped"));
        if (skipped)
            fprintf(stderr, "duel arena ratings: %lld arena votes skipped (last: %s)\n", skipped,
                    json_string_value(json_object_get(board, "last_skip")));
    }
    json_decref(board);
    return CLI_EXIT_OK;
}

int cmd_arena(int argc, char **argv) {
    const char *usage = "usage: duel arena ratings [options]\n\n"
                        "  ratings   Bradley-Terry ratings of the arms from duel:prefs' arena votes\n"
                        "'duel arena ratings --help' describes its options.\n";
    static const cli_verb verbs[] = {{"ratings", arena_ratings}};
    return cli_run_verb("arena", usage, verbs, 1, argc, argv);
}
