/* file_map.h: read-only memory maps of whole files (weights, tokenizer files). */
#ifndef DUEL_FILE_MAP_H
#define DUEL_FILE_MAP_H

#include <stddef.h>

#include "error.h"

typedef struct duel_file_map {
    const unsigned char *data; /* NULL for an empty file */
    size_t size;
} duel_file_map;

/* Maps path read-only. On failure returns DUEL_EIO with a message naming path and errno. */
int duel_file_map_open(const char *path, duel_file_map *map, duel_error *err);
void duel_file_map_close(duel_file_map *map);

/* Reads a whole (small) file into a NUL-terminated heap buffer, refusing files over max_bytes
 * with DUEL_ELIMIT. *out must be freed by the caller. */
int duel_file_read_all(const char *path, size_t max_bytes, char **out, size_t *out_len,
                       duel_error *err);

#endif
