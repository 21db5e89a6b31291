/* cmd_ops.c: `duel ops status`: one screen for operators and scripts, from Redis alone (so it
 * works with any number of servers and with none running): the instances found in duel:stats
 * with their versions and whether they are healthy or stale, the window's duels, votes, R-hat,
 * ERM agreement and disagreement and time to duel (common/stats.h aggregates them exactly as
 * /api/stats does), the trainer's step and lag, the vote-to-serving latency, the knobs that
 * differ from their defaults and the last changes in duel:audit. --json prints the same as one JSON object. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_admin.h"
#include "config.h"
#include "knob_store.h"
#include "stats_store.h"
#include "timer.h"

int cmd_ops(int argc, char **argv);

#define OPS_AUDIT_LINES 5

static double num_at(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* "%.3g" and the unit after a space ("0.5 s", "62 %"; none when unit is ""), or "-" for a
 * missing figure. */
static const char *fmt(char *buf, size_t cap, double v, const char *unit) {
    if (!isfinite(v)) snprintf(buf, cap, "-");
    else snprintf(buf, cap, "%.3g%s%s", v, unit[0] ? " " : "", unit);
    return buf;
}

/* An age as the dashboard shows it: whole seconds, minutes or hours ("3 s ago", "2 min ago"). */
static const char *fmt_ago(char *buf, size_t cap, double seconds) {
    if (!isfinite(seconds)) snprintf(buf, cap, "-");
    else if (seconds < 90) snprintf(buf, cap, "%.0f s ago", seconds < 0 ? 0 : seconds);
    else if (seconds < 5400) snprintf(buf, cap, "%.0f min ago", seconds / 60);
    else snprintf(buf, cap, "%.0f h ago", seconds / 3600);
    return buf;
}

/* The largest finite value of key over the serving instances (NAN when none has it). */
static double serving_max(const json_t *instances, const char *key) {
    double worst = NAN;
    size_t i;
    const json_t *in;
    json_array_foreach(instances, i, in) {
        const char *role = json_string_value(json_object_get(in, "role"));
        if (role && strcmp(role, STATS_ROLE_SERVING) == 0) worst = fmax(worst, num_at(in, key));
    }
    return worst;
}

static void print_text(const json_t *stats, const json_t *knobs, const json_t *audit) {
    char a[32], b[32], c[32], d[32];
    const json_t *tot = json_object_get(stats, "totals");
    printf("duel ops status: the last %d minutes\n\n", (int)json_integer_value(json_object_get(stats, "window_s")) / 60);
    printf("%-34s %-8s %-8s %-11s %s\n", "instance", "role", "version", "seen", "state");
    size_t i;
    json_t *in;
    int n_instances = 0;
    json_array_foreach(json_object_get(stats, "instances"), i, in) {
        n_instances++;
        printf("%-34s %-8s %-8lld %-11s %s\n", json_string_value(json_object_get(in, "instance")),
               json_string_value(json_object_get(in, "role")),
               (long long)json_integer_value(json_object_get(in, "version")),
               fmt_ago(a, sizeof a, num_at(in, "age_s")),
               json_is_true(json_object_get(in, "stale")) ? "STALE (no entry for 3 intervals)" : "healthy");
    }
    if (!n_instances) printf("(no instance wrote to duel:stats in this window)\n");
    const json_t *votes = json_object_get(tot, "votes");
    printf("\nduels %lld   votes a %lld  b %lld  tie %lld  both_bad %lld\n",
           (long long)json_integer_value(json_object_get(tot, "duels")),
           (long long)json_integer_value(json_object_get(votes, "a")),
           (long long)json_integer_value(json_object_get(votes, "b")),
           (long long)json_integer_value(json_object_get(votes, "tie")),
           (long long)json_integer_value(json_object_get(votes, "both_bad")));
    printf("regret (R-hat) mean %s  p50 %s  p95 %s  trend %s\n", fmt(a, sizeof a, num_at(tot, "regret_mean"), ""),
           fmt(b, sizeof b, num_at(tot, "regret_p50"), ""), fmt(c, sizeof c, num_at(tot, "regret_p95"), ""),
           fmt(d, sizeof d, num_at(tot, "regret_trend_per_h"), "per h"));
    printf("ERM agreement with users %s   disagreement on the pair %s\n",
           fmt(a, sizeof a, num_at(tot, "agree") * 100, "%"), fmt(b, sizeof b, num_at(tot, "disagree_mean"), ""));
    printf("time to duel p50 %s  p95 %s   to first delta p50 %s  p95 %s\n",
           fmt(a, sizeof a, num_at(tot, "ttd_p50"), "s"), fmt(b, sizeof b, num_at(tot, "ttd_p95"), "s"),
           fmt(c, sizeof c, num_at(tot, "tfd_p50"), "s"), fmt(d, sizeof d, num_at(tot, "tfd_p95"), "s"));
    const json_t *tr = json_object_get(stats, "trainer");
    if (json_is_object(tr))
        printf("trainer: step %lld  prefs %lld  snapshot v%lld  lag %lld entries / %s  loss %s  kl %s\n",
               (long long)json_integer_value(json_object_get(tr, "step")),
               (long long)json_integer_value(json_object_get(tr, "prefs_applied")),
               (long long)json_integer_value(json_object_get(tr, "published_version")),
               (long long)json_integer_value(json_object_get(tr, "lag_entries")),
               fmt(a, sizeof a, num_at(tr, "lag_s"), "s"), fmt(b, sizeof b, num_at(tr, "loss"), ""),
               fmt(c, sizeof c, num_at(tr, "kl"), ""));
    else printf("trainer: no entry in this window\n");
    const json_t *instances = json_object_get(stats, "instances");
    printf("vote to serving %s (slowest gateway, its last snapshot)  publish to serve %s  vote to snapshot %s\n",
           fmt(a, sizeof a, serving_max(instances, "vote_to_serving_s"), "s"),
           fmt(b, sizeof b, serving_max(instances, "publish_to_serve_s"), "s"),
           fmt(c, sizeof c, json_is_object(tr) ? num_at(tr, "vote_to_publish_s") : NAN, "s"));
    printf("\nknobs set in duel:knobs:");
    int n_set = 0;
    json_t *k;
    json_array_foreach(knobs, i, k) {
        if (!json_is_true(json_object_get(k, "set"))) continue;
        printf(" %s=%s", json_string_value(json_object_get(k, "name")),
               json_string_value(json_object_get(k, "value")));
        n_set++;
    }
    printf("%s\n", n_set ? "" : " none (the configuration's defaults)");
    printf("last changes:\n");
    json_t *e;
    json_array_foreach(audit, i, e) {
        char *before = json_dumps(json_object_get(e, "before"), JSON_COMPACT);
        char *after = json_dumps(json_object_get(e, "after"), JSON_COMPACT);
        printf("  %s  %s  %s -> %s\n", json_string_value(json_object_get(e, "id")),
               json_string_value(json_object_get(e, "who")), before ? before : "?", after ? after : "?");
        free(before);
        free(after);
    }
    if (json_array_size(audit) == 0) printf("  (none)\n");
}

static int ops_status(int argc, char **argv) {
    const char *redis = NULL, *config = NULL, *set_doc = NULL;
    bool json = false;
    long long window = 900;
    const cli_option options[] = {
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT",
         "Redis (default redis.host:redis.port of the configuration, or DUEL_REDIS)", 0, 0, false, NULL},
        {"--config", CLI_OPT_STRING, &config, "FILE", "configuration (the knobs' defaults, Redis)", 0, 0,
         false, NULL},
        {"--set", CLI_OPT_STRING, &set_doc, "SECTION.KEY=VALUE", "override one configuration key", 0, 0,
         false, NULL},
        {"--window", CLI_OPT_INT, &window, "S", "seconds: 900, 3600 or 86400 (default 900)", 900, 86400,
         false, NULL},
        {"--json", CLI_OPT_FLAG, &json, NULL,
         "one JSON object: {stats (as /api/stats), knobs, audit}", 0, 0, false, NULL},
    };
    const cli_command cmd = {"ops status", "[--redis HOST:PORT] [--window S] [--json]",
                             "One screen: instances and their health, regret, votes, ERM agreement,\n"
                             "latency, the trainer's lag, knobs set and the last changes (all from\n"
                             "Redis: duel:stats, duel:knobs, duel:audit).",
                             options, sizeof options / sizeof options[0]};
    const char *sets[64];
    size_t n_sets = 0;
    duel_error err = {0};
    int rc = cli_parse_with_sets(&cmd, argc, argv, sets, 64, &n_sets);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (window != 900 && window != 3600 && window != 86400)
        return cli_usage_error(&cmd, "--window must be 900, 3600 or 86400");
    cli_admin a;
    if ((rc = cli_admin_open(&cmd, config, sets, n_sets, redis, &a))) return rc;
    stats_view *view = stats_view_create();
    int64_t now = duel_time_unix_ms();
    char last_id[STATS_STORE_ID_MAX] = "";
    duel_knob_values values;
    bool set[DUEL_KNOB_COUNT];
    json_t *audit = NULL, *stats = NULL;
    rc = view ? 0 : duel_error_set(&err, DUEL_ENOMEM, "out of memory");
    if (!rc) rc = stats_store_read(a.rc, "duel:", now - window * 1000, last_id, 0, view, NULL, NULL, &err);
    if (!rc) rc = knob_store_read(a.rc, "duel:", &a.defaults, &values, set, NULL, &err);
    if (!rc) rc = knob_store_audit(a.rc, "duel:", OPS_AUDIT_LINES, &audit, &err);
    if (!rc && !(stats = stats_view_render(view, (int)window, now)))
        rc = duel_error_set(&err, DUEL_ENOMEM, "out of memory");
    if (rc) {
        fprintf(stderr, "duel ops status: %s\n", err.message);
        json_decref(audit);
        stats_view_free(view);
        cli_admin_close(&a);
        return CLI_EXIT_FAILURE;
    }
    json_t *knobs = json_array();
    for (int k = 0; k < DUEL_KNOB_COUNT; k++)
        json_array_append_new(knobs, json_pack("{s:s, s:s, s:s, s:b}", "name", duel_knobs[k].name,
                                               "value", values.v[k].text, "default",
                                               a.defaults.v[k].text, "set", set[k]));
    if (json) {
        json_t *out = json_pack("{s:O, s:O, s:O}", "stats", stats, "knobs", knobs, "audit", audit);
        char *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
        if (text) printf("%s\n", text);
        free(text);
        json_decref(out);
    } else {
        print_text(stats, knobs, audit);
    }
    json_decref(knobs);
    json_decref(stats);
    json_decref(audit);
    stats_view_free(view);
    cli_admin_close(&a);
    return CLI_EXIT_OK;
}

int cmd_ops(int argc, char **argv) {
    const char *usage = "usage: duel ops status [options]\n\n"
                        "  status    one screen: instances, versions, regret, lag, last changes\n"
                        "'duel ops status --help' describes its options.\n";
    static const cli_verb verbs[] = {{"status", ops_status}};
    return cli_run_verb("ops", usage, verbs, 1, argc, argv);
}
