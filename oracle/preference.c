/* preference.c: the noise model of a simulated user: turning two oracle scores into a vote
 * (both-bad threshold, tie margin, deterministic or Bradley-Terry label, flip), the matching
 * win probability, and the oracle kind and choice names. */
#include <math.h>
#include <string.h>

#include "oracle.h"

static const char *const oracle_kind_names[] = {
    [ORACLE_LEXICAL] = "lexical", [ORACLE_RM] = "rm", [ORACLE_JUDGE] = "judge"};

int oracle_kind_parse(const char *name, oracle_kind *out, duel_error *err) {
    if (!name || !out) return duel_error_set(err, DUEL_EINVAL, "oracle kind: NULL argument");
    for (int k = 0; k < 3; k++)
        if (strcmp(name, oracle_kind_names[k]) == 0) {
            *out = (oracle_kind)k;
            return 0;
        }
    return duel_error_set(err, DUEL_EINVAL,
                          "unknown oracle kind \"%.64s\" (expected lexical, rm or judge)", name);
}

const char *oracle_kind_name(oracle_kind kind) {
    if ((int)kind < 0 || (int)kind > ORACLE_JUDGE) return "unknown";
    return oracle_kind_names[kind];
}

const char *oracle_choice_name(oracle_choice choice) {
    switch (choice) {
    case ORACLE_PREFER_A: return "a";
    case ORACLE_PREFER_B: return "b";
    case ORACLE_TIE: return "tie";
    case ORACLE_BOTH_BAD: return "both_bad";
    }
    return "unknown";
}

void oracle_preference_config_default(oracle_preference_config *c) {
    memset(c, 0, sizeof *c);
    c->stochastic = false;
    c->temperature = 1.0;
}

int oracle_preference_config_validate(const oracle_preference_config *c, duel_error *err) {
    if (!c) return duel_error_set(err, DUEL_EINVAL, "oracle preference: config is NULL");
    if (!isfinite(c->temperature) || !(c->temperature > 0))
        return duel_error_set(err, DUEL_EINVAL,
                              "oracle preference: temperature %g must be finite and > 0",
                              c->temperature);
    if (!isfinite(c->tie_margin) || c->tie_margin < 0)
        return duel_error_set(err, DUEL_EINVAL,
                              "oracle preference: tie_margin %g must be finite and >= 0",
                              c->tie_margin);
    if (!(c->flip_probability >= 0 && c->flip_probability <= 1))
        return duel_error_set(err, DUEL_EINVAL,
                              "oracle preference: flip_probability %g must be in [0, 1]",
                              c->flip_probability);
    if (!isfinite(c->both_bad_below))
        return duel_error_set(err, DUEL_EINVAL,
                              "oracle preference: both_bad_below %g must be finite",
                              c->both_bad_below);
    return 0;
}

double oracle_preference_probability(double delta, double tau) {
    double x = delta / tau;
    if (isnan(x)) return NAN;
    /* exp of a non-positive number only: no overflow for any x. */
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* Whether the scores tie: |ra - rb| <= margin, computed without overflow for huge finite rewards
 * (their difference may be inf). A Bradley-Terry user with margin 0 never ties: equal scores
 * are a coin flip, as the model says. */
static bool is_tie(const oracle_preference_config *c, double ra, double rb) {
    if (c->stochastic && c->tie_margin == 0) return false;
    double d = ra - rb;
    return isfinite(d) && fabs(d) <= c->tie_margin;
}

int oracle_prefer(const oracle_preference_config *c, double ra, double rb, duel_rng *rng,
                  oracle_choice *out, duel_error *err) {
    if (!c || !out) return duel_error_set(err, DUEL_EINVAL, "oracle preference: NULL argument");
    if (!isfinite(ra) || !isfinite(rb))
        return duel_error_set(err, DUEL_EINVAL, "oracle preference: reward of %s is %s",
                              isfinite(ra) ? "b" : "a",
                              isnan(isfinite(ra) ? rb : ra) ? "NaN" : "infinite");
    int rc = oracle_preference_config_validate(c, err);
    if (rc) return rc;
    if (c->both_bad && ra < c->both_bad_below && rb < c->both_bad_below) {
        *out = ORACLE_BOTH_BAD;
        return 0;
    }
    if (is_tie(c, ra, rb)) {
        *out = ORACLE_TIE;
        return 0;
    }
    const bool draw_label = c->stochastic, draw_flip = c->flip_probability > 0;
    if ((draw_label || draw_flip) && !rng)
        return duel_error_set(err, DUEL_EINVAL, "oracle preference: %s labels need an rng",
                              draw_label ? "stochastic" : "flipped");
    bool a_wins;
    if (draw_label) {
        /* ra - rb may overflow to inf for huge finite rewards; the probability is then 0 or 1. */
        a_wins = duel_rng_uniform(rng) < oracle_preference_probability(ra - rb, c->temperature);
    } else {
        a_wins = ra > rb;
    }
    if (draw_flip && duel_rng_uniform(rng) < c->flip_probability) a_wins = !a_wins;
    *out = a_wins ? ORACLE_PREFER_A : ORACLE_PREFER_B;
    return 0;
}

double oracle_preference_win_probability(const oracle_preference_config *c, double ra, double rb) {
    if (!c || !isfinite(ra) || !isfinite(rb)) return NAN;
    double p;
    if (is_tie(c, ra, rb)) return 0.5; /* a flip leaves a half a half */
    if (c->stochastic) p = oracle_preference_probability(ra - rb, c->temperature);
    else p = ra > rb ? 1.0 : 0.0;
    return (1 - c->flip_probability) * p + c->flip_probability * (1 - p);
}
