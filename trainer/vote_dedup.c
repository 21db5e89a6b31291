/* vote_dedup.c: the ring of recent vote ids (see vote_dedup.h). A linear scan: the ring holds a
 * few thousand short ids and is searched once per offered vote. */
#include "vote_dedup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int vote_dedup_init(vote_dedup *d, int capacity, duel_error *err) {
    memset(d, 0, sizeof *d);
    if (capacity < 1) return duel_error_set(err, DUEL_EINVAL, "vote dedup: capacity %d < 1", capacity);
    if (!(d->ids = calloc((size_t)capacity, sizeof *d->ids)))
        return duel_error_set(err, DUEL_ENOMEM, "vote dedup: out of memory");
    d->capacity = capacity;
    return 0;
}

void vote_dedup_free(vote_dedup *d) {
    free(d->ids);
    memset(d, 0, sizeof *d);
}

void vote_dedup_clear(vote_dedup *d) { d->start = d->count = 0; }

const char *vote_dedup_at(const vote_dedup *d, int i) { return d->ids[(d->start + i) % d->capacity]; }

bool vote_dedup_contains(const vote_dedup *d, const char *vote_id) {
    for (int i = 0; i < d->count; i++)
        if (strcmp(vote_dedup_at(d, i), vote_id) == 0) return true;
    return false;
}

void vote_dedup_add(vote_dedup *d, const char *vote_id) {
    int slot;
    if (d->count < d->capacity) {
        slot = (d->start + d->count++) % d->capacity;
    } else {
        slot = d->start;
        d->start = (d->start + 1) % d->capacity;
    }
    snprintf(d->ids[slot], sizeof d->ids[slot], "%s", vote_id);
}
