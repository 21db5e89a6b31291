/* vote_record.h: one vote as the ordered (field, value) pairs of its duel:prefs stream entry
 * (DESIGN.md section 8), and its byte serialisation for the spill log:
 *   u32 count, then per field: u32 name length, name, u32 value length, value (little-endian).
 * Values are bytes (text fields UTF-8, binary fields little-endian arrays). Deserialisation
 * checks every length against the buffer, so a damaged record is an error, never a crash. */
#ifndef DUEL_GATEWAY_VOTE_RECORD_H
#define DUEL_GATEWAY_VOTE_RECORD_H

#include <stddef.h>

#include "error.h"

#define VOTE_RECORD_MAX_FIELDS 32
#define VOTE_RECORD_ID_LEN 32

typedef struct vote_record {
    int n_fields;
    char *names[VOTE_RECORD_MAX_FIELDS];
    char *values[VOTE_RECORD_MAX_FIELDS];
    size_t lens[VOTE_RECORD_MAX_FIELDS];
} vote_record;

/* Appends a copy of value[0..len). Returns DUEL_ELIMIT when full, DUEL_ENOMEM. */
int vote_record_add(vote_record *rec, const char *name, const void *value, size_t len);
int vote_record_add_string(vote_record *rec, const char *name, const char *value);
int vote_record_add_int(vote_record *rec, const char *name, long long value);
/* The value of the first field called name, or NULL (len set when found). */
const char *vote_record_get(const vote_record *rec, const char *name, size_t *len);
void vote_record_clear(vote_record *rec);

int vote_record_serialize(const vote_record *rec, char **out, size_t *out_len, duel_error *err);
int vote_record_deserialize(const void *data, size_t len, vote_record *out, duel_error *err);

#endif
