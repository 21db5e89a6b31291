/* str_map.h: a small string-keyed hash map (separate chaining, grows at load 1) for the
 * gateway's tables: sessions, conversations, duels, addresses. Keys are copied; values are
 * borrowed pointers. Not thread-safe: each map belongs to one thread (the lws thread). */
#ifndef DUEL_GATEWAY_STR_MAP_H
#define DUEL_GATEWAY_STR_MAP_H

#include <stddef.h>

typedef struct str_map_entry {
    char *key;
    void *value;
    struct str_map_entry *next;
} str_map_entry;

typedef struct str_map {
    str_map_entry **buckets;
    size_t n_buckets, size;
} str_map;

void str_map_init(str_map *m);
void str_map_free(str_map *m); /* frees entries, not values */
void *str_map_get(const str_map *m, const char *key);
/* Inserts or replaces. Returns 0, or -1 on out of memory. */
int str_map_put(str_map *m, const char *key, void *value);
/* Removes key; returns its value or NULL. */
void *str_map_remove(str_map *m, const char *key);
/* Calls fn for every entry; fn may not modify the map. */
void str_map_foreach(const str_map *m, void (*fn)(void *ctx, const char *key, void *value),
                     void *ctx);

#endif
