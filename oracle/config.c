/* config.c: the oracles' settings read from JSON objects (strict: unknown keys and wrong types
 * are errors naming the source and key; the result is validated like a hand-built config). */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "json_util.h"
#include "oracle.h"

/* Rejects any key of obj not in keys[0..n). */
static int check_keys(const json_t *obj, const char *source, const char *const *keys, size_t n,
                      duel_error *err) {
    if (!json_is_object(obj))
        return duel_error_set(err, DUEL_EFORMAT, "%s: must be a JSON object", source);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        (void)value;
        size_t i = 0;
        while (i < n && strcmp(key, keys[i]) != 0) i++;
        if (i == n)
            return duel_error_set(err, DUEL_EFORMAT, "%s: unknown key \"%.64s\"", source, key);
    }
    return 0;
}

/* Prefixes a validation message with the source so that it names where the value came from. */
static int validated(int rc, const char *source, duel_error *err) {
    if (rc) {
        duel_error_prefix(err, "%s", source);
        return err ? err->code : rc;
    }
    return 0;
}

int oracle_lexical_config_from_json(const json_t *obj, const char *source,
                                    oracle_lexical_config *c, duel_error *err) {
    static const char *const keys[] = {"overlap_weight", "length_weight", "length_target_ratio",
                                       "repetition_weight", "char_ngram_weight"};
    int rc = check_keys(obj, source, keys, 5, err);
    if (rc) return rc;
    oracle_lexical_config t = *c;
    if ((rc = duel_json_get_double(obj, keys[0], &t.overlap_weight, source, err)) ||
        (rc = duel_json_get_double(obj, keys[1], &t.length_weight, source, err)) ||
        (rc = duel_json_get_double(obj, keys[2], &t.length_target_ratio, source, err)) ||
        (rc = duel_json_get_double(obj, keys[3], &t.repetition_weight, source, err)) ||
        (rc = duel_json_get_double(obj, keys[4], &t.char_ngram_weight, source, err)))
        return rc;
    if ((rc = validated(oracle_lexical_config_validate(&t, err), source, err))) return rc;
    *c = t;
    return 0;
}

int oracle_preference_config_from_json(const json_t *obj, const char *source,
                                       oracle_preference_config *c, duel_error *err) {
    static const char *const keys[] = {"stochastic", "temperature", "tie_margin",
                                       "flip_probability", "both_bad", "both_bad_below"};
    int rc = check_keys(obj, source, keys, 6, err);
    if (rc) return rc;
    oracle_preference_config t = *c;
    if ((rc = duel_json_get_bool(obj, keys[0], &t.stochastic, source, err)) ||
        (rc = duel_json_get_double(obj, keys[1], &t.temperature, source, err)) ||
        (rc = duel_json_get_double(obj, keys[2], &t.tie_margin, source, err)) ||
        (rc = duel_json_get_double(obj, keys[3], &t.flip_probability, source, err)) ||
        (rc = duel_json_get_bool(obj, keys[4], &t.both_bad, source, err)) ||
        (rc = duel_json_get_double(obj, keys[5], &t.both_bad_below, source, err)))
        return rc;
    if (oracle_preference_config_validate(&t, err)) { /* a value out of range: a bad file */
        duel_error_prefix(err, "%s", source);
        if (err) err->code = DUEL_EFORMAT;
        return DUEL_EFORMAT;
    }
    *c = t;
    return 0;
}

int oracle_judge_config_from_json(const json_t *obj, const char *source, oracle_judge_config *c,
                                  duel_error *err) {
    static const char *const keys[] = {"url", "model", "connect_timeout_ms", "read_timeout_ms",
                                       "max_attempts", "backoff_ms", "backoff_max_ms",
                                       "max_tokens", "temperature", "both_orders"};
    int rc = check_keys(obj, source, keys, 10, err);
    if (rc) return rc;
    oracle_judge_config t = *c;
    if ((rc = duel_json_get_string(obj, "url", t.url, sizeof t.url, source, err)) ||
        (rc = duel_json_get_string(obj, "model", t.model, sizeof t.model, source, err)) ||
        (rc = duel_json_get_double(obj, "temperature", &t.temperature, source, err)) ||
        (rc = duel_json_get_bool(obj, "both_orders", &t.both_orders, source, err)))
        return rc;
    int *ints[] = {&t.connect_timeout_ms, &t.read_timeout_ms, &t.max_attempts, &t.backoff_ms,
                   &t.backoff_max_ms, &t.max_tokens};
    for (size_t i = 0; i < 6; i++) {
        long long v = *ints[i];
        if ((rc = duel_json_get_int(obj, keys[2 + i], 0, INT_MAX, &v, source, err))) return rc;
        *ints[i] = (int)v;
    }
    if ((rc = validated(oracle_judge_config_validate(&t, err), source, err))) return rc;
    *c = t;
    return 0;
}
