/* stats.h: the figures every server appends to the capped Redis stream duel:stats (DESIGN.md
 * section 8) and their aggregation for the dashboard, `/api/stats` and `duel ops status`.
 *
 * An entry (XADD duel:stats MAXLEN ~ N *) has the fields instance ("serve@HOST:PORT",
 * "train@HOST:CONSUMER"), role ("serving" or "trainer"), ts_ms (the end of the interval),
 * interval_ms and data, a JSON object:
 *   serving: counts over the interval per arm and strategy (duels, votes by choice, ERM
 *     agreement with users), histograms of R-hat, of the ERM disagreement on the shown pair, of
 *     the time to duel and to the first delta; and the instance's gauges (serving version,
 *     tokens/s, engine queue depth, Redis up, votes in the spill log, the publish-to-serve and
 *     vote-to-serving latency of the snapshot it installed last) and errors by code;
 *   trainer: the trainer's gauges at the end of the interval (step, prefs applied, lag behind
 *     the stream head, losses, KL, grad norm, lr, batch size, published version, the latency
 *     from vote to snapshot of the last publish).
 * Counts are per interval (not cumulative), so entries of several instances and of restarted
 * processes add up, and histograms merge exactly.
 *
 * Histograms: fixed log buckets, 8 per decade from 1e-4 to 1e4 (bucket 0: at most 1e-4,
 * STATS_HIST_BUCKETS - 1: above 1e4): quantiles are exact to the bucket (a factor 10^(1/8)) and
 * interpolated inside it. Values are non-negative (regret, spread, seconds).
 *
 * Untrusted input: stats_entry_decode is the one place an entry read back from Redis is parsed
 * (sizes limited, every field checked); anything else about an entry is refused with a message. */
#ifndef DUEL_STATS_H
#define DUEL_STATS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define STATS_HIST_PER_DECADE 8
#define STATS_HIST_LOW 1e-4 /* upper bound of bucket 0 */
#define STATS_HIST_BUCKETS (2 + 8 * STATS_HIST_PER_DECADE) /* 66: 1e-4 .. 1e4 and the two ends */
#define STATS_MAX_GROUPS 16     /* arm x strategy pairs in one entry */
#define STATS_MAX_ERRORS 40     /* error codes in one entry */
#define STATS_NAME_MAX 32       /* bytes of an arm, strategy, error code, NUL included */
#define STATS_INSTANCE_MAX 128  /* bytes of an instance name, NUL included */
#define STATS_DATA_MAX 65536    /* bytes of an entry's data field */
#define STATS_ROLE_SERVING "serving"
#define STATS_ROLE_TRAINER "trainer"

typedef struct stats_hist {
    uint64_t n;
    double sum;
    uint32_t counts[STATS_HIST_BUCKETS];
} stats_hist;

void stats_hist_add(stats_hist *h, double value);
void stats_hist_merge(stats_hist *dst, const stats_hist *src);
/* The q-quantile (0 <= q <= 1); NAN when empty. */
double stats_hist_quantile(const stats_hist *h, double q);
/* The upper bound of bucket b (INFINITY for the last). */
double stats_hist_upper(int b);

enum { STATS_VOTE_A, STATS_VOTE_B, STATS_VOTE_TIE, STATS_VOTE_BOTH_BAD, STATS_VOTE_KINDS };

/* Serving figures of one arm and strategy. */
typedef struct stats_group {
    char arm[STATS_NAME_MAX];      /* "base" or "v000012" */
    char strategy[STATS_NAME_MAX]; /* the strategy that chose the pair */
    uint64_t duels;
    uint64_t errors;         /* duels of the group the backend failed (absent in older entries) */
    uint64_t votes[STATS_VOTE_KINDS];
    uint64_t agree, agree_n; /* a/b votes on the side the ensemble mean preferred, of a/b votes
                                where it preferred one */
    stats_hist regret;       /* R-hat per duel */
    stats_hist disagree;     /* std over heads of r_e(a) - r_e(b) */
    stats_hist time_to_duel, time_to_first_delta; /* seconds from the ask */
} stats_group;

typedef struct stats_error_count {
    char code[STATS_NAME_MAX];
    uint64_t count;
} stats_error_count;

typedef struct stats_serving {
    long long version;       /* snapshot version new duels get (0: base model) */
    double tokens_per_s;     /* over the interval */
    long long queue_depth;   /* engine requests waiting, at the end */
    bool redis_up;
    long long spill_pending; /* votes in the spill log */
    long long snapshots_rejected; /* since the process started */
    long long rollout_revision;   /* the duel:rollout revision it assigns arms by (0: none;
                                     absent in entries of older versions: 0) */
    /* Of the snapshot installed last (NAN: none yet, or unknown): seconds from its publish
     * (meta.json's created_ms), and from the mean time of the votes it is the first to hold, to
     * the moment this instance served it. Absent in entries of older versions: NAN. */
    double publish_to_serve_s, vote_to_serving_s;
    int n_groups;
    stats_group groups[STATS_MAX_GROUPS];
    int n_errors;
    stats_error_count errors[STATS_MAX_ERRORS];
} stats_serving;

typedef struct stats_trainer {
    long long step, prefs_applied, published_version, batch_size;
    long long lag_entries;   /* stream entries the group has not read yet */
    double lag_s;            /* age of the oldest of them (0 when none) */
    double loss, erm_loss, kl, grad_norm, lr, erm_accuracy;
    double vote_to_publish_s;     /* mean, over the votes in the last snapshot, of publish time -
                                     vote time; NAN before the first */
    double vote_to_publish_max_s; /* the oldest of those votes; NAN before the first */
} stats_trainer;

/* The group of (arm, strategy) in s, added when missing; NULL when STATS_MAX_GROUPS are used. */
stats_group *stats_serving_group(stats_serving *s, const char *arm, const char *strategy);
/* Counts one error frame of code. */
void stats_serving_error(stats_serving *s, const char *code);

typedef struct stats_entry {
    char instance[STATS_INSTANCE_MAX];
    bool trainer;            /* role trainer, else serving */
    int64_t ts_ms, interval_ms;
    stats_serving serving;   /* role serving */
    stats_trainer train;     /* role trainer */
} stats_entry;

/* The fields of an entry as the name/value argv of an XADD (10 pointers into the arguments and
 * the two number buffers), so that every writer names them alike. */
#define STATS_ENTRY_ARGC 10
void stats_entry_argv(const char *instance, const char *role, int64_t ts_ms, int64_t interval_ms,
                      const char *data, char ts_buf[24], char interval_buf[24],
                      const char *argv[STATS_ENTRY_ARGC]);

/* The data field of an entry (malloc'd JSON text; NULL on out of memory). */
char *stats_serving_json(const stats_serving *s);
char *stats_trainer_json(const stats_trainer *t);

/* Decodes an entry from its fields (name/value pairs as read from the stream). Unknown fields
 * are ignored (later versions may add some); missing or malformed ones are DUEL_EFORMAT. */
typedef struct stats_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} stats_field;
int stats_entry_decode(const stats_field *fields, size_t n, stats_entry *out, duel_error *err);

/* ---- aggregation ------------------------------------------------------------------------ */

/* The windows the dashboard offers: 15 min, 1 h, 24 h, each as STATS_VIEW_POINTS steps. */
#define STATS_VIEW_POINTS 180
#define STATS_VIEW_WINDOWS 3
extern const int stats_view_windows_s[STATS_VIEW_WINDOWS]; /* 900, 3600, 86400 */

typedef struct stats_view stats_view;

stats_view *stats_view_create(void);
void stats_view_free(stats_view *v);
/* Adds an entry to every window it falls in (entries may arrive in any order). */
void stats_view_add(stats_view *v, const stats_entry *e);
/* The window of window_s seconds ending at now_ms as JSON (caller json_decrefs; NULL: out of
 * memory or window_s not one of stats_view_windows_s):
 *   {"window_s", "step_s", "now_ms", "t": [bucket start, s],
 *    "series": {name: [value or null per point]} (vote_to_serving_s and publish_to_serve_s: the
 *               largest over the serving instances' entries in the step),
 *    "groups": [{arm, strategy, duels, votes{a,b,tie,both_bad}, agree, regret_mean, regret_p50,
 *                regret_p95, disagree_mean, ttd_p50, ttd_p95}],
 *    "totals": {duels, votes{...}, agree, regret_mean, regret_p50, regret_p95,
 *               regret_trend_per_h (least squares of the steps' mean R-hat on time, weighted by
 *               their duels; null below STATS_TREND_MIN_STEPS steps with duels), disagree_mean,
 *               ttd_p50, ttd_p95, tfd_p50, tfd_p95},
 *    "instances": [{instance, role, last_ms, age_s, interval_ms, stale, version, ...; serving:
 *                   publish_to_serve_s, vote_to_serving_s}],
 *    "trainer": {the newest trainer figures} or null}
 * An instance is stale when its newest entry is older than STATS_STALE_INTERVALS intervals
 * (plus STATS_STALE_SLACK_MS): a stopped process shows as stale, not healthy. */
#define STATS_TREND_MIN_STEPS 10 /* steps with duels before regret_trend_per_h is given */
#define STATS_STALE_INTERVALS 3
#define STATS_STALE_SLACK_MS 2000
json_t *stats_view_render(const stats_view *v, int window_s, int64_t now_ms);

#endif
