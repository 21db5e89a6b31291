/* vote_dedup.h: the last N vote ids the trainer took (a ring, oldest first), so that a vote the
 * gateway wrote twice (a spill-log replay after Redis took the first copy) is applied once
 * however far apart in the stream the two copies are, within N votes. The checkpoint stores
 * the ids in order; restoring them re-adds them oldest first. */
#ifndef DUEL_VOTE_DEDUP_H
#define DUEL_VOTE_DEDUP_H

#include <stdbool.h>

#include "error.h"
#include "vote_entry.h"

typedef struct vote_dedup {
    char (*ids)[VOTE_ENTRY_MAX_ID + 1];
    int capacity, start, count;
} vote_dedup;

/* capacity >= 1; DUEL_ENOMEM. */
int vote_dedup_init(vote_dedup *d, int capacity, duel_error *err);
void vote_dedup_free(vote_dedup *d);
void vote_dedup_clear(vote_dedup *d);
bool vote_dedup_contains(const vote_dedup *d, const char *vote_id);
/* Adds vote_id (truncated to VOTE_ENTRY_MAX_ID bytes); the oldest leaves when full. */
void vote_dedup_add(vote_dedup *d, const char *vote_id);
/* The i-th id, oldest first (0 <= i < count). */
const char *vote_dedup_at(const vote_dedup *d, int i);

#endif
