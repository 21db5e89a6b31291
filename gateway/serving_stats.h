/* serving_stats.h: the gateway's figures per arm and strategy (DESIGN.md section 8, issue 19):
 * every finished duel (R-hat, the ERM's disagreement on the shown pair, time to duel, tokens),
 * its first delta, every vote (by choice, and whether the ERM's mean preferred the side the user
 * chose) and every error frame by code. Two copies are kept: the interval's, taken every
 * gateway.stats_interval_ms as a duel:stats entry (common/stats.h) and handed to the console
 * thread, and the totals since start, rendered as labelled Prometheus series (arm, strategy).
 *
 * Thread: the lws thread owns a serving_stats; nothing here blocks. */
#ifndef DUEL_GATEWAY_SERVING_STATS_H
#define DUEL_GATEWAY_SERVING_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "stats.h"
#include "text_buf.h"

typedef struct serving_stats {
    stats_serving interval; /* since the last entry */
    stats_serving total;    /* since start (histograms merged, errors summed) */
    double interval_start;  /* duel_time_seconds() */
    uint64_t tokens;        /* generated in the interval */
} serving_stats;

void serving_stats_init(serving_stats *s, double now);

/* The arm name of a policy version: "base" (0) or "v%06lld". */
void serving_stats_arm_name(long long policy_version, char out[STATS_NAME_MAX]);

/* The ERM's view of the shown pair from a duel's rewards (M x heads, row-major): the spread
 * (population standard deviation over heads) of r_e(a) - r_e(b), and which side its mean
 * prefers (+1 a, -1 b, 0 neither). rewards NULL or heads 0: spread NAN, preference 0. */
void serving_stats_erm_pair(const float *rewards, int num_candidates, int num_heads, int a, int b,
                            double *spread, int *preference);

void serving_stats_duel(serving_stats *s, const char *arm, const char *strategy, double regret,
                        double spread, double time_to_duel, uint64_t tokens);
void serving_stats_first_delta(serving_stats *s, const char *arm, const char *strategy,
                               double seconds);
/* choice: STATS_VOTE_*; preference: the duel's serving_stats_erm_pair preference, counted for
 * the agreement on a/b votes where it is not 0. */
void serving_stats_vote(serving_stats *s, const char *arm, const char *strategy, int choice,
                        int preference);
void serving_stats_error(serving_stats *s, const char *code);
/* A duel of arm the backend failed (a rollout arm's error rate: rollout_analysis.h). */
void serving_stats_duel_error(serving_stats *s, const char *arm, const char *strategy);

/* The gauges an entry carries besides the counts. */
typedef struct serving_gauges {
    long long version, queue_depth, spill_pending, snapshots_rejected, rollout_revision;
    double publish_to_serve_s, vote_to_serving_s; /* snapshot_loader_stats' (NAN: none) */
    bool redis_up;
} serving_gauges;

/* The data of the entry for the interval ending at now (malloc'd JSON; NULL on out of memory)
 * and its length in ms; the interval starts again. */
char *serving_stats_take(serving_stats *s, double now, const serving_gauges *g,
                         int64_t *interval_ms);

/* The totals as Prometheus series: duel_arm_duels_total, duel_arm_votes_total{choice},
 * duel_arm_erm_agreement_total{agree}, the histograms duel_arm_regret,
 * duel_arm_erm_disagreement, duel_arm_time_to_duel_seconds and
 * duel_arm_time_to_first_delta_seconds (each with arm and strategy labels), and
 * duel_gateway_errors_total{code}. */
void serving_stats_render(const serving_stats *s, text_buf *b);

#endif
