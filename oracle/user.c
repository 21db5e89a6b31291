/* user.c: a simulated user's judgement (oracle.h, "simulated users"): the oracle section of the
 * configuration, the opened oracle (lexical, rm or judge) with its noise model, the checks that
 * run before any work, the think-time distributions and session lengths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_util.h"
#include "oracle.h"

struct oracle_user {
    oracle_config config;
    oracle_rm *rm; /* rm only */
};

void oracle_config_default(oracle_config *c) {
    memset(c, 0, sizeof *c);
    c->kind = ORACLE_LEXICAL;
    oracle_lexical_config_default(&c->lexical);
    oracle_preference_config_default(&c->preference);
    oracle_judge_config_default(&c->judge);
}

int oracle_config_from_json(const json_t *obj, const char *source, oracle_config *c, duel_error *err) {
    static const char *const keys[] = {"kind", "rm_path", "lexical", "preference", "judge"};
    if (!json_is_object(obj)) return duel_error_set(err, DUEL_EFORMAT, "%s: must be a JSON object", source);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        size_t i = 0;
        while (i < sizeof keys / sizeof *keys && strcmp(key, keys[i]) != 0) i++;
        if (i == sizeof keys / sizeof *keys)
            return duel_error_set(err, DUEL_EFORMAT, "%s: unknown key \"%.64s\"", source, key);
    }
    oracle_config t = *c;
    char kind[32] = "", sub[256];
    int rc = duel_json_get_string(obj, "kind", kind, sizeof kind, source, err);
    if (rc == 0 && kind[0] && oracle_kind_parse(kind, &t.kind, err)) {
        duel_error_prefix(err, "%s", source);
        if (err) err->code = DUEL_EFORMAT;
        return DUEL_EFORMAT;
    }
    if (rc == 0) rc = duel_json_get_string(obj, "rm_path", t.rm_path, sizeof t.rm_path, source, err);
    if (rc == 0 && json_object_get(obj, "lexical")) {
        snprintf(sub, sizeof sub, "%s.lexical", source);
        rc = oracle_lexical_config_from_json(json_object_get(obj, "lexical"), sub, &t.lexical, err);
    }
    if (rc == 0 && json_object_get(obj, "preference")) {
        snprintf(sub, sizeof sub, "%s.preference", source);
        rc = oracle_preference_config_from_json(json_object_get(obj, "preference"), sub, &t.preference, err);
    }
    if (rc == 0 && json_object_get(obj, "judge")) {
        snprintf(sub, sizeof sub, "%s.judge", source);
        rc = oracle_judge_config_from_json(json_object_get(obj, "judge"), sub, &t.judge, err);
    }
    if (rc == 0) *c = t;
    return rc;
}

int oracle_user_open(const oracle_config *c, oracle_user **out, duel_error *err) {
    *out = NULL;
    int rc;
    if ((rc = oracle_preference_config_validate(&c->preference, err))) return rc;
    if (c->kind == ORACLE_LEXICAL && (rc = oracle_lexical_config_validate(&c->lexical, err))) return rc;
    if (c->kind == ORACLE_JUDGE && (rc = oracle_judge_config_validate(&c->judge, err))) return rc;
    if (c->kind == ORACLE_RM && !c->rm_path[0])
        return duel_error_set(err, DUEL_EINVAL, "oracle.rm_path: the rm oracle needs a reward model checkpoint");
    oracle_user *u = calloc(1, sizeof *u);
    if (!u) return duel_error_set(err, DUEL_ENOMEM, "oracle: out of memory");
    u->config = *c;
    if (c->kind == ORACLE_RM && (rc = oracle_rm_load(c->rm_path, &u->rm, err))) {
        duel_error_prefix(err, "oracle.rm_path");
        free(u);
        return rc;
    }
    *out = u;
    return 0;
}

void oracle_user_close(oracle_user *u) {
    if (!u) return;
    oracle_rm_free(u->rm);
    free(u);
}

const oracle_config *oracle_user_config(const oracle_user *u) { return &u->config; }

bool oracle_user_has_scores(const oracle_user *u) { return u->config.kind != ORACLE_JUDGE; }

int oracle_user_score(oracle_user *u, const oracle_turn *turn, const char *answer, double *score,
                      duel_error *err) {
    switch (u->config.kind) {
    case ORACLE_LEXICAL:
        if (!turn->reference)
            return duel_error_set(err, DUEL_EINVAL, "lexical oracle: \"%.80s\" has no reference answer",
                                  turn->prompt);
        return oracle_lexical_score(&u->config.lexical, turn->reference, strlen(turn->reference), answer,
                                    strlen(answer), score, NULL, err);
    case ORACLE_RM: return oracle_rm_score_text(u->rm, turn->prompt, answer, score, err);
    case ORACLE_JUDGE: break;
    }
    return duel_error_set(err, DUEL_EINVAL, "the judge oracle compares answers; it gives no scores");
}

int oracle_user_check(oracle_user *u, const oracle_prompt_set *set, duel_error *err) {
    if (!set || set->count == 0) return duel_error_set(err, DUEL_EINVAL, "oracle: no prompts to judge");
    int rc = 0;
    if (u->config.kind == ORACLE_LEXICAL) {
        for (int i = 0; rc == 0 && i < set->count; i++)
            for (int t = 0; rc == 0 && t < set->items[i].num_turns; t++) {
                const oracle_turn *turn = &set->items[i].turns[t];
                double s;
                if (!turn->reference)
                    rc = duel_error_set(err, DUEL_EFORMAT, "%s:%d: no reference answer for the lexical oracle",
                                        set->path, set->items[i].line);
                else if ((rc = oracle_user_score(u, turn, turn->reference, &s, err)))
                    duel_error_prefix(err, "%s:%d", set->path, set->items[i].line);
            }
        return rc;
    }
    const oracle_turn *first = &set->items[0].turns[0];
    if (u->config.kind == ORACLE_RM) {
        double s;
        if ((rc = oracle_user_score(u, first, "", &s, err))) duel_error_prefix(err, "oracle.rm_path %s", u->config.rm_path);
        return rc;
    }
    oracle_judge_result jr;
    if ((rc = oracle_judge_compare(&u->config.judge, first->prompt, "yes", "no", &jr, err)))
        duel_error_prefix(err, "oracle.judge.url %s: the probe comparison failed", u->config.judge.url);
    return rc;
}

int oracle_user_vote(oracle_user *u, const oracle_turn *turn, const char *a, const char *b, duel_rng *rng,
                     oracle_vote *out, duel_error *err) {
    int rc;
    if (u->config.kind != ORACLE_JUDGE) {
        double sa, sb;
        oracle_choice ch;
        if ((rc = oracle_user_score(u, turn, a, &sa, err)) || (rc = oracle_user_score(u, turn, b, &sb, err)) ||
            (rc = oracle_prefer(&u->config.preference, sa, sb, rng, &ch, err)))
            return rc;
        out->choice = ch;
        out->score_a = sa;
        out->score_b = sb;
        return 0;
    }
    oracle_judge_result jr;
    if ((rc = oracle_judge_compare(&u->config.judge, turn->prompt, a, b, &jr, err))) return rc;
    const double flip = u->config.preference.flip_probability;
    if (flip > 0 && jr.choice != ORACLE_TIE) {
        if (!rng) return duel_error_set(err, DUEL_EINVAL, "oracle preference: flipped labels need an rng");
        if (duel_rng_uniform(rng) < flip) jr.choice = jr.choice == ORACLE_PREFER_A ? ORACLE_PREFER_B : ORACLE_PREFER_A;
    }
    out->choice = jr.choice;
    out->score_a = out->score_b = NAN;
    return 0;
}

/* ---- think time and sessions --------------------------------------------------------------- */

#define THINK_DEFAULT_MAX_MS 60000.0

int oracle_think_parse(const char *spec, oracle_think_config *out, duel_error *err) {
    static const struct {
        const char *name;
        oracle_think_kind kind;
        int args;
    } kinds[] = {{"fixed", ORACLE_THINK_FIXED, 1},
                 {"uniform", ORACLE_THINK_UNIFORM, 2},
                 {"exp", ORACLE_THINK_EXPONENTIAL, 1},
                 {"lognormal", ORACLE_THINK_LOGNORMAL, 2}};
    memset(out, 0, sizeof *out);
    out->max_ms = THINK_DEFAULT_MAX_MS;
    if (!spec) return duel_error_set(err, DUEL_EINVAL, "think time: no spec");
    if (strcmp(spec, "0") == 0 || strcmp(spec, "none") == 0) return 0;
    const char *colon = strchr(spec, ':');
    size_t name_len = colon ? (size_t)(colon - spec) : strlen(spec);
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        if (strlen(kinds[k].name) != name_len || strncmp(spec, kinds[k].name, name_len) != 0) continue;
        double v[2] = {0, 0};
        int n = 0;
        const char *p = colon;
        while (p && *p == ':' && n < 2) {
            char *end;
            v[n++] = strtod(p + 1, &end);
            if (end == p + 1) break;
            p = end;
        }
        if (n != kinds[k].args || (p && *p) || !isfinite(v[0]) || !isfinite(v[1]) || v[0] < 0 || v[1] < 0 ||
            (kinds[k].kind == ORACLE_THINK_UNIFORM && v[1] < v[0]))
            break;
        out->kind = kinds[k].kind;
        out->a = v[0];
        out->b = v[1];
        return 0;
    }
    return duel_error_set(err, DUEL_EINVAL,
                          "think time \"%.64s\": expected 0, fixed:MS, uniform:LO:HI (LO <= HI), exp:MEAN or "
                          "lognormal:MEDIAN:SIGMA, numbers >= 0",
                          spec);
}

double oracle_think_ms(const oracle_think_config *c, duel_rng *rng) {
    double ms = 0;
    switch (c->kind) {
    case ORACLE_THINK_NONE: return 0;
    case ORACLE_THINK_FIXED: ms = c->a; break;
    case ORACLE_THINK_UNIFORM: ms = c->a + (c->b - c->a) * duel_rng_uniform(rng); break;
    case ORACLE_THINK_EXPONENTIAL: ms = -c->a * log1p(-duel_rng_uniform(rng)); break;
    case ORACLE_THINK_LOGNORMAL: ms = c->a * exp(c->b * duel_rng_normal(rng)); break;
    }
    return ms < c->max_ms ? ms : c->max_ms;
}

int oracle_session_turns(double mean_turns, int max_turns, duel_rng *rng) {
    if (!(mean_turns > 1) || max_turns <= 1) return 1;
    /* 1 + Geometric(p) on {0, 1, ...} with mean (1 - p) / p = mean_turns - 1 */
    const double p = 1.0 / mean_turns;
    int n = 1;
    while (n < max_turns && duel_rng_uniform(rng) >= p) n++;
    return n;
}
