/* preference.c: turning two oracle scores into a preference (deterministic, or Bernoulli with
 * probability sigmoid(delta/tau)), and the oracle kind and choice names. */
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
    }
    return "unknown";
}

void oracle_preference_config_default(oracle_preference_config *c) {
    c->stochastic = false;
    c->temperature = 1.0;
}

double oracle_preference_probability(double delta, double tau) {
    double x = delta / tau;
    if (isnan(x)) return NAN;
    /* exp of a non-positive number only: no overflow for any x. */
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

int oracle_prefer(const oracle_preference_config *c, double ra, double rb, duel_rng *rng,
                  oracle_choice *out, duel_error *err) {
    if (!c || !out) return duel_error_set(err, DUEL_EINVAL, "oracle preference: NULL argument");
    if (!isfinite(ra) || !isfinite(rb))
        return duel_error_set(err, DUEL_EINVAL, "oracle preference: reward of %s is %s",
                              isfinite(ra) ? "b" : "a",
                              isnan(isfinite(ra) ? rb : ra) ? "NaN" : "infinite");
    if (!c->stochastic) {
        *out = ra > rb ? ORACLE_PREFER_A : rb > ra ? ORACLE_PREFER_B : ORACLE_TIE;
        return 0;
    }
    if (!isfinite(c->temperature) || !(c->temperature > 0))
        return duel_error_set(err, DUEL_EINVAL,
                              "oracle preference: temperature %g must be finite and > 0",
                              c->temperature);
    if (!rng)
        return duel_error_set(err, DUEL_EINVAL, "oracle preference: stochastic labels need an rng");
    /* ra - rb may overflow to inf for huge finite rewards; the probability is then 0 or 1. */
    double p = oracle_preference_probability(ra - rb, c->temperature);
    *out = duel_rng_uniform(rng) < p ? ORACLE_PREFER_A : ORACLE_PREFER_B;
    return 0;
}
