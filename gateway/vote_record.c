/* vote_record.c: building, serialising and bounds-checked parsing of vote entries (see
 * vote_record.h). Invariant: names[i] and values[i] are owned, NUL-terminated copies (values may
 * also contain NUL bytes; lens[i] is authoritative). */
#include "vote_record.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int vote_record_add(vote_record *rec, const char *name, const void *value, size_t len) {
    if (rec->n_fields >= VOTE_RECORD_MAX_FIELDS)
        return DUEL_ELIMIT;
    char *n = strdup(name);
    char *v = malloc(len + 1);
    if (!n || !v) {
        free(n);
        free(v);
        return DUEL_ENOMEM;
    }
    if (len) memcpy(v, value, len);
    v[len] = '\0';
    rec->names[rec->n_fields] = n;
    rec->values[rec->n_fields] = v;
    rec->lens[rec->n_fields] = len;
    rec->n_fields++;
    return DUEL_OK;
}

int vote_record_add_string(vote_record *rec, const char *name, const char *value) {
    return vote_record_add(rec, name, value, strlen(value));
}

int vote_record_add_int(vote_record *rec, const char *name, long long value) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", value);
    return vote_record_add(rec, name, buf, (size_t)n);
}

const char *vote_record_get(const vote_record *rec, const char *name, size_t *len) {
    for (int i = 0; i < rec->n_fields; i++)
        if (strcmp(rec->names[i], name) == 0) {
            if (len) *len = rec->lens[i];
            return rec->values[i];
        }
    return NULL;
}

void vote_record_clear(vote_record *rec) {
    for (int i = 0; i < rec->n_fields; i++) {
        free(rec->names[i]);
        free(rec->values[i]);
    }
    memset(rec, 0, sizeof *rec);
}

static void put_u32(char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int vote_record_serialize(const vote_record *rec, char **out, size_t *out_len, duel_error *err) {
    size_t total = 4;
    for (int i = 0; i < rec->n_fields; i++) total += 8 + strlen(rec->names[i]) + rec->lens[i];
    char *buf = malloc(total);
    if (!buf) return duel_error_set(err, DUEL_ENOMEM, "vote record: out of memory");
    size_t o = 0;
    put_u32(buf, (uint32_t)rec->n_fields);
    o = 4;
    for (int i = 0; i < rec->n_fields; i++) {
        size_t nl = strlen(rec->names[i]);
        put_u32(buf + o, (uint32_t)nl);
        memcpy(buf + o + 4, rec->names[i], nl);
        o += 4 + nl;
        put_u32(buf + o, (uint32_t)rec->lens[i]);
        if (rec->lens[i]) memcpy(buf + o + 4, rec->values[i], rec->lens[i]);
        o += 4 + rec->lens[i];
    }
    *out = buf;
    *out_len = total;
    return DUEL_OK;
}

int vote_record_deserialize(const void *data, size_t len, vote_record *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    const unsigned char *p = data;
    if (len < 4) return duel_error_set(err, DUEL_EFORMAT, "vote record: %zu bytes is too short", len);
    uint32_t n = get_u32(p);
    if (n > VOTE_RECORD_MAX_FIELDS)
        return duel_error_set(err, DUEL_EFORMAT, "vote record: %" PRIu32 " fields (max %d)", n,
                              VOTE_RECORD_MAX_FIELDS);
    size_t o = 4;
    for (uint32_t i = 0; i < n; i++) {
        if (len - o < 4) goto truncated;
        uint32_t nl = get_u32(p + o);
        o += 4;
        if (nl == 0 || nl > 256 || len - o < nl) goto truncated;
        char name[257];
        memcpy(name, p + o, nl);
        name[nl] = '\0';
        o += nl;
        if (len - o < 4) goto truncated;
        uint32_t vl = get_u32(p + o);
        o += 4;
        if (len - o < vl) goto truncated;
        if (strlen(name) != nl || vote_record_add(out, name, p + o, vl)) {
            vote_record_clear(out);
            return duel_error_set(err, DUEL_EFORMAT, "vote record: bad field %" PRIu32, i);
        }
        o += vl;
    }
    if (o != len) {
        vote_record_clear(out);
        return duel_error_set(err, DUEL_EFORMAT, "vote record: %zu trailing bytes", len - o);
    }
    return DUEL_OK;
truncated:
    vote_record_clear(out);
    return duel_error_set(err, DUEL_EFORMAT, "vote record: truncated at byte %zu", o);
}
