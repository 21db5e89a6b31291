/* json_util.c: strict jansson loading and typed getters (see json_util.h). */
#include "json_util.h"

#include <stdlib.h>
#include <string.h>

#include "file_map.h"

int duel_json_parse(const char *text, size_t len, const char *source, json_t **out,
                    duel_error *err) {
    json_error_t jerr;
    *out = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!*out)
        return duel_error_set(err, DUEL_EFORMAT, "%s: invalid JSON at line %d column %d: %s",
                              source, jerr.line, jerr.column, jerr.text);
    return DUEL_OK;
}

int duel_json_load_file(const char *path, size_t max_bytes, json_t **out, duel_error *err) {
    char *text;
    size_t len;
    int rc = duel_file_read_all(path, max_bytes, &text, &len, err);
    if (rc) return rc;
    rc = duel_json_parse(text, len, path, out, err);
    free(text);
    return rc;
}

int duel_json_get_int(const json_t *obj, const char *key, long long lo, long long hi,
                      long long *out, const char *source, duel_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return DUEL_OK;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v)) {
        /* Only integral reals inside long long's range convert; the range check comes first
         * because converting an out-of-range double is undefined behaviour. */
        double d = json_real_value(v);
        if (!(d >= -9.2e18 && d <= 9.2e18) || d != (double)(long long)d)
            return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be an integer", source,
                                  key);
        x = (long long)d;
    } else {
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be an integer", source, key);
    }
    if (x < lo || x > hi)
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" = %lld is outside [%lld, %lld]",
                              source, key, x, lo, hi);
    *out = x;
    return DUEL_OK;
}

int duel_json_get_double(const json_t *obj, const char *key, double *out, const char *source,
                         duel_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return DUEL_OK;
    if (!json_is_number(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be a number", source, key);
    *out = json_number_value(v);
    return DUEL_OK;
}

int duel_json_get_bool(const json_t *obj, const char *key, bool *out, const char *source,
                       duel_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return DUEL_OK;
    if (!json_is_boolean(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be true or false", source, key);
    *out = json_is_true(v);
    return DUEL_OK;
}

int duel_json_get_string(const json_t *obj, const char *key, char *out, size_t cap,
                         const char *source, duel_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return DUEL_OK;
    if (!json_is_string(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be a string", source, key);
    size_t n = json_string_length(v);
    if (n + 1 > cap)
        return duel_error_set(err, DUEL_ELIMIT, "%s: \"%s\" is longer than %zu bytes", source, key,
                              cap - 1);
    memcpy(out, json_string_value(v), n + 1);
    return DUEL_OK;
}
