/* duel.c: the pair selection strategies over an ERM reward matrix [M][E], the page placement,
 * regret, PILAF logit mixing and arena pairing (see duel.h for the rules). Stateless: all
 * scratch lives on the stack within the DUEL_MAX_* bounds, randomness comes from the caller. */
#include "duel.h"

#include <math.h>
#include <string.h>

static const char *const duel_strategy_names[DUEL_STRATEGY_COUNT] = {
    [DUEL_STRATEGY_EE_TS] = "ee_ts",       [DUEL_STRATEGY_BAI_TS] = "bai_ts",
    [DUEL_STRATEGY_UNCERTAINTY] = "uncertainty", [DUEL_STRATEGY_PASSIVE] = "passive",
    [DUEL_STRATEGY_BON] = "bon",           [DUEL_STRATEGY_PILAF] = "pilaf",
    [DUEL_STRATEGY_ARENA] = "arena",
};

int duel_strategy_parse(const char *name, duel_strategy *out, duel_error *err) {
    if (!name || !out) return duel_error_set(err, DUEL_EINVAL, "duel strategy: NULL argument");
    for (int s = 0; s < DUEL_STRATEGY_COUNT; s++)
        if (strcmp(name, duel_strategy_names[s]) == 0) {
            *out = (duel_strategy)s;
            return 0;
        }
    return duel_error_set(err, DUEL_EINVAL,
                          "unknown duel strategy \"%.64s\" (expected ee_ts, bai_ts, uncertainty, "
                          "passive, bon, pilaf or arena)", name);
}

const char *duel_strategy_name(duel_strategy s) {
    if ((int)s < 0 || (int)s >= DUEL_STRATEGY_COUNT) return "unknown";
    return duel_strategy_names[s];
}

bool duel_strategy_uses_rewards(duel_strategy s) {
    return s == DUEL_STRATEGY_EE_TS || s == DUEL_STRATEGY_BAI_TS ||
           s == DUEL_STRATEGY_UNCERTAINTY || s == DUEL_STRATEGY_PASSIVE || s == DUEL_STRATEGY_BON;
}

/* Shape and finiteness checks with the smallest M allowed (2 for a duel, 1 for an arena arm). */
static int check_matrix(const float *r, int M, int E, int min_m, duel_error *err) {
    if (!r) return duel_error_set(err, DUEL_EINVAL, "duel: reward matrix is NULL");
    if (M < min_m || M > DUEL_MAX_CANDIDATES)
        return duel_error_set(err, DUEL_EINVAL, "duel: %d candidates outside %d..%d%s", M, min_m,
                              DUEL_MAX_CANDIDATES,
                              M < min_m && min_m == 2 ? " (a duel needs two answers)" : "");
    if (E < 1 || E > DUEL_MAX_HEADS)
        return duel_error_set(err, DUEL_EINVAL, "duel: %d reward heads outside 1..%d", E,
                              DUEL_MAX_HEADS);
    for (int i = 0; i < M; i++)
        for (int e = 0; e < E; e++) {
            float v = r[(size_t)i * E + e];
            if (!isfinite(v))
                return duel_error_set(err, DUEL_EINVAL, "candidate %d head %d reward is %s", i, e,
                                      isnan(v) ? "NaN" : v > 0 ? "+inf" : "-inf");
        }
    return 0;
}

/* argmax_i r[i][e] over i != skip (skip = -1 for none); ties to the lower index. */
static int head_argmax(const float *r, int M, int E, int e, int skip) {
    int best = -1;
    for (int i = 0; i < M; i++) {
        if (i == skip) continue;
        if (best < 0 || r[(size_t)i * E + e] > r[(size_t)best * E + e]) best = i;
    }
    return best;
}

/* A uniformly random permutation of 0..E-1 (Fisher-Yates, E-1 draws). */
static void random_order(duel_rng *rng, int E, int *order) {
    for (int e = 0; e < E; e++) order[e] = e;
    for (int e = E - 1; e > 0; e--) {
        int k = (int)duel_rng_below(rng, (uint64_t)e + 1);
        int t = order[e];
        order[e] = order[k];
        order[k] = t;
    }
}

/* The E&E second answer given y1 and a head order: the first head whose argmax is not y1, or
 * the best other candidate under the order's first head. */
static void ee_second(const float *r, int M, int E, const int *order, int y1, duel_pair *out) {
    for (int k = 0; k < E; k++) {
        int s = order[k];
        int best = head_argmax(r, M, E, s, -1);
        if (best != y1) {
            out->second = best;
            out->head_second = s;
            return;
        }
    }
    out->second = head_argmax(r, M, E, order[0], y1);
    out->head_second = order[0];
}

int duel_select_ee_ts(const float *r, int M, int E, duel_rng *rng, duel_pair *out,
                      duel_error *err) {
    if (!rng || !out) return duel_error_set(err, DUEL_EINVAL, "ee_ts: NULL argument");
    int rc = check_matrix(r, M, E, 2, err);
    if (rc) return rc;
    int order[DUEL_MAX_HEADS] = {0}; /* E >= 1 is checked; zeroed so -O3 sees it set */
    random_order(rng, E, order);
    out->head_first = order[0];
    out->first = head_argmax(r, M, E, order[0], -1);
    ee_second(r, M, E, order, out->first, out);
    return 0;
}

/* Var_e[r_e(i) - r_e(j)], population variance, two passes in double. */
static double diff_variance(const float *r, int E, int i, int j) {
    const float *ri = r + (size_t)i * E, *rj = r + (size_t)j * E;
    double mean = 0;
    for (int e = 0; e < E; e++) mean += (double)ri[e] - rj[e];
    mean /= E;
    double var = 0;
    for (int e = 0; e < E; e++) {
        double d = (double)ri[e] - rj[e] - mean;
        var += d * d;
    }
    return var / E;
}

int duel_select_bai_ts(const float *r, int M, int E, duel_rng *rng, duel_pair *out,
                       duel_error *err) {
    if (!rng || !out) return duel_error_set(err, DUEL_EINVAL, "bai_ts: NULL argument");
    int rc = check_matrix(r, M, E, 2, err);
    if (rc) return rc;
    int s0 = (int)duel_rng_below(rng, (uint64_t)E);
    out->head_first = s0;
    out->first = head_argmax(r, M, E, s0, -1);
    out->head_second = -1;
    int best = -1;
    double best_var = 0;
    for (int j = 0; j < M; j++) {
        if (j == out->first) continue;
        double v = diff_variance(r, E, out->first, j);
        if (best < 0 || v > best_var) {
            best = j;
            best_var = v;
        }
    }
    out->second = best;
    return 0;
}

int duel_select_uncertainty(const float *r, int M, int E, duel_pair *out, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "uncertainty: NULL argument");
    int rc = check_matrix(r, M, E, 2, err);
    if (rc) return rc;
    int bi = -1, bj = -1;
    double best = 0;
    for (int i = 0; i < M; i++)
        for (int j = i + 1; j < M; j++) {
            double v = diff_variance(r, E, i, j);
            if (bi < 0 || v > best) {
                bi = i;
                bj = j;
                best = v;
            }
        }
    *out = (duel_pair){.first = bi, .second = bj, .head_first = -1, .head_second = -1};
    return 0;
}

int duel_select_passive(const float *r, int M, int E, duel_pair *out, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "passive: NULL argument");
    if (r) {
        int rc = check_matrix(r, M, E, 2, err);
        if (rc) return rc;
    } else if (M < 2 || M > DUEL_MAX_CANDIDATES) {
        return duel_error_set(err, DUEL_EINVAL, "duel: %d candidates outside 2..%d (a duel needs "
                              "two answers)", M, DUEL_MAX_CANDIDATES);
    }
    *out = (duel_pair){.first = 0, .second = 1, .head_first = -1, .head_second = -1};
    return 0;
}

int duel_ensemble_mean(const float *r, int M, int E, double *mean, duel_error *err) {
    if (!mean) return duel_error_set(err, DUEL_EINVAL, "duel: mean output is NULL");
    int rc = check_matrix(r, M, E, 1, err);
    if (rc) return rc;
    for (int i = 0; i < M; i++) {
        double s = 0;
        for (int e = 0; e < E; e++) s += r[(size_t)i * E + e];
        mean[i] = s / E;
    }
    return 0;
}

/* argmax of a double vector, ties to the lower index. */
static int argmax_double(const double *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

int duel_select_bon(const float *r, int M, int E, duel_rng *rng, duel_pair *out,
                    duel_error *err) {
    if (!rng || !out) return duel_error_set(err, DUEL_EINVAL, "bon: NULL argument");
    int rc = check_matrix(r, M, E, 2, err);
    if (rc) return rc;
    double mean[DUEL_MAX_CANDIDATES];
    duel_ensemble_mean(r, M, E, mean, NULL);
    int order[DUEL_MAX_HEADS] = {0}; /* E >= 1 is checked; zeroed so -O3 sees it set */
    random_order(rng, E, order);
    out->first = argmax_double(mean, M);
    out->head_first = -1;
    ee_second(r, M, E, order, out->first, out);
    return 0;
}

int duel_select(duel_strategy s, const float *r, int M, int E, duel_rng *rng, duel_pair *out,
                duel_error *err) {
    switch (s) {
    case DUEL_STRATEGY_EE_TS: return duel_select_ee_ts(r, M, E, rng, out, err);
    case DUEL_STRATEGY_BAI_TS: return duel_select_bai_ts(r, M, E, rng, out, err);
    case DUEL_STRATEGY_UNCERTAINTY: return duel_select_uncertainty(r, M, E, out, err);
    case DUEL_STRATEGY_PASSIVE: return duel_select_passive(r, M, E, out, err);
    case DUEL_STRATEGY_BON: return duel_select_bon(r, M, E, rng, out, err);
    case DUEL_STRATEGY_PILAF:
    case DUEL_STRATEGY_ARENA:
        return duel_error_set(err, DUEL_EINVAL, "duel strategy %s does not select from one reward "
                              "matrix (see duel_pilaf_mix_logits / duel_select_arena)",
                              duel_strategy_name(s));
    }
    return duel_error_set(err, DUEL_EINVAL, "duel: unknown strategy %d", (int)s);
}

void duel_place(const duel_pair *pair, duel_rng *rng, duel_placement *out) {
    bool swap = (duel_rng_next_u64(rng) >> 63) != 0;
    out->side_swap = swap;
    out->a = swap ? pair->second : pair->first;
    out->b = swap ? pair->first : pair->second;
}

int duel_regret(const double *s, int M, int a, int b, double *out, duel_error *err) {
    if (!s || !out) return duel_error_set(err, DUEL_EINVAL, "duel regret: NULL argument");
    if (M < 1 || M > DUEL_MAX_CANDIDATES)
        return duel_error_set(err, DUEL_EINVAL, "duel regret: %d candidates outside 1..%d", M,
                              DUEL_MAX_CANDIDATES);
    if (a < 0 || a >= M || b < 0 || b >= M)
        return duel_error_set(err, DUEL_EINVAL, "duel regret: pair (%d, %d) outside 0..%d", a, b,
                              M - 1);
    for (int i = 0; i < M; i++)
        if (!isfinite(s[i]))
            return duel_error_set(err, DUEL_EINVAL, "duel regret: candidate %d score is %s", i,
                                  isnan(s[i]) ? "NaN" : "infinite");
    double best = s[argmax_double(s, M)];
    double regret = best - (s[a] + s[b]) / 2;
    *out = regret > 0 ? regret : 0; /* best >= each term; guards only rounding */
    return 0;
}

int duel_estimated_regret(const float *r, int M, int E, int a, int b, double *out,
                          duel_error *err) {
    double mean[DUEL_MAX_CANDIDATES];
    int rc = duel_ensemble_mean(r, M, E, mean, err);
    if (rc) return rc;
    return duel_regret(mean, M, a, b, out, err);
}

duel_pilaf_mode duel_pilaf_draw_mode(duel_rng *rng) {
    return (duel_rng_next_u64(rng) >> 63) ? DUEL_PILAF_MIXED : DUEL_PILAF_PLAIN;
}

int duel_pilaf_mix_logits(const float *h_theta, const float *h_ref, int V, double beta,
                          float *plus, float *minus, duel_error *err) {
    if (!h_theta || !h_ref) return duel_error_set(err, DUEL_EINVAL, "pilaf: NULL logits");
    if (V < 1) return duel_error_set(err, DUEL_EINVAL, "pilaf: vocabulary size %d", V);
    if (!(beta >= 0) || !isfinite(beta))
        return duel_error_set(err, DUEL_EINVAL, "pilaf: beta %g must be finite and >= 0", beta);
    /* Validate everything first so that nothing is written on failure (outputs may alias). */
    for (int k = 0; k < V; k++) {
        float t = h_theta[k], f = h_ref[k];
        if (isnan(t) || t == INFINITY)
            return duel_error_set(err, DUEL_EINVAL, "pilaf: policy logit %d is %s", k,
                                  isnan(t) ? "NaN" : "+inf");
        if (isnan(f) || f == INFINITY)
            return duel_error_set(err, DUEL_EINVAL, "pilaf: reference logit %d is %s", k,
                                  isnan(f) ? "NaN" : "+inf");
    }
    for (int k = 0; k < V; k++) {
        double t = h_theta[k], f = h_ref[k];
        double p, m;
        if (isinf(t) || isinf(f)) {
            p = m = -INFINITY;
        } else {
            p = (1.0 + beta) * t - beta * f;
            m = (1.0 - beta) * t + beta * f;
        }
        if (plus) plus[k] = (float)p;
        if (minus) minus[k] = (float)m;
    }
    return 0;
}

int duel_select_arena(const float *r1, int M1, int E1, const float *r2, int M2, int E2,
                      int *out_first, int *out_second, duel_error *err) {
    if (!out_first || !out_second) return duel_error_set(err, DUEL_EINVAL, "arena: NULL output");
    double mean[DUEL_MAX_CANDIDATES];
    int rc = duel_ensemble_mean(r1, M1, E1, mean, err);
    if (rc) return duel_error_prefix(err, "arena arm 1");
    int first = argmax_double(mean, M1);
    rc = duel_ensemble_mean(r2, M2, E2, mean, err);
    if (rc) return duel_error_prefix(err, "arena arm 2");
    *out_first = first;
    *out_second = argmax_double(mean, M2);
    return 0;
}
