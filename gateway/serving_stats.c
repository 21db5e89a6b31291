/* serving_stats.c: per arm and strategy figures of the serving path (see serving_stats.h).
 * Invariant: total holds every figure interval ever held (added to both at once), so the
 * Prometheus totals and the sum of the duel:stats entries agree. */
#include "serving_stats.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void serving_stats_init(serving_stats *s, double now) {
    memset(s, 0, sizeof *s);
    s->interval_start = now;
}

void serving_stats_arm_name(long long v, char out[STATS_NAME_MAX]) {
    if (v <= 0) snprintf(out, STATS_NAME_MAX, "base");
    else snprintf(out, STATS_NAME_MAX, "v%06lld", v);
}

void serving_stats_erm_pair(const float *r, int m, int heads, int a, int b, double *spread,
                            int *preference) {
    *spread = NAN;
    *preference = 0;
    if (!r || heads <= 0 || a < 0 || b < 0 || a >= m || b >= m) return;
    double sum = 0, sq = 0;
    for (int e = 0; e < heads; e++) {
        double d = (double)r[(size_t)a * heads + e] - (double)r[(size_t)b * heads + e];
        sum += d;
        sq += d * d;
    }
    double mean = sum / heads, var = sq / heads - mean * mean;
    *spread = sqrt(var > 0 ? var : 0);
    *preference = mean > 0 ? 1 : mean < 0 ? -1 : 0;
}

/* The group in both copies (NULL when one is full: the figure is dropped from both). */
static bool groups(serving_stats *s, const char *arm, const char *strategy, stats_group **i,
                   stats_group **t) {
    *i = stats_serving_group(&s->interval, arm, strategy);
    *t = *i ? stats_serving_group(&s->total, arm, strategy) : NULL;
    return *i && *t;
}

void serving_stats_duel_error(serving_stats *s, const char *arm, const char *strategy) {
    stats_group *g[2];
    if (!groups(s, arm, strategy, &g[0], &g[1])) return;
    for (int k = 0; k < 2; k++) g[k]->errors++;
}

void serving_stats_duel(serving_stats *s, const char *arm, const char *strategy, double regret,
                        double spread, double time_to_duel, uint64_t tokens) {
    stats_group *g[2];
    s->tokens += tokens;
    if (!groups(s, arm, strategy, &g[0], &g[1])) return;
    for (int k = 0; k < 2; k++) {
        g[k]->duels++;
        stats_hist_add(&g[k]->regret, regret);
        stats_hist_add(&g[k]->disagree, spread);
        stats_hist_add(&g[k]->time_to_duel, time_to_duel);
    }
}

void serving_stats_first_delta(serving_stats *s, const char *arm, const char *strategy,
                               double seconds) {
    stats_group *g[2];
    if (!groups(s, arm, strategy, &g[0], &g[1])) return;
    for (int k = 0; k < 2; k++) stats_hist_add(&g[k]->time_to_first_delta, seconds);
}

void serving_stats_vote(serving_stats *s, const char *arm, const char *strategy, int choice,
                        int preference) {
    stats_group *g[2];
    if (choice < 0 || choice >= STATS_VOTE_KINDS || !groups(s, arm, strategy, &g[0], &g[1])) return;
    for (int k = 0; k < 2; k++) {
        g[k]->votes[choice]++;
        if (preference != 0 && (choice == STATS_VOTE_A || choice == STATS_VOTE_B)) {
            g[k]->agree_n++;
            g[k]->agree += (choice == STATS_VOTE_A) == (preference > 0);
        }
    }
}

void serving_stats_error(serving_stats *s, const char *code) {
    stats_serving_error(&s->interval, code);
    stats_serving_error(&s->total, code);
}

char *serving_stats_take(serving_stats *s, double now, const serving_gauges *g,
                         int64_t *interval_ms) {
    double seconds = now - s->interval_start;
    if (seconds < 1e-3) seconds = 1e-3;
    stats_serving *e = &s->interval;
    e->version = g->version;
    e->queue_depth = g->queue_depth;
    e->spill_pending = g->spill_pending;
    e->snapshots_rejected = g->snapshots_rejected;
    e->rollout_revision = g->rollout_revision;
    e->publish_to_serve_s = g->publish_to_serve_s;
    e->vote_to_serving_s = g->vote_to_serving_s;
    e->redis_up = g->redis_up;
    e->tokens_per_s = (double)s->tokens / seconds;
    char *data = stats_serving_json(e);
    *interval_ms = (int64_t)llround(seconds * 1000.0);
    if (*interval_ms < 1) *interval_ms = 1;
    memset(&s->interval, 0, sizeof s->interval);
    s->tokens = 0;
    s->interval_start = now;
    return data;
}

/* A histogram as Prometheus cumulative buckets at every other stats bucket bound (quarter
 * decades, 1e-4 .. 1e4). */
static void histogram(text_buf *b, const char *name, const char *labels, const stats_hist *h) {
    uint64_t cum = 0;
    char v[32];
    for (int i = 0; i < STATS_HIST_BUCKETS - 1; i++) {
        cum += h->counts[i];
        if (i % 2) continue;
        text_buf_printf(b, "%s_bucket{%s,le=\"%.4g\"} %llu\n", name, labels, stats_hist_upper(i),
                        (unsigned long long)cum);
    }
    cum += h->counts[STATS_HIST_BUCKETS - 1];
    text_buf_printf(b, "%s_bucket{%s,le=\"+Inf\"} %llu\n%s_sum{%s} %s\n%s_count{%s} %llu\n", name,
                    labels, (unsigned long long)cum, name, labels, prom_value(h->sum, v), name, labels,
                    (unsigned long long)h->n);
}

void serving_stats_render(const serving_stats *s, text_buf *b) {
    static const char *const CHOICES[STATS_VOTE_KINDS] = {"a", "b", "tie", "both_bad"};
    const stats_serving *t = &s->total;
    char labels[3 * STATS_NAME_MAX + 32];
    prom_header(b, "duel_arm_duels_total", "counter", "Duels served, by arm and strategy.");
    for (int i = 0; i < t->n_groups; i++)
        text_buf_printf(b, "duel_arm_duels_total{arm=\"%s\",strategy=\"%s\"} %llu\n", t->groups[i].arm,
                        t->groups[i].strategy, (unsigned long long)t->groups[i].duels);
    prom_header(b, "duel_arm_votes_total", "counter", "Votes by arm, strategy and choice.");
    for (int i = 0; i < t->n_groups; i++)
        for (int c = 0; c < STATS_VOTE_KINDS; c++)
            text_buf_printf(b, "duel_arm_votes_total{arm=\"%s\",strategy=\"%s\",choice=\"%s\"} %llu\n",
                            t->groups[i].arm, t->groups[i].strategy, CHOICES[c],
                            (unsigned long long)t->groups[i].votes[c]);
    prom_header(b, "duel_arm_erm_agreement_total", "counter",
                "a/b votes on the side the ERM mean preferred (agree=yes) or not (agree=no).");
    for (int i = 0; i < t->n_groups; i++) {
        const stats_group *g = &t->groups[i];
        text_buf_printf(b, "duel_arm_erm_agreement_total{arm=\"%s\",strategy=\"%s\",agree=\"yes\"} %llu\n"
                           "duel_arm_erm_agreement_total{arm=\"%s\",strategy=\"%s\",agree=\"no\"} %llu\n",
                        g->arm, g->strategy, (unsigned long long)g->agree, g->arm, g->strategy,
                        (unsigned long long)(g->agree_n - g->agree));
    }
    const struct { const char *name, *help; size_t offset; } hs[] = {
        {"duel_arm_regret", "Estimated regret R-hat of the shown pair.", offsetof(stats_group, regret)},
        {"duel_arm_erm_disagreement", "Spread over the ERM heads of r(a) - r(b) on the shown pair.",
         offsetof(stats_group, disagree)},
        {"duel_arm_time_to_duel_seconds", "From ask to the pair being ready.",
         offsetof(stats_group, time_to_duel)},
        {"duel_arm_time_to_first_delta_seconds", "From ask to the first delta sent.",
         offsetof(stats_group, time_to_first_delta)},
    };
    for (size_t k = 0; k < sizeof hs / sizeof hs[0]; k++) {
        prom_header(b, hs[k].name, "histogram", hs[k].help);
        for (int i = 0; i < t->n_groups; i++) {
            snprintf(labels, sizeof labels, "arm=\"%s\",strategy=\"%s\"", t->groups[i].arm,
                     t->groups[i].strategy);
            histogram(b, hs[k].name, labels, (const stats_hist *)((const char *)&t->groups[i] + hs[k].offset));
        }
    }
    prom_header(b, "duel_gateway_errors_total", "counter", "error frames sent, by code.");
    for (int i = 0; i < t->n_errors; i++)
        text_buf_printf(b, "duel_gateway_errors_total{code=\"%s\"} %llu\n", t->errors[i].code,
                        (unsigned long long)t->errors[i].count);
}
