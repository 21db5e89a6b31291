/* json_util.h: strict JSON loading with jansson for untrusted files (config.json, tokenizer.json,
 * safetensors headers): duplicate keys rejected, size-limited, errors name the source, line and
 * column. Also typed getters that report the key path on a type mismatch. */
#ifndef DUEL_JSON_UTIL_H
#define DUEL_JSON_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "error.h"

/* Parses text[0..len) (need not be NUL-terminated). source names the input in messages. */
int duel_json_parse(const char *text, size_t len, const char *source, json_t **out,
                    duel_error *err);
/* Reads and parses a file of at most max_bytes. */
int duel_json_load_file(const char *path, size_t max_bytes, json_t **out, duel_error *err);

/* Typed optional getters: when key is absent (or JSON null) leave *out unchanged and return 0;
 * when present with the wrong type or out of range return DUEL_EFORMAT naming source and key. */
int duel_json_get_int(const json_t *obj, const char *key, long long lo, long long hi,
                      long long *out, const char *source, duel_error *err);
int duel_json_get_double(const json_t *obj, const char *key, double *out, const char *source,
                         duel_error *err);
int duel_json_get_bool(const json_t *obj, const char *key, bool *out, const char *source,
                       duel_error *err);
/* Copies a string value into out[0..cap) (error if it does not fit). */
int duel_json_get_string(const json_t *obj, const char *key, char *out, size_t cap,
                         const char *source, duel_error *err);

#endif
