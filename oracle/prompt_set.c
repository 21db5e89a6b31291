/* prompt_set.c: the prompts simulated users ask (oracle.h, "prompt sets"): JSONL parsed in this
 * one place, strictly for what is read (prompt, reference, turns) and size-limited; every error
 * names the file and line. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oracle.h"

static const char *const reference_keys[] = {"reference", "gloss", "response"};

static void turn_free(oracle_turn *t) {
    free(t->prompt);
    free(t->reference);
}

/* One turn from obj ({"prompt": ..., "reference": ...}); what names it in messages. */
static int read_turn(const json_t *obj, const char *where, bool require_reference, oracle_turn *out,
                     duel_error *err) {
    memset(out, 0, sizeof *out);
    json_t *p = json_object_get(obj, "prompt");
    if (!json_is_string(p) || json_string_length(p) == 0)
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"prompt\" must be a non-empty string", where);
    const json_t *ref = NULL;
    const char *ref_key = NULL;
    for (size_t k = 0; k < sizeof reference_keys / sizeof *reference_keys && !ref; k++)
        if ((ref = json_object_get(obj, reference_keys[k]))) ref_key = reference_keys[k];
    if (ref && (!json_is_string(ref) || json_string_length(ref) == 0))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be a non-empty string", where, ref_key);
    if (!ref && require_reference)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: no \"reference\" (or \"gloss\", \"response\"): the lexical oracle "
                              "judges against one",
                              where);
    out->prompt = strdup(json_string_value(p));
    if (ref) out->reference = strdup(json_string_value(ref));
    if (!out->prompt || (ref && !out->reference)) {
        turn_free(out);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", where);
    }
    return 0;
}

static int read_item(const json_t *o, const char *where, bool require_reference, oracle_prompt *out,
                     duel_error *err) {
    json_t *turns = json_object_get(o, "turns");
    if (turns && json_object_get(o, "prompt"))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"prompt\" and \"turns\" on one line", where);
    if (!turns && !json_object_get(o, "prompt"))
        return duel_error_set(err, DUEL_EFORMAT, "%s: no \"prompt\" (or \"turns\")", where);
    if (turns && (!json_is_array(turns) || json_array_size(turns) == 0 ||
                  json_array_size(turns) > ORACLE_PROMPT_MAX_TURNS))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"turns\" must be an array of 1 to %d objects", where,
                              ORACLE_PROMPT_MAX_TURNS);
    int n = turns ? (int)json_array_size(turns) : 1;
    out->turns = calloc((size_t)n, sizeof *out->turns);
    if (!out->turns) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", where);
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        const json_t *t = turns ? json_array_get(turns, (size_t)i) : o;
        char at[640];
        if (turns) snprintf(at, sizeof at, "%s: turn %d", where, i + 1);
        else snprintf(at, sizeof at, "%s", where);
        if (!json_is_object(t)) rc = duel_error_set(err, DUEL_EFORMAT, "%s: not an object", at);
        else if ((rc = read_turn(t, at, require_reference, &out->turns[i], err)) == 0) out->num_turns++;
    }
    return rc;
}

void oracle_prompt_set_free(oracle_prompt_set *s) {
    if (!s) return;
    for (int i = 0; i < s->count; i++) {
        for (int t = 0; t < s->items[i].num_turns; t++) turn_free(&s->items[i].turns[t]);
        free(s->items[i].turns);
    }
    free(s->items);
    free(s->path);
    memset(s, 0, sizeof *s);
}

int oracle_prompt_set_load(const char *path, int max_items, bool require_reference, oracle_prompt_set *out,
                           duel_error *err) {
    memset(out, 0, sizeof *out);
    if (!path) return duel_error_set(err, DUEL_EINVAL, "prompt set: no file named");
    if (max_items < 1 || max_items > ORACLE_PROMPT_MAX_ITEMS)
        return duel_error_set(err, DUEL_EINVAL, "%s: %d prompts asked for (1 to %d)", path, max_items,
                              ORACLE_PROMPT_MAX_ITEMS);
    FILE *f = fopen(path, "r");
    if (!f) return duel_error_set(err, DUEL_ENOTFOUND, "%s: %s", path, strerror(errno));
    char *line = malloc(ORACLE_PROMPT_MAX_LINE + 2);
    int cap = 0, rc = 0, line_no = 0;
    out->path = strdup(path);
    if (!line || !out->path) rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
    while (rc == 0 && out->count < max_items && fgets(line, ORACLE_PROMPT_MAX_LINE + 2, f)) {
        line_no++;
        size_t len = strlen(line);
        char where[600];
        snprintf(where, sizeof where, "%s:%d", path, line_no);
        if (len > ORACLE_PROMPT_MAX_LINE || (len == ORACLE_PROMPT_MAX_LINE + 1 && line[len - 1] != '\n')) {
            rc = duel_error_set(err, DUEL_ELIMIT, "%s: line longer than %d bytes", where, ORACLE_PROMPT_MAX_LINE);
            break;
        }
        if (line[strspn(line, " \t\r\n")] == '\0') continue;
        json_error_t je;
        json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(o)) {
            if (o) rc = duel_error_set(err, DUEL_EFORMAT, "%s: not a JSON object", where);
            else rc = duel_error_set(err, DUEL_EFORMAT, "%s: not JSON (%s)", where, je.text);
            json_decref(o);
            break;
        }
        if (out->count == cap) {
            int next = cap ? 2 * cap : 64;
            oracle_prompt *grown = realloc(out->items, (size_t)next * sizeof *grown);
            if (!grown) {
                json_decref(o);
                rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", where);
                break;
            }
            out->items = grown;
            cap = next;
        }
        oracle_prompt *item = &out->items[out->count];
        memset(item, 0, sizeof *item);
        item->line = line_no;
        out->count++; /* freed with the set even when it failed half-way */
        rc = read_item(o, where, require_reference, item, err);
        json_decref(o);
    }
    if (rc == 0 && ferror(f)) rc = duel_error_set(err, DUEL_EIO, "%s: read error", path);
    fclose(f);
    free(line);
    if (rc == 0 && out->count == 0) rc = duel_error_set(err, DUEL_EFORMAT, "%s: no prompts", path);
    if (rc) oracle_prompt_set_free(out);
    return rc;
}

int oracle_prompt_order(const oracle_prompt_set *s, uint64_t seed, int **order, duel_error *err) {
    int *o = malloc(sizeof *o * (size_t)(s->count > 0 ? s->count : 1));
    if (!o) return duel_error_set(err, DUEL_ENOMEM, "prompt order: out of memory");
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    for (int i = 0; i < s->count; i++) o[i] = i;
    for (int i = s->count - 1; i > 0; i--) {
        int j = (int)duel_rng_below(&rng, (uint64_t)i + 1), t = o[i];
        o[i] = o[j];
        o[j] = t;
    }
    *order = o;
    return 0;
}
