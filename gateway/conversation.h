/* conversation.h: the gateway's cache of conversations (DESIGN.md section 7): each one's turns,
 * the snapshot arm it is pinned to, and per turn its token count and, when the backend can
 * encode turns, its token ids in the backend's prompt encoding. Both are computed once, when the
 * turn joins (or the conversation is loaded), so an ask costs the tokens of its own text only:
 * neither the context-limit check nor the backend re-tokenizes the history. Conversations live
 * in Redis (duel:conv:{id}: conversation_to_json / conversation_load); the cache lets chat
 * go on while Redis is away and forgets idle conversations past a soft size.
 *
 * Thread: the lws service thread owns the cache and every conversation in it. */
#ifndef DUEL_GATEWAY_CONVERSATION_H
#define DUEL_GATEWAY_CONVERSATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "duel_backend.h"
#include "protocol.h"
#include "str_map.h"

typedef struct conversation_turn {
    char *user, *assistant;
    long long tokens; /* the user's and the assistant's text, as the backend counts them */
    int32_t *ids;     /* the turn in the backend's prompt encoding (encode_turn), or NULL */
    size_t n_ids;
} conversation_turn;

typedef struct conversation {
    char id[PROTOCOL_ID_LEN + 1];
    conversation_turn *turns;
    size_t n_turns, cap;
    long long history_tokens;            /* the turns' tokens, summed */
    long long arm;                       /* pinned snapshot version; -1 any */
    int64_t created_ms;
    double last_used;
    int refs;                            /* sessions attached */
    char last_duel[PROTOCOL_ID_LEN + 1]; /* only its answer may join the history */
} conversation;

typedef struct conversation_cache {
    str_map by_id;
} conversation_cache;

void conversation_cache_init(conversation_cache *cache);
/* Frees every conversation. */
void conversation_cache_free(conversation_cache *cache);
conversation *conversation_find(conversation_cache *cache, const char *id);
/* A new, empty conversation in the cache: with id, or a fresh random one when id is NULL.
 * NULL when out of memory (or no random bytes). */
conversation *conversation_create(conversation_cache *cache, const char *id);
/* Forgets conversations no session holds that were idle for idle_s, while the cache holds more
 * than soft_max (they stay in Redis). */
void conversation_cache_evict(conversation_cache *cache, double now, size_t soft_max,
                              double idle_s);

/* Tokens in text as the backend counts them (its count_tokens; without one, bytes / 4). */
long long conversation_count_tokens(const duel_backend *backend, const char *text);
/* Appends a finished turn (copies the texts), counting and encoding it with backend. A turn the
 * backend cannot encode is kept without ids. -1 when out of memory. */
int conversation_append(conversation *c, const char *user, const char *assistant,
                        const duel_backend *backend);
/* The history as a duel request carries it (texts, and ids when every turn has them); the
 * pointers borrow from c. malloc'd; NULL when out of memory. */
duel_backend_turn *conversation_history(const conversation *c);
/* The user's and the assistant's texts as two arrays (for the welcome frame), borrowed from c.
 * false when out of memory. */
bool conversation_texts(const conversation *c, const char ***user, const char ***assistant);

/* {"turns":[{"user":..,"assistant":..}...],"arm":..,"created":..}: what duel:conv:{id} keeps.
 * malloc'd; NULL when out of memory. */
char *conversation_to_json(const conversation *c);
/* A conversation with id, in the cache, made from that JSON (the turns counted and encoded with
 * backend). NULL when json holds no "turns" array, or out of memory. */
conversation *conversation_load(conversation_cache *cache, const char *id, const char *json,
                                const duel_backend *backend);

#endif
