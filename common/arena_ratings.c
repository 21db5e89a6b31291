/* arena_ratings.c: the arena tally and its Bradley-Terry fit (see arena_ratings.h).
 * Invariant: every battle in a tally names two different arms below n_arms and scores 0, 1/2
 * or 1 for its first arm; the fit is Newton's method on the aggregated win matrix, which the
 * ridge makes strictly convex, so it has one solution, and at it the r have mean 0. */
#include "arena_ratings.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define FIT_MAX_ITERATIONS 200
#define FIT_TOLERANCE 1e-11 /* largest Newton step (log10 odds) that ends the fit */
#define RATING_SCALE 400.0
#define RATING_MEAN 1000.0

int arena_tally_arm(arena_tally *t, const char *name, duel_error *err) {
    for (int i = 0; i < t->n_arms; i++)
        if (strcmp(t->names[i], name) == 0) return i;
    if (t->n_arms >= ARENA_RATINGS_MAX_ARMS)
        return duel_error_set(err, DUEL_ELIMIT, "arena: more than %d arms", ARENA_RATINGS_MAX_ARMS);
    if (strlen(name) >= ARENA_RATINGS_NAME_MAX || !name[0])
        return duel_error_set(err, DUEL_EFORMAT, "arena: arm name empty or over %d bytes",
                              ARENA_RATINGS_NAME_MAX - 1);
    snprintf(t->names[t->n_arms], ARENA_RATINGS_NAME_MAX, "%s", name);
    return t->n_arms++;
}

int arena_tally_add(arena_tally *t, int first, int second, double first_score, duel_error *err) {
    if (first < 0 || second < 0 || first >= t->n_arms || second >= t->n_arms || first == second)
        return duel_error_set(err, DUEL_EINVAL, "arena: a battle needs two different arms");
    if (first_score != 0 && first_score != 0.5 && first_score != 1)
        return duel_error_set(err, DUEL_EINVAL, "arena: a battle scores 0, 1/2 or 1");
    if (t->n_battles == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        arena_battle *grown = realloc(t->battles, cap * sizeof *grown);
        if (!grown) return duel_error_set(err, DUEL_ENOMEM, "arena: out of memory");
        t->battles = grown;
        t->cap = cap;
    }
    t->battles[t->n_battles++] = (arena_battle){first, second, first_score};
    return DUEL_OK;
}

void arena_tally_free(arena_tally *t) {
    free(t->battles);
    memset(t, 0, sizeof *t);
}

static bool field_is(const vote_entry_field *f, const char *text) {
    return f && f->value_len == strlen(text) && memcmp(f->value, text, f->value_len) == 0;
}

static bool field_int(const vote_entry_field *f, long long *out) {
    char buf[32];
    if (!f || f->value_len == 0 || f->value_len >= sizeof buf) return false;
    memcpy(buf, f->value, f->value_len);
    buf[f->value_len] = '\0';
    char *end;
    *out = strtoll(buf, &end, 10);
    return *end == '\0';
}

/* The arena vote's two arm names from gen_params, or a reason. */
static const char *arena_names(const json_t *gp, char names[2][ARENA_RATINGS_NAME_MAX]) {
    const json_t *arms = json_object_get(gp, "arena_arms");
    const json_t *versions = json_object_get(gp, "arena_versions");
    for (int k = 0; k < 2; k++) {
        if (json_is_array(arms) && json_array_size(arms) == 2) {
            const char *s = json_string_value(json_array_get(arms, (size_t)k));
            if (!s || !s[0] || strlen(s) >= ARENA_RATINGS_NAME_MAX) return "arena_arms holds a bad name";
            snprintf(names[k], ARENA_RATINGS_NAME_MAX, "%s", s);
        } else if (json_is_array(versions) && json_array_size(versions) == 2) {
            const json_t *v = json_array_get(versions, (size_t)k);
            if (!json_is_integer(v) || json_integer_value(v) < 0) return "arena_versions holds a bad version";
            if (json_integer_value(v) == 0) snprintf(names[k], ARENA_RATINGS_NAME_MAX, "base");
            else snprintf(names[k], ARENA_RATINGS_NAME_MAX, "v%lld", (long long)json_integer_value(v));
        } else {
            return "gen_params has neither arena_arms nor arena_versions";
        }
    }
    return strcmp(names[0], names[1]) == 0 ? "both arena arms are the same" : NULL;
}

static int skip(arena_tally *t, const char *reason) {
    t->skipped++;
    snprintf(t->last_skip, sizeof t->last_skip, "%.159s", reason);
    return 0;
}

int arena_tally_add_vote(arena_tally *t, const vote_entry_field *fields, int n_fields) {
    if (!field_is(vote_entry_field_find(fields, n_fields, "strategy"), "arena")) return 0;
    const vote_entry_field *choice = vote_entry_field_find(fields, n_fields, "choice");
    const vote_entry_field *gp = vote_entry_field_find(fields, n_fields, "gen_params");
    vote_choice c;
    long long chosen, rejected;
    if (!choice || vote_choice_parse(choice->value, choice->value_len, &c))
        return skip(t, "an arena vote without a valid choice");
    if (!field_int(vote_entry_field_find(fields, n_fields, "chosen_idx"), &chosen) ||
        !field_int(vote_entry_field_find(fields, n_fields, "rejected_idx"), &rejected))
        return skip(t, "an arena vote without chosen_idx and rejected_idx");
    json_t *doc = gp ? json_loadb(gp->value, gp->value_len, 0, NULL) : NULL;
    long long split = json_integer_value(json_object_get(doc, "arena_split"));
    char names[2][ARENA_RATINGS_NAME_MAX];
    const char *why = doc ? arena_names(doc, names) : "an arena vote without gen_params JSON";
    json_decref(doc);
    if (why) return skip(t, why);
    if (split <= 0 || chosen < 0 || rejected < 0)
        return skip(t, "an arena vote without a positive arena_split");
    int chosen_side = chosen < split ? 0 : 1, rejected_side = rejected < split ? 0 : 1;
    if (chosen_side == rejected_side) return skip(t, "an arena vote whose pair came from one arm");
    duel_error err = {0};
    int a = arena_tally_arm(t, names[chosen_side], &err);
    int b = a < 0 ? a : arena_tally_arm(t, names[rejected_side], &err);
    if (a < 0 || b < 0) return skip(t, err.message);
    /* chosen is the winner on a or b; on tie and both_bad the pair shares the point */
    double score = vote_choice_is_pair(c) ? 1.0 : 0.5;
    if (arena_tally_add(t, a, b, score, &err)) return skip(t, err.message);
    return 1;
}

/* ---- the fit ------------------------------------------------------------------------------- */

/* Solves h x = g (n x n, symmetric positive definite) in place by Gaussian elimination with
 * partial pivoting; g becomes x. */
static int solve(int n, double *h, double *g) {
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(h[r * n + c]) > fabs(h[p * n + c])) p = r;
        if (h[p * n + c] == 0) return -1;
        if (p != c) {
            for (int k = 0; k < n; k++) {
                double tmp = h[c * n + k];
                h[c * n + k] = h[p * n + k];
                h[p * n + k] = tmp;
            }
            double tmp = g[c];
            g[c] = g[p];
            g[p] = tmp;
        }
        for (int r = c + 1; r < n; r++) {
            double f = h[r * n + c] / h[c * n + c];
            for (int k = c; k < n; k++) h[r * n + k] -= f * h[c * n + k];
            g[r] -= f * g[c];
        }
    }
    for (int c = n - 1; c >= 0; c--) {
        for (int k = c + 1; k < n; k++) g[c] -= h[c * n + k] * g[k];
        g[c] /= h[c * n + c];
    }
    return 0;
}

/* log(1 + e^x) without overflow */
static double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

/* Negative log-likelihood plus ridge of r given win[i][j] (score of i against j). */
static double objective(int n, const double *win, const double *r) {
    const double c = log(10.0);
    double f = 0;
    for (int i = 0; i < n; i++) {
        f += ARENA_RATINGS_RIDGE * r[i] * r[i];
        for (int j = 0; j < n; j++)
            if (win[i * n + j] > 0) f += win[i * n + j] * softplus(-c * (r[i] - r[j]));
    }
    return f;
}

static int fit_matrix(int n, const double *win, double *r, double *work, duel_error *err) {
    const double c = log(10.0);
    double *h = work, *g = work + (size_t)n * n, *trial = g + n;
    for (int i = 0; i < n; i++) r[i] = 0;
    double f = objective(n, win, r);
    for (int it = 0; it < FIT_MAX_ITERATIONS; it++) {
        memset(h, 0, (size_t)n * n * sizeof *h);
        for (int i = 0; i < n; i++) {
            g[i] = 2 * ARENA_RATINGS_RIDGE * r[i];
            h[i * n + i] = 2 * ARENA_RATINGS_RIDGE;
        }
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) {
                double games = win[i * n + j] + win[j * n + i];
                if (games <= 0) continue;
                double p = 1 / (1 + exp(-c * (r[i] - r[j]))); /* P(i beats j) */
                double d = c * (win[i * n + j] - games * p);  /* -dF/dr_i */
                g[i] -= d;
                g[j] += d;
                double w = c * c * games * p * (1 - p);
                h[i * n + i] += w;
                h[j * n + j] += w;
                h[i * n + j] -= w;
                h[j * n + i] -= w;
            }
        if (solve(n, h, g)) return duel_error_set(err, DUEL_EINVAL, "arena: singular fit");
        /* Newton step -g, halved until the objective does not rise (it is convex) */
        double step = 1, largest = 0;
        for (int i = 0; i < n; i++) largest = fmax(largest, fabs(g[i]));
        for (int halvings = 0; halvings < 50; halvings++, step /= 2) {
            for (int i = 0; i < n; i++) trial[i] = r[i] - step * g[i];
            double ft = objective(n, win, trial);
            if (ft <= f) {
                f = ft;
                break;
            }
        }
        memcpy(r, trial, (size_t)n * sizeof *r);
        if (largest * step < FIT_TOLERANCE) break;
    }
    return DUEL_OK;
}

int arena_ratings_fit(int n_arms, const arena_battle *battles, const unsigned *weights, size_t n,
                      double *ratings, duel_error *err) {
    if (n_arms <= 0 || n_arms > ARENA_RATINGS_MAX_ARMS)
        return duel_error_set(err, DUEL_EINVAL, "arena: %d arms (1 to %d)", n_arms, ARENA_RATINGS_MAX_ARMS);
    size_t nn = (size_t)n_arms * n_arms;
    double *win = calloc(nn * 2 + (size_t)n_arms * 3, sizeof *win);
    if (!win) return duel_error_set(err, DUEL_ENOMEM, "arena: out of memory");
    for (size_t k = 0; k < n; k++) {
        const arena_battle *b = &battles[k];
        double w = weights ? weights[k] : 1;
        win[(size_t)b->first * n_arms + b->second] += w * b->first_score;
        win[(size_t)b->second * n_arms + b->first] += w * (1 - b->first_score);
    }
    double *r = ratings;
    int rc = fit_matrix(n_arms, win, r, win + nn, err);
    for (int i = 0; i < n_arms; i++) ratings[i] = RATING_SCALE * r[i] + RATING_MEAN;
    free(win);
    return rc;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of sorted[0..n) with linear interpolation (numpy's default). */
static double quantile(const double *sorted, int n, double q) {
    double pos = q * (n - 1);
    int lo = (int)floor(pos);
    if (lo >= n - 1) return sorted[n - 1];
    return sorted[lo] + (pos - lo) * (sorted[lo + 1] - sorted[lo]);
}

int arena_ratings_compute(const arena_tally *t, int rounds, uint64_t seed, arena_rating *out,
                          duel_error *err) {
    int n = t->n_arms;
    if (n == 0) return DUEL_OK;
    if (rounds < 1) return duel_error_set(err, DUEL_EINVAL, "arena: at least one bootstrap round");
    double *point = calloc((size_t)n, sizeof *point);
    double *samples = calloc((size_t)n * rounds, sizeof *samples);
    unsigned *weights = calloc(t->n_battles ? t->n_battles : 1, sizeof *weights);
    double *column = calloc((size_t)rounds, sizeof *column);
    int rc = (!point || !samples || !weights || !column)
                 ? duel_error_set(err, DUEL_ENOMEM, "arena: out of memory")
                 : arena_ratings_fit(n, t->battles, NULL, t->n_battles, point, err);
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    for (int k = 0; !rc && k < rounds; k++) {
        /* a resample of the battles with replacement, as counts per battle */
        memset(weights, 0, t->n_battles * sizeof *weights);
        for (size_t s = 0; s < t->n_battles; s++) weights[duel_rng_below(&rng, t->n_battles)]++;
        double *r = samples + (size_t)k * n;
        rc = arena_ratings_fit(n, t->battles, weights, t->n_battles, r, err);
    }
    for (int i = 0; !rc && i < n; i++) {
        for (int k = 0; k < rounds; k++) column[k] = samples[(size_t)k * n + i];
        qsort(column, (size_t)rounds, sizeof *column, compare_double);
        out[i] = (arena_rating){point[i], quantile(column, rounds, 0.025),
                                quantile(column, rounds, 0.975), 1, 0, 0};
    }
    for (size_t s = 0; !rc && s < t->n_battles; s++) {
        const arena_battle *b = &t->battles[s];
        out[b->first].battles++;
        out[b->second].battles++;
        out[b->first].score += b->first_score;
        out[b->second].score += 1 - b->first_score;
    }
    for (int i = 0; !rc && i < n; i++)
        for (int j = 0; j < n; j++)
            if (out[j].lower > out[i].upper) out[i].rank++;
    free(point);
    free(samples);
    free(weights);
    free(column);
    return rc;
}

json_t *arena_ratings_json(const arena_tally *t, int rounds, uint64_t seed, duel_error *err) {
    arena_rating r[ARENA_RATINGS_MAX_ARMS];
    if (arena_ratings_compute(t, rounds, seed, r, err)) return NULL;
    int order[ARENA_RATINGS_MAX_ARMS];
    for (int i = 0; i < t->n_arms; i++) order[i] = i;
    for (int i = 1; i < t->n_arms; i++) /* by rating, best first (insertion: few arms) */
        for (int j = i; j > 0 && r[order[j]].rating > r[order[j - 1]].rating; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    json_t *arms = json_array();
    for (int k = 0; arms && k < t->n_arms; k++) {
        const arena_rating *a = &r[order[k]];
        json_array_append_new(arms, json_pack("{s:s, s:f, s:f, s:f, s:i, s:I, s:f}", "name",
                                              t->names[order[k]], "rating", a->rating, "lower",
                                              a->lower, "upper", a->upper, "rank", a->rank,
                                              "battles", (json_int_t)a->battles, "score", a->score));
    }
    json_t *o = arms ? json_pack("{s:o, s:I, s:I, s:i, s:I}", "arms", arms, "battles",
                                 (json_int_t)t->n_battles, "skipped", (json_int_t)t->skipped,
                                 "rounds", rounds, "seed", (json_int_t)seed)
                     : NULL;
    if (o && t->skipped) json_object_set_new(o, "last_skip", json_string(t->last_skip));
    if (!o) duel_error_set(err, DUEL_ENOMEM, "arena: out of memory");
    return o;
}
