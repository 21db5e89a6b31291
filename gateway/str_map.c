/* str_map.c: FNV-1a hashed chaining map (see str_map.h). */
#include "str_map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void str_map_init(str_map *m) { memset(m, 0, sizeof *m); }

void str_map_free(str_map *m) {
    for (size_t i = 0; i < m->n_buckets; i++) {
        str_map_entry *e = m->buckets[i];
        while (e) {
            str_map_entry *next = e->next;
            free(e->key);
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    memset(m, 0, sizeof *m);
}

void *str_map_get(const str_map *m, const char *key) {
    if (!m->n_buckets) return NULL;
    for (str_map_entry *e = m->buckets[hash(key) % m->n_buckets]; e; e = e->next)
        if (strcmp(e->key, key) == 0) return e->value;
    return NULL;
}

static int grow(str_map *m) {
    size_t n = m->n_buckets ? m->n_buckets * 2 : 64;
    str_map_entry **b = calloc(n, sizeof *b);
    if (!b) return -1;
    for (size_t i = 0; i < m->n_buckets; i++) {
        str_map_entry *e = m->buckets[i];
        while (e) {
            str_map_entry *next = e->next;
            size_t k = hash(e->key) % n;
            e->next = b[k];
            b[k] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = n;
    return 0;
}

int str_map_put(str_map *m, const char *key, void *value) {
    if (m->size >= m->n_buckets && grow(m)) return -1;
    size_t k = hash(key) % m->n_buckets;
    for (str_map_entry *e = m->buckets[k]; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            e->value = value;
            return 0;
        }
    str_map_entry *e = malloc(sizeof *e);
    if (!e || !(e->key = strdup(key))) {
        free(e);
        return -1;
    }
    e->value = value;
    e->next = m->buckets[k];
    m->buckets[k] = e;
    m->size++;
    return 0;
}

void *str_map_remove(str_map *m, const char *key) {
    if (!m->n_buckets) return NULL;
    str_map_entry **pp = &m->buckets[hash(key) % m->n_buckets];
    for (; *pp; pp = &(*pp)->next) {
        str_map_entry *e = *pp;
        if (strcmp(e->key, key) != 0) continue;
        void *v = e->value;
        *pp = e->next;
        free(e->key);
        free(e);
        m->size--;
        return v;
    }
    return NULL;
}

void str_map_foreach(const str_map *m, void (*fn)(void *ctx, const char *key, void *value),
                     void *ctx) {
    for (size_t i = 0; i < m->n_buckets; i++)
        for (str_map_entry *e = m->buckets[i]; e; e = e->next) fn(ctx, e->key, e->value);
}
