/* stream_id.h: Redis stream entry ids ("<ms>-<seq>", two unsigned 64-bit numbers), parsed and
 * ordered. The trainer's exactly-once bookkeeping compares them: an entry at or before the last
 * applied id is in the checkpoint already. */
#ifndef DUEL_STREAM_ID_H
#define DUEL_STREAM_ID_H

#include <stdint.h>

#define STREAM_ID_MAX 48 /* bytes, NUL included: two 20-digit numbers and the dash fit */

/* 0, or DUEL_EINVAL for anything but digits, one '-', digits (each part below 2^64). */
int stream_id_parse(const char *id, uint64_t *ms, uint64_t *seq);
/* -1, 0 or 1 as a is before, equal to or after b; both must parse. */
int stream_id_compare(const char *a, const char *b);

#endif
