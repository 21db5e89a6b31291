/* stream_id.c: Redis stream ids (see stream_id.h). */
#include "stream_id.h"

#include "error.h"

int stream_id_parse(const char *id, uint64_t *ms, uint64_t *seq) {
    const char *p = id;
    uint64_t v[2] = {0, 0};
    for (int part = 0; part < 2; part++) {
        if (*p < '0' || *p > '9') return DUEL_EINVAL;
        while (*p >= '0' && *p <= '9') {
            uint64_t d = (uint64_t)(*p - '0');
            if (v[part] > (UINT64_MAX - d) / 10) return DUEL_EINVAL;
            v[part] = v[part] * 10 + d;
            p++;
        }
        if (part == 0 && *p++ != '-') return DUEL_EINVAL;
    }
    if (*p != '\0') return DUEL_EINVAL;
    *ms = v[0];
    *seq = v[1];
    return 0;
}

int stream_id_compare(const char *a, const char *b) {
    uint64_t am = 0, as = 0, bm = 0, bs = 0;
    stream_id_parse(a, &am, &as);
    stream_id_parse(b, &bm, &bs);
    if (am != bm) return am < bm ? -1 : 1;
    if (as != bs) return as < bs ? -1 : 1;
    return 0;
}
