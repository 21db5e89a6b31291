/* conversation.c: the conversation cache (see conversation.h). Invariant: c->history_tokens is
 * the sum of c->turns[].tokens, and either every turn of c has ids or conversation_history gives
 * the backend none (it then re-encodes the texts). Lws thread only. */
#include "conversation.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "timer.h"

void conversation_cache_init(conversation_cache *cache) { str_map_init(&cache->by_id); }

static void conversation_free(conversation *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_turns; i++) {
        free(c->turns[i].user);
        free(c->turns[i].assistant);
        free(c->turns[i].ids);
    }
    free(c->turns);
    free(c);
}

static void free_entry(void *ctx, const char *key, void *value) {
    (void)ctx, (void)key;
    conversation_free(value);
}

void conversation_cache_free(conversation_cache *cache) {
    str_map_foreach(&cache->by_id, free_entry, NULL);
    str_map_free(&cache->by_id);
}

conversation *conversation_find(conversation_cache *cache, const char *id) {
    return str_map_get(&cache->by_id, id);
}

conversation *conversation_create(conversation_cache *cache, const char *id) {
    conversation *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (id) snprintf(c->id, sizeof c->id, "%s", id);
    else if (protocol_new_id(c->id)) {
        free(c);
        return NULL;
    }
    c->created_ms = duel_time_unix_ms();
    c->last_used = duel_time_seconds();
    c->arm = -1;
    if (str_map_put(&cache->by_id, c->id, c)) {
        free(c);
        return NULL;
    }
    return c;
}

void conversation_cache_evict(conversation_cache *cache, double now, size_t soft_max,
                              double idle_s) {
    if (cache->by_id.size <= soft_max) return;
    /* Collect first: no removal mid-walk. */
    size_t n = 0, cap = cache->by_id.size;
    conversation **victims = malloc(cap * sizeof *victims);
    for (size_t b = 0; victims && b < cache->by_id.n_buckets; b++)
        for (str_map_entry *e = cache->by_id.buckets[b]; e; e = e->next) {
            conversation *c = e->value;
            if (c->refs == 0 && now - c->last_used > idle_s && n < cap) victims[n++] = c;
        }
    for (size_t i = 0; i < n; i++) {
        str_map_remove(&cache->by_id, victims[i]->id);
        conversation_free(victims[i]);
    }
    free(victims);
}

long long conversation_count_tokens(const duel_backend *backend, const char *text) {
    size_t n = strlen(text);
    if (backend->count_tokens) return backend->count_tokens(backend->impl, text, n);
    return (long long)(n + 3) / 4;
}

int conversation_append(conversation *c, const char *user, const char *assistant,
                        const duel_backend *backend) {
    if (c->n_turns == c->cap) {
        size_t ncap = c->cap ? 2 * c->cap : 8;
        conversation_turn *t = realloc(c->turns, ncap * sizeof *t);
        if (!t) return -1;
        c->turns = t;
        c->cap = ncap;
    }
    conversation_turn t = {strdup(user), strdup(assistant), 0, NULL, 0};
    if (!t.user || !t.assistant) {
        free(t.user);
        free(t.assistant);
        return -1;
    }
    t.tokens = conversation_count_tokens(backend, user) + conversation_count_tokens(backend, assistant);
    if (backend->encode_turn &&
        backend->encode_turn(backend->impl, user, assistant, &t.ids, &t.n_ids, NULL) != 0) {
        free(t.ids); /* kept without ids: the backend re-encodes this history from its texts */
        t.ids = NULL;
        t.n_ids = 0;
    }
    c->turns[c->n_turns++] = t;
    c->history_tokens += t.tokens;
    return 0;
}

duel_backend_turn *conversation_history(const conversation *c) {
    duel_backend_turn *hist = calloc(c->n_turns ? c->n_turns : 1, sizeof *hist);
    if (!hist) return NULL;
    bool all_ids = true;
    for (size_t i = 0; i < c->n_turns; i++) all_ids = all_ids && c->turns[i].ids;
    for (size_t i = 0; i < c->n_turns; i++) {
        const conversation_turn *t = &c->turns[i];
        hist[i] = (duel_backend_turn){t->user, t->assistant, all_ids ? t->ids : NULL,
                                      all_ids ? t->n_ids : 0};
    }
    return hist;
}

bool conversation_texts(const conversation *c, const char ***user, const char ***assistant) {
    *user = malloc((c->n_turns ? c->n_turns : 1) * sizeof **user);
    *assistant = malloc((c->n_turns ? c->n_turns : 1) * sizeof **assistant);
    if (!*user || !*assistant) {
        free(*user);
        free(*assistant);
        return false;
    }
    for (size_t i = 0; i < c->n_turns; i++) {
        (*user)[i] = c->turns[i].user;
        (*assistant)[i] = c->turns[i].assistant;
    }
    return true;
}

char *conversation_to_json(const conversation *c) {
    json_t *turns = json_array();
    for (size_t i = 0; turns && i < c->n_turns; i++)
        json_array_append_new(turns, json_pack("{s:s, s:s}", "user", c->turns[i].user,
                                               "assistant", c->turns[i].assistant));
    json_t *obj = json_pack("{s:o, s:I, s:I}", "turns", turns, "arm", (json_int_t)c->arm,
                            "created", (json_int_t)c->created_ms);
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return text;
}

conversation *conversation_load(conversation_cache *cache, const char *id, const char *json,
                                const duel_backend *backend) {
    json_t *obj = json_loads(json, 0, NULL);
    json_t *turns = obj ? json_object_get(obj, "turns") : NULL;
    conversation *c = json_is_array(turns) ? conversation_create(cache, id) : NULL;
    if (!c) {
        json_decref(obj);
        return NULL;
    }
    size_t i;
    json_t *t;
    json_array_foreach(turns, i, t) {
        const char *u = json_string_value(json_object_get(t, "user"));
        const char *a = json_string_value(json_object_get(t, "assistant"));
        if (u && a) conversation_append(c, u, a, backend);
    }
    c->arm = json_integer_value(json_object_get(obj, "arm"));
    long long created = json_integer_value(json_object_get(obj, "created"));
    if (created > 0) c->created_ms = created;
    json_decref(obj);
    return c;
}
