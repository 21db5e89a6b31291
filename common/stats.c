/* stats.c: duel:stats entries and their aggregation (see stats.h). Invariant: every entry that
 * reaches a stats_view passed stats_entry_decode (or was built by this process), so the view's
 * counts and histograms only ever hold checked, non-negative, finite figures. */
#include "stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- histograms ------------------------------------------------------------------------- */

static int bucket_of(double v) {
    if (!(v > STATS_HIST_LOW)) return 0; /* also negative */
    double b = floor(STATS_HIST_PER_DECADE * log10(v / STATS_HIST_LOW)) + 1;
    return b >= STATS_HIST_BUCKETS - 1 ? STATS_HIST_BUCKETS - 1 : (int)b;
}

double stats_hist_upper(int b) {
    if (b >= STATS_HIST_BUCKETS - 1) return INFINITY;
    return STATS_HIST_LOW * pow(10.0, (double)b / STATS_HIST_PER_DECADE);
}

void stats_hist_add(stats_hist *h, double v) {
    if (!isfinite(v)) return;
    if (v < 0) v = 0;
    h->counts[bucket_of(v)]++;
    h->n++;
    h->sum += v;
}

void stats_hist_merge(stats_hist *dst, const stats_hist *src) {
    for (int b = 0; b < STATS_HIST_BUCKETS; b++) dst->counts[b] += src->counts[b];
    dst->n += src->n;
    dst->sum += src->sum;
}

double stats_hist_quantile(const stats_hist *h, double q) {
    if (h->n == 0) return NAN;
    if (q < 0) q = 0;
    if (q > 1) q = 1;
    double target = q * (double)h->n, cum = 0;
    for (int b = 0; b < STATS_HIST_BUCKETS; b++) {
        double c = h->counts[b];
        if (c == 0 || cum + c < target) {
            cum += c;
            continue;
        }
        double f = (target - cum) / c;
        if (b == 0) return STATS_HIST_LOW * f;
        if (b == STATS_HIST_BUCKETS - 1) return stats_hist_upper(b - 1);
        double lo = stats_hist_upper(b - 1), hi = stats_hist_upper(b);
        return lo * pow(hi / lo, f);
    }
    return stats_hist_upper(STATS_HIST_BUCKETS - 2);
}

static double hist_mean(const stats_hist *h) { return h->n ? h->sum / (double)h->n : NAN; }

/* ---- building an entry ------------------------------------------------------------------ */

static void copy_name(char *dst, const char *src) { snprintf(dst, STATS_NAME_MAX, "%s", src); }

stats_group *stats_serving_group(stats_serving *s, const char *arm, const char *strategy) {
    for (int i = 0; i < s->n_groups; i++)
        if (strncmp(s->groups[i].arm, arm, STATS_NAME_MAX - 1) == 0 &&
            strncmp(s->groups[i].strategy, strategy, STATS_NAME_MAX - 1) == 0)
            return &s->groups[i];
    if (s->n_groups >= STATS_MAX_GROUPS) return NULL;
    stats_group *g = &s->groups[s->n_groups++];
    memset(g, 0, sizeof *g);
    copy_name(g->arm, arm);
    copy_name(g->strategy, strategy);
    return g;
}

void stats_serving_error(stats_serving *s, const char *code) {
    for (int i = 0; i < s->n_errors; i++)
        if (strncmp(s->errors[i].code, code, STATS_NAME_MAX - 1) == 0) {
            s->errors[i].count++;
            return;
        }
    if (s->n_errors >= STATS_MAX_ERRORS) return;
    copy_name(s->errors[s->n_errors].code, code);
    s->errors[s->n_errors++].count = 1;
}

void stats_entry_argv(const char *instance, const char *role, int64_t ts_ms, int64_t interval_ms,
                      const char *data, char ts_buf[24], char interval_buf[24],
                      const char *argv[STATS_ENTRY_ARGC]) {
    snprintf(ts_buf, 24, "%lld", (long long)ts_ms);
    snprintf(interval_buf, 24, "%lld", (long long)interval_ms);
    const char *fields[STATS_ENTRY_ARGC] = {"instance", instance, "role", role, "ts_ms", ts_buf,
                                            "interval_ms", interval_buf, "data", data};
    memcpy(argv, fields, sizeof fields);
}

/* A number, or null when it is not finite (jansson has no NaN). */
static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *hist_json(const stats_hist *h) {
    json_t *b = json_array();
    for (int i = 0; b && i < STATS_HIST_BUCKETS; i++)
        if (h->counts[i]) json_array_append_new(b, json_pack("[i, I]", i, (json_int_t)h->counts[i]));
    return json_pack("{s:I, s:o, s:o}", "n", (json_int_t)h->n, "sum", num(h->sum), "b",
                     b ? b : json_null());
}

/* Serialises o (taking it) into malloc'd compact text. */
static char *dump(json_t *o) {
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

char *stats_serving_json(const stats_serving *s) {
    json_t *groups = json_array(), *errors = json_object();
    for (int i = 0; groups && i < s->n_groups; i++) {
        const stats_group *g = &s->groups[i];
        json_t *o = json_pack("{s:s, s:s, s:I, s:[I,I,I,I], s:[I,I]}", "arm", g->arm, "strategy",
                              g->strategy, "duels", (json_int_t)g->duels, "votes",
                              (json_int_t)g->votes[0], (json_int_t)g->votes[1],
                              (json_int_t)g->votes[2], (json_int_t)g->votes[3], "agree",
                              (json_int_t)g->agree, (json_int_t)g->agree_n);
        const struct { const char *name; const stats_hist *h; } hs[] = {
            {"regret", &g->regret}, {"disagree", &g->disagree}, {"ttd", &g->time_to_duel},
            {"tfd", &g->time_to_first_delta}};
        for (size_t k = 0; o && k < sizeof hs / sizeof hs[0]; k++)
            if (hs[k].h->n) json_object_set_new(o, hs[k].name, hist_json(hs[k].h));
        if (o && g->errors) json_object_set_new(o, "errors", json_integer((json_int_t)g->errors));
        if (!o || json_array_append_new(groups, o)) {
            json_decref(groups);
            groups = NULL;
        }
    }
    for (int i = 0; errors && i < s->n_errors; i++)
        json_object_set_new(errors, s->errors[i].code, json_integer((json_int_t)s->errors[i].count));
    if (!groups || !errors) {
        json_decref(groups);
        json_decref(errors);
        return NULL;
    }
    return dump(json_pack("{s:I, s:o, s:I, s:b, s:I, s:I, s:o, s:o, s:o, s:o, s:I}", "version",
                          (json_int_t)s->version, "tokens_per_s", num(s->tokens_per_s), "queue",
                          (json_int_t)s->queue_depth, "redis_up", s->redis_up, "spill_pending",
                          (json_int_t)s->spill_pending, "snapshots_rejected",
                          (json_int_t)s->snapshots_rejected, "publish_to_serve_s",
                          num(s->publish_to_serve_s), "vote_to_serving_s",
                          num(s->vote_to_serving_s), "groups", groups, "errors", errors,
                          "rollout_revision", (json_int_t)s->rollout_revision));
}

char *stats_trainer_json(const stats_trainer *t) {
    json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I}", "step", (json_int_t)t->step,
                          "prefs_applied", (json_int_t)t->prefs_applied, "published_version",
                          (json_int_t)t->published_version, "batch_size",
                          (json_int_t)t->batch_size, "lag_entries", (json_int_t)t->lag_entries);
    const struct { const char *name; double v; } reals[] = {
        {"lag_s", t->lag_s}, {"loss", t->loss}, {"erm_loss", t->erm_loss}, {"kl", t->kl},
        {"grad_norm", t->grad_norm}, {"lr", t->lr}, {"erm_accuracy", t->erm_accuracy},
        {"vote_to_publish_s", t->vote_to_publish_s},
        {"vote_to_publish_max_s", t->vote_to_publish_max_s}};
    for (size_t i = 0; o && i < sizeof reals / sizeof reals[0]; i++)
        json_object_set_new(o, reals[i].name, num(reals[i].v));
    return dump(o);
}

/* ---- decoding (untrusted: read back from Redis) ------------------------------------------ */

#define COUNT_MAX 1e15 /* a count beyond this in one entry is nonsense */

static int bad(duel_error *err, const char *what) {
    return duel_error_set(err, DUEL_EFORMAT, "duel:stats entry: %s", what);
}

/* A count: a JSON integer in [0, COUNT_MAX]. */
static int get_count(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > COUNT_MAX)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* A finite number, null (NAN) allowed when nullable; absent: NAN. */
static int get_real(const json_t *o, const char *key, double *out) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = NAN;
        return 0;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v))) return -1;
    *out = json_number_value(v);
    return 0;
}

static int get_ll(const json_t *o, const char *key, long long *out) {
    const json_t *v = json_object_get(o, key);
    if (!v) {
        *out = 0;
        return 0;
    }
    if (!json_is_integer(v)) return -1;
    *out = json_integer_value(v);
    return 0;
}

static int hist_from_json(const json_t *o, stats_hist *h) {
    memset(h, 0, sizeof *h);
    if (!o) return 0;
    uint64_t n = 0, total = 0;
    double sum;
    if (!json_is_object(o) || get_count(json_object_get(o, "n"), &n) || get_real(o, "sum", &sum) ||
        !isfinite(sum) || sum < 0)
        return -1;
    const json_t *b = json_object_get(o, "b");
    if (!json_is_array(b) || json_array_size(b) > STATS_HIST_BUCKETS) return -1;
    size_t i;
    const json_t *pair;
    json_array_foreach(b, i, pair) {
        uint64_t c = 0;
        const json_t *idx = json_array_get(pair, 0);
        if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_integer(idx) ||
            json_integer_value(idx) < 0 || json_integer_value(idx) >= STATS_HIST_BUCKETS ||
            get_count(json_array_get(pair, 1), &c) || c > UINT32_MAX)
            return -1;
        h->counts[json_integer_value(idx)] += (uint32_t)c;
        total += c;
    }
    if (total != n) return -1;
    h->n = n;
    h->sum = sum;
    return 0;
}

/* A name: 1..STATS_NAME_MAX-1 bytes of [A-Za-z0-9_.:@-]. */
static bool name_ok(const char *s, size_t len, size_t cap) {
    if (len == 0 || len >= cap) return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

static int group_from_json(const json_t *o, stats_group *g) {
    memset(g, 0, sizeof *g);
    const json_t *arm = json_object_get(o, "arm"), *strategy = json_object_get(o, "strategy");
    const json_t *votes = json_object_get(o, "votes"), *agree = json_object_get(o, "agree");
    if (!json_is_string(arm) || !json_is_string(strategy) ||
        !name_ok(json_string_value(arm), json_string_length(arm), STATS_NAME_MAX) ||
        !name_ok(json_string_value(strategy), json_string_length(strategy), STATS_NAME_MAX) ||
        get_count(json_object_get(o, "duels"), &g->duels) ||
        (json_object_get(o, "errors") && get_count(json_object_get(o, "errors"), &g->errors)) ||
        !json_is_array(votes) ||
        json_array_size(votes) != STATS_VOTE_KINDS || !json_is_array(agree) ||
        json_array_size(agree) != 2 || get_count(json_array_get(agree, 0), &g->agree) ||
        get_count(json_array_get(agree, 1), &g->agree_n) || g->agree > g->agree_n)
        return -1;
    for (int k = 0; k < STATS_VOTE_KINDS; k++)
        if (get_count(json_array_get(votes, (size_t)k), &g->votes[k])) return -1;
    copy_name(g->arm, json_string_value(arm));
    copy_name(g->strategy, json_string_value(strategy));
    if (hist_from_json(json_object_get(o, "regret"), &g->regret) ||
        hist_from_json(json_object_get(o, "disagree"), &g->disagree) ||
        hist_from_json(json_object_get(o, "ttd"), &g->time_to_duel) ||
        hist_from_json(json_object_get(o, "tfd"), &g->time_to_first_delta))
        return -1;
    return 0;
}

static int serving_from_json(const json_t *o, stats_serving *s, duel_error *err) {
    memset(s, 0, sizeof *s);
    const json_t *redis_up = json_object_get(o, "redis_up");
    if (get_ll(o, "version", &s->version) || get_real(o, "tokens_per_s", &s->tokens_per_s) ||
        get_ll(o, "queue", &s->queue_depth) || get_ll(o, "spill_pending", &s->spill_pending) ||
        get_ll(o, "snapshots_rejected", &s->snapshots_rejected) ||
        get_ll(o, "rollout_revision", &s->rollout_revision) || s->rollout_revision < 0 ||
        get_real(o, "publish_to_serve_s", &s->publish_to_serve_s) ||
        get_real(o, "vote_to_serving_s", &s->vote_to_serving_s) ||
        (redis_up && !json_is_boolean(redis_up)) || s->version < 0 || s->queue_depth < 0 ||
        s->spill_pending < 0 || s->snapshots_rejected < 0 || s->publish_to_serve_s < 0 ||
        s->vote_to_serving_s < 0)
        return bad(err, "a serving gauge has the wrong type or sign");
    if (!isfinite(s->tokens_per_s) || s->tokens_per_s < 0) s->tokens_per_s = 0;
    s->redis_up = json_is_true(redis_up);
    const json_t *groups = json_object_get(o, "groups");
    if (groups && (!json_is_array(groups) || json_array_size(groups) > STATS_MAX_GROUPS))
        return bad(err, "groups must be an array of at most 16");
    size_t i;
    const json_t *g;
    json_array_foreach(groups, i, g) {
        if (!json_is_object(g) || group_from_json(g, &s->groups[s->n_groups]))
            return bad(err, "a group is malformed");
        s->n_groups++;
    }
    const json_t *errors = json_object_get(o, "errors");
    if (errors && (!json_is_object(errors) || json_object_size(errors) > STATS_MAX_ERRORS))
        return bad(err, "errors must be an object of at most 40 codes");
    const char *code;
    const json_t *count;
    json_object_foreach((json_t *)errors, code, count) {
        stats_error_count *e = &s->errors[s->n_errors];
        if (!name_ok(code, strlen(code), STATS_NAME_MAX) || get_count(count, &e->count))
            return bad(err, "an error count is malformed");
        copy_name(e->code, code);
        s->n_errors++;
    }
    return DUEL_OK;
}

static int trainer_from_json(const json_t *o, stats_trainer *t, duel_error *err) {
    memset(t, 0, sizeof *t);
    if (get_ll(o, "step", &t->step) || get_ll(o, "prefs_applied", &t->prefs_applied) ||
        get_ll(o, "published_version", &t->published_version) ||
        get_ll(o, "batch_size", &t->batch_size) || get_ll(o, "lag_entries", &t->lag_entries) ||
        get_real(o, "lag_s", &t->lag_s) || get_real(o, "loss", &t->loss) ||
        get_real(o, "erm_loss", &t->erm_loss) || get_real(o, "kl", &t->kl) ||
        get_real(o, "grad_norm", &t->grad_norm) || get_real(o, "lr", &t->lr) ||
        get_real(o, "erm_accuracy", &t->erm_accuracy) ||
        get_real(o, "vote_to_publish_s", &t->vote_to_publish_s) ||
        get_real(o, "vote_to_publish_max_s", &t->vote_to_publish_max_s))
        return bad(err, "a trainer figure has the wrong type");
    return DUEL_OK;
}

static bool field_is(const stats_field *f, const char *name) {
    return f->name_len == strlen(name) && memcmp(f->name, name, f->name_len) == 0;
}

/* A decimal integer field in [lo, hi]. */
static int field_int(const stats_field *f, long long lo, long long hi, int64_t *out) {
    if (!f || f->value_len == 0 || f->value_len > 19) return -1;
    long long v = 0;
    for (size_t i = 0; i < f->value_len; i++) {
        if (f->value[i] < '0' || f->value[i] > '9') return -1;
        v = v * 10 + (f->value[i] - '0');
    }
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int stats_entry_decode(const stats_field *fields, size_t n, stats_entry *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    const stats_field *instance = NULL, *role = NULL, *ts = NULL, *interval = NULL, *data = NULL;
    for (size_t i = 0; i < n; i++) {
        const stats_field *f = &fields[i];
        if (field_is(f, "instance")) instance = f;
        else if (field_is(f, "role")) role = f;
        else if (field_is(f, "ts_ms")) ts = f;
        else if (field_is(f, "interval_ms")) interval = f;
        else if (field_is(f, "data")) data = f;
    }
    if (!instance || !name_ok(instance->value, instance->value_len, STATS_INSTANCE_MAX))
        return bad(err, "no instance, or one that is not a plain name");
    memcpy(out->instance, instance->value, instance->value_len);
    out->instance[instance->value_len] = '\0';
    if (!role) return bad(err, "no role");
    if (role->value_len == strlen(STATS_ROLE_TRAINER) &&
        memcmp(role->value, STATS_ROLE_TRAINER, role->value_len) == 0)
        out->trainer = true;
    else if (!(role->value_len == strlen(STATS_ROLE_SERVING) &&
               memcmp(role->value, STATS_ROLE_SERVING, role->value_len) == 0))
        return bad(err, "role is neither serving nor trainer");
    if (field_int(ts, 0, 1LL << 50, &out->ts_ms)) return bad(err, "ts_ms is not a time in ms");
    if (field_int(interval, 1, 3600 * 1000, &out->interval_ms))
        return bad(err, "interval_ms is not in 1..3600000");
    if (!data || data->value_len > STATS_DATA_MAX) return bad(err, "no data, or over 64 KiB");
    json_error_t jerr;
    json_t *o = json_loadb(data->value, data->value_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(o)) {
        json_decref(o);
        return bad(err, "data is not a JSON object");
    }
    int rc = out->trainer ? trainer_from_json(o, &out->train, err)
                          : serving_from_json(o, &out->serving, err);
    json_decref(o);
    return rc;
}

/* ---- the view ------------------------------------------------------------------------------ */

const int stats_view_windows_s[STATS_VIEW_WINDOWS] = {900, 3600, 86400};

#define VIEW_GROUPS 8      /* arm x strategy pairs kept per bucket */
#define VIEW_INSTANCES 64  /* instances remembered (the least recently seen goes first) */

typedef struct view_group {
    char arm[STATS_NAME_MAX], strategy[STATS_NAME_MAX];
    uint64_t duels, votes[STATS_VOTE_KINDS], agree, agree_n;
    stats_hist regret, time_to_duel;
    double disagree_sum;
    uint64_t disagree_n;
} view_group;

typedef struct view_bucket {
    int64_t index; /* ts_ms / step_ms of the bucket; -1: empty */
    uint64_t duels, votes[STATS_VOTE_KINDS], agree, agree_n, errors;
    double tokens; /* generated in the bucket (tokens/s x interval) */
    long long queue_max;
    double publish_to_serve_max, vote_to_serving_max; /* over serving entries; NAN: none */
    stats_hist regret, disagree, ttd, tfd;
    int n_groups;
    view_group groups[VIEW_GROUPS];
    bool has_trainer;
    int64_t trainer_ts;
    stats_trainer trainer;
} view_bucket;

typedef struct view_instance {
    char name[STATS_INSTANCE_MAX];
    bool trainer;
    int64_t last_ms, interval_ms;
    long long version, queue_depth, spill_pending, rollout_revision; /* the newest serving
                                                                        entry's gauges */
    double tokens_per_s, publish_to_serve_s, vote_to_serving_s;
    bool redis_up;
    stats_trainer train;
} view_instance;

struct stats_view {
    view_bucket *windows[STATS_VIEW_WINDOWS]; /* STATS_VIEW_POINTS each, a ring by index */
    view_instance instances[VIEW_INSTANCES];
    int n_instances;
};

stats_view *stats_view_create(void) {
    stats_view *v = calloc(1, sizeof *v);
    for (int w = 0; v && w < STATS_VIEW_WINDOWS; w++) {
        v->windows[w] = calloc(STATS_VIEW_POINTS, sizeof(view_bucket));
        if (!v->windows[w]) {
            stats_view_free(v);
            return NULL;
        }
        for (int i = 0; i < STATS_VIEW_POINTS; i++) v->windows[w][i].index = -1;
    }
    return v;
}

void stats_view_free(stats_view *v) {
    if (!v) return;
    for (int w = 0; w < STATS_VIEW_WINDOWS; w++) free(v->windows[w]);
    free(v);
}

static int64_t step_ms(int w) { return (int64_t)stats_view_windows_s[w] * 1000 / STATS_VIEW_POINTS; }

/* The bucket of ts in window w, reset when its slot held an older bucket; NULL when the slot
 * holds a newer one (ts is older than the ring reaches). */
static view_bucket *bucket_at(stats_view *v, int w, int64_t ts_ms) {
    int64_t index = ts_ms / step_ms(w);
    view_bucket *b = &v->windows[w][index % STATS_VIEW_POINTS];
    if (b->index == index) return b;
    if (b->index > index) return NULL;
    memset(b, 0, sizeof *b);
    b->index = index;
    b->publish_to_serve_max = b->vote_to_serving_max = NAN;
    return b;
}

static void add_serving(view_bucket *b, const stats_entry *e) {
    const stats_serving *s = &e->serving;
    b->tokens += s->tokens_per_s * (double)e->interval_ms / 1000.0;
    if (s->queue_depth > b->queue_max) b->queue_max = s->queue_depth;
    /* the slowest gateway is the one a user waits for; fmax skips NAN */
    b->publish_to_serve_max = fmax(b->publish_to_serve_max, s->publish_to_serve_s);
    b->vote_to_serving_max = fmax(b->vote_to_serving_max, s->vote_to_serving_s);
    for (int i = 0; i < s->n_errors; i++) b->errors += s->errors[i].count;
    for (int i = 0; i < s->n_groups; i++) {
        const stats_group *g = &s->groups[i];
        b->duels += g->duels;
        for (int k = 0; k < STATS_VOTE_KINDS; k++) b->votes[k] += g->votes[k];
        b->agree += g->agree;
        b->agree_n += g->agree_n;
        stats_hist_merge(&b->regret, &g->regret);
        stats_hist_merge(&b->disagree, &g->disagree);
        stats_hist_merge(&b->ttd, &g->time_to_duel);
        stats_hist_merge(&b->tfd, &g->time_to_first_delta);
        view_group *vg = NULL;
        for (int j = 0; j < b->n_groups && !vg; j++)
            if (strcmp(b->groups[j].arm, g->arm) == 0 && strcmp(b->groups[j].strategy, g->strategy) == 0)
                vg = &b->groups[j];
        if (!vg && b->n_groups < VIEW_GROUPS) {
            vg = &b->groups[b->n_groups++];
            memset(vg, 0, sizeof *vg);
            copy_name(vg->arm, g->arm);
            copy_name(vg->strategy, g->strategy);
        }
        if (!vg) continue; /* more pairs than a bucket keeps: in the totals only */
        vg->duels += g->duels;
        for (int k = 0; k < STATS_VOTE_KINDS; k++) vg->votes[k] += g->votes[k];
        vg->agree += g->agree;
        vg->agree_n += g->agree_n;
        stats_hist_merge(&vg->regret, &g->regret);
        stats_hist_merge(&vg->time_to_duel, &g->time_to_duel);
        vg->disagree_sum += g->disagree.sum;
        vg->disagree_n += g->disagree.n;
    }
}

static void note_instance(stats_view *v, const stats_entry *e) {
    view_instance *in = NULL;
    for (int i = 0; i < v->n_instances && !in; i++)
        if (strcmp(v->instances[i].name, e->instance) == 0) in = &v->instances[i];
    if (!in && v->n_instances < VIEW_INSTANCES) in = &v->instances[v->n_instances++];
    if (!in) { /* full: forget the one seen least recently */
        in = &v->instances[0];
        for (int i = 1; i < v->n_instances; i++)
            if (v->instances[i].last_ms < in->last_ms) in = &v->instances[i];
        in->last_ms = -1;
    }
    if (strcmp(in->name, e->instance) != 0) {
        memset(in, 0, sizeof *in);
        snprintf(in->name, sizeof in->name, "%s", e->instance);
        in->last_ms = -1;
    }
    if (e->ts_ms < in->last_ms) return; /* an older entry: the gauges stay the newest */
    in->trainer = e->trainer;
    in->last_ms = e->ts_ms;
    in->interval_ms = e->interval_ms;
    if (e->trainer) {
        in->train = e->train;
    } else {
        in->version = e->serving.version;
        in->queue_depth = e->serving.queue_depth;
        in->spill_pending = e->serving.spill_pending;
        in->rollout_revision = e->serving.rollout_revision;
        in->tokens_per_s = e->serving.tokens_per_s;
        in->redis_up = e->serving.redis_up;
        in->publish_to_serve_s = e->serving.publish_to_serve_s;
        in->vote_to_serving_s = e->serving.vote_to_serving_s;
    }
}

void stats_view_add(stats_view *v, const stats_entry *e) {
    note_instance(v, e);
    for (int w = 0; w < STATS_VIEW_WINDOWS; w++) {
        view_bucket *b = bucket_at(v, w, e->ts_ms);
        if (!b) continue;
        if (e->trainer) {
            if (!b->has_trainer || e->ts_ms >= b->trainer_ts) {
                b->has_trainer = true;
                b->trainer_ts = e->ts_ms;
                b->trainer = e->train;
            }
        } else {
            add_serving(b, e);
        }
    }
}

/* ---- rendering ---------------------------------------------------------------------------- */

enum {
    S_DUELS_PER_S, S_REGRET_MEAN, S_REGRET_P50, S_REGRET_P95, S_DISAGREE_MEAN, S_AGREE,
    S_VOTES_A, S_VOTES_B, S_VOTES_TIE, S_VOTES_BOTH_BAD, S_TTD_P50, S_TTD_P95, S_TFD_P50,
    S_TFD_P95, S_TOKENS_PER_S, S_QUEUE, S_ERRORS_PER_S, S_LAG_ENTRIES, S_LAG_S, S_LOSS,
    S_ERM_LOSS, S_KL, S_GRAD_NORM, S_LR, S_ERM_ACCURACY, S_VOTE_TO_PUBLISH_S,
    S_PUBLISH_TO_SERVE_S, S_VOTE_TO_SERVING_S, S_COUNT
};
static const char *const SERIES[S_COUNT] = {
    "duels_per_s", "regret_mean", "regret_p50", "regret_p95", "disagree_mean", "agree",
    "votes_a", "votes_b", "votes_tie", "votes_both_bad", "ttd_p50", "ttd_p95", "tfd_p50",
    "tfd_p95", "tokens_per_s", "queue", "errors_per_s", "trainer_lag_entries", "trainer_lag_s",
    "loss", "erm_loss", "kl", "grad_norm", "lr", "erm_accuracy", "vote_to_publish_s",
    "publish_to_serve_s", "vote_to_serving_s"};

static double ratio(uint64_t a, uint64_t b) { return b ? (double)a / (double)b : NAN; }

static json_t *votes_json(const uint64_t votes[STATS_VOTE_KINDS]) {
    return json_pack("{s:I, s:I, s:I, s:I}", "a", (json_int_t)votes[0], "b", (json_int_t)votes[1],
                     "tie", (json_int_t)votes[2], "both_bad", (json_int_t)votes[3]);
}

static json_t *instance_json(const view_instance *in, int64_t now_ms) {
    double age_s = (double)(now_ms - in->last_ms) / 1000.0;
    bool stale = now_ms - in->last_ms > STATS_STALE_INTERVALS * in->interval_ms + STATS_STALE_SLACK_MS;
    json_t *o = json_pack("{s:s, s:s, s:I, s:o, s:I, s:b}", "instance", in->name, "role",
                          in->trainer ? STATS_ROLE_TRAINER : STATS_ROLE_SERVING, "last_ms",
                          (json_int_t)in->last_ms, "age_s", num(age_s), "interval_ms",
                          (json_int_t)in->interval_ms, "stale", stale);
    if (!o) return NULL;
    if (in->trainer) {
        json_object_set_new(o, "version", json_integer(in->train.published_version));
        json_object_set_new(o, "step", json_integer(in->train.step));
        json_object_set_new(o, "lag_entries", json_integer(in->train.lag_entries));
        json_object_set_new(o, "lag_s", num(in->train.lag_s));
    } else {
        json_object_set_new(o, "version", json_integer(in->version));
        json_object_set_new(o, "tokens_per_s", num(in->tokens_per_s));
        json_object_set_new(o, "queue", json_integer(in->queue_depth));
        json_object_set_new(o, "redis_up", json_boolean(in->redis_up));
        json_object_set_new(o, "spill_pending", json_integer(in->spill_pending));
        json_object_set_new(o, "rollout_revision", json_integer(in->rollout_revision));
        json_object_set_new(o, "publish_to_serve_s", num(in->publish_to_serve_s));
        json_object_set_new(o, "vote_to_serving_s", num(in->vote_to_serving_s));
    }
    return o;
}

static json_t *trainer_json(const stats_trainer *t) {
    char *text = stats_trainer_json(t);
    json_t *o = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return o;
}

json_t *stats_view_render(const stats_view *v, int window_s, int64_t now_ms) {
    int w = -1;
    for (int i = 0; i < STATS_VIEW_WINDOWS; i++)
        if (stats_view_windows_s[i] == window_s) w = i;
    if (w < 0) return NULL;
    const int64_t step = step_ms(w), last = now_ms / step, first = last - STATS_VIEW_POINTS + 1;
    const double step_s = (double)step / 1000.0;
    json_t *t = json_array(), *series = json_object(), *arr[S_COUNT];
    for (int s = 0; s < S_COUNT; s++) arr[s] = json_array();
    /* totals over the window */
    uint64_t duels = 0, votes[STATS_VOTE_KINDS] = {0}, agree = 0, agree_n = 0;
    stats_hist regret = {0}, disagree = {0}, ttd = {0}, tfd = {0};
    view_group groups[STATS_MAX_GROUPS];
    int n_groups = 0;
    const view_bucket *newest_trainer = NULL;
    /* regret trend: least squares of the buckets' mean R-hat on time, weighted by duels */
    double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    int trend_steps = 0;
    for (int64_t index = first; index <= last; index++) {
        const view_bucket *b = &v->windows[w][index % STATS_VIEW_POINTS];
        bool have = b->index == index;
        json_array_append_new(t, json_integer((json_int_t)(index * step / 1000)));
        double val[S_COUNT];
        for (int s = 0; s < S_COUNT; s++) val[s] = NAN;
        if (have) {
            val[S_DUELS_PER_S] = (double)b->duels / step_s;
            val[S_REGRET_MEAN] = hist_mean(&b->regret);
            val[S_REGRET_P50] = stats_hist_quantile(&b->regret, 0.5);
            val[S_REGRET_P95] = stats_hist_quantile(&b->regret, 0.95);
            val[S_DISAGREE_MEAN] = hist_mean(&b->disagree);
            val[S_AGREE] = ratio(b->agree, b->agree_n);
            val[S_VOTES_A] = (double)b->votes[0];
            val[S_VOTES_B] = (double)b->votes[1];
            val[S_VOTES_TIE] = (double)b->votes[2];
            val[S_VOTES_BOTH_BAD] = (double)b->votes[3];
            val[S_TTD_P50] = stats_hist_quantile(&b->ttd, 0.5);
            val[S_TTD_P95] = stats_hist_quantile(&b->ttd, 0.95);
            val[S_TFD_P50] = stats_hist_quantile(&b->tfd, 0.5);
            val[S_TFD_P95] = stats_hist_quantile(&b->tfd, 0.95);
            val[S_TOKENS_PER_S] = b->tokens / step_s;
            val[S_QUEUE] = (double)b->queue_max;
            val[S_ERRORS_PER_S] = (double)b->errors / step_s;
            val[S_PUBLISH_TO_SERVE_S] = b->publish_to_serve_max;
            val[S_VOTE_TO_SERVING_S] = b->vote_to_serving_max;
            if (b->has_trainer) {
                const stats_trainer *tr = &b->trainer;
                val[S_LAG_ENTRIES] = (double)tr->lag_entries;
                val[S_LAG_S] = tr->lag_s;
                val[S_LOSS] = tr->loss;
                val[S_ERM_LOSS] = tr->erm_loss;
                val[S_KL] = tr->kl;
                val[S_GRAD_NORM] = tr->grad_norm;
                val[S_LR] = tr->lr;
                val[S_ERM_ACCURACY] = tr->erm_accuracy;
                val[S_VOTE_TO_PUBLISH_S] = tr->vote_to_publish_s;
                if (!newest_trainer || b->trainer_ts > newest_trainer->trainer_ts) newest_trainer = b;
            }
            duels += b->duels;
            for (int k = 0; k < STATS_VOTE_KINDS; k++) votes[k] += b->votes[k];
            agree += b->agree;
            agree_n += b->agree_n;
            stats_hist_merge(&regret, &b->regret);
            stats_hist_merge(&disagree, &b->disagree);
            stats_hist_merge(&ttd, &b->ttd);
            stats_hist_merge(&tfd, &b->tfd);
            if (b->regret.n) {
                double x = (double)(index - first) * step_s / 3600.0, y = hist_mean(&b->regret);
                double wt = (double)b->regret.n;
                sw += wt, sx += wt * x, sy += wt * y, sxx += wt * x * x, sxy += wt * x * y;
                trend_steps++;
            }
            for (int j = 0; j < b->n_groups; j++) {
                const view_group *g = &b->groups[j];
                view_group *tg = NULL;
                for (int k = 0; k < n_groups && !tg; k++)
                    if (strcmp(groups[k].arm, g->arm) == 0 && strcmp(groups[k].strategy, g->strategy) == 0)
                        tg = &groups[k];
                if (!tg && n_groups < STATS_MAX_GROUPS) {
                    tg = &groups[n_groups++];
                    memset(tg, 0, sizeof *tg);
                    copy_name(tg->arm, g->arm);
                    copy_name(tg->strategy, g->strategy);
                }
                if (!tg) continue;
                tg->duels += g->duels;
                for (int k = 0; k < STATS_VOTE_KINDS; k++) tg->votes[k] += g->votes[k];
                tg->agree += g->agree;
                tg->agree_n += g->agree_n;
                stats_hist_merge(&tg->regret, &g->regret);
                stats_hist_merge(&tg->time_to_duel, &g->time_to_duel);
                tg->disagree_sum += g->disagree_sum;
                tg->disagree_n += g->disagree_n;
            }
        }
        for (int s = 0; s < S_COUNT; s++) json_array_append_new(arr[s], num(val[s]));
    }
    for (int s = 0; s < S_COUNT; s++) json_object_set_new(series, SERIES[s], arr[s]);
    double denom = sw * sxx - sx * sx;
    /* a trend over a few steps is noise: at least STATS_TREND_MIN_STEPS steps with duels */
    double trend = trend_steps >= STATS_TREND_MIN_STEPS && denom > 1e-12 ? (sw * sxy - sx * sy) / denom : NAN;
    json_t *totals = json_pack(
        "{s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "duels", (json_int_t)duels,
        "votes", votes_json(votes), "agree", num(ratio(agree, agree_n)), "regret_mean",
        num(hist_mean(&regret)), "regret_p50", num(stats_hist_quantile(&regret, 0.5)),
        "regret_p95", num(stats_hist_quantile(&regret, 0.95)), "regret_trend_per_h", num(trend),
        "disagree_mean", num(hist_mean(&disagree)), "ttd_p50", num(stats_hist_quantile(&ttd, 0.5)),
        "ttd_p95", num(stats_hist_quantile(&ttd, 0.95)), "tfd_p50",
        num(stats_hist_quantile(&tfd, 0.5)), "tfd_p95", num(stats_hist_quantile(&tfd, 0.95)));
    json_t *group_arr = json_array();
    for (int i = 0; group_arr && i < n_groups; i++) {
        const view_group *g = &groups[i];
        json_array_append_new(
            group_arr,
            json_pack("{s:s, s:s, s:I, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "arm", g->arm,
                      "strategy", g->strategy, "duels", (json_int_t)g->duels, "votes",
                      votes_json(g->votes), "agree", num(ratio(g->agree, g->agree_n)),
                      "regret_mean", num(hist_mean(&g->regret)), "regret_p50",
                      num(stats_hist_quantile(&g->regret, 0.5)), "regret_p95",
                      num(stats_hist_quantile(&g->regret, 0.95)), "disagree_mean",
                      num(g->disagree_n ? g->disagree_sum / (double)g->disagree_n : NAN),
                      "ttd_p50", num(stats_hist_quantile(&g->time_to_duel, 0.5)), "ttd_p95",
                      num(stats_hist_quantile(&g->time_to_duel, 0.95))));
    }
    json_t *instances = json_array();
    for (int i = 0; instances && i < v->n_instances; i++) {
        if (v->instances[i].last_ms < 0) continue;
        json_t *o = instance_json(&v->instances[i], now_ms);
        if (o) json_array_append_new(instances, o);
    }
    json_t *out = json_pack("{s:i, s:o, s:I, s:o, s:o, s:o, s:o, s:o, s:o}", "window_s", window_s,
                            "step_s", num(step_s), "now_ms", (json_int_t)now_ms, "t", t, "series",
                            series, "groups", group_arr, "totals", totals, "instances", instances,
                            "trainer",
                            newest_trainer ? trainer_json(&newest_trainer->trainer) : json_null());
    return out;
}
