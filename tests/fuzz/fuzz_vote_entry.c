/* fuzz_vote_entry.c: libFuzzer target for trainer/vote_entry.c. The input is a list of fields in
 * the gateway's spill-log framing (u32 count, then per field u32 name length, name, u32 value
 * length, value; little-endian), decoded against fixed limits (model "tiny", d_feat 4, 2 heads,
 * vocabulary 512, 64 positions). Seeds in corpus/fuzz_vote_entry. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vote_entry.h"

static int read_u32(const uint8_t *data, size_t size, size_t *at, uint32_t *out) {
    if (size - *at < 4) return -1;
    const uint8_t *p = data + *at;
    *out = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    *at += 4;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vote_entry_field fields[VOTE_ENTRY_MAX_FIELDS + 1];
    size_t at = 0;
    uint32_t count;
    if (read_u32(data, size, &at, &count) || count > VOTE_ENTRY_MAX_FIELDS + 1) return 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t nl, vl;
        if (read_u32(data, size, &at, &nl) || size - at < nl) return 0;
        fields[i].name = (const char *)data + at;
        fields[i].name_len = nl;
        at += nl;
        if (read_u32(data, size, &at, &vl) || size - at < vl) return 0;
        fields[i].value = (const char *)data + at;
        fields[i].value_len = vl;
        at += vl;
    }
    vote_entry_limits limits = {"tiny", 4, 2, 512, 64};
    vote_entry e;
    duel_error err;
    if (vote_entry_decode(fields, (int)count, &limits, &e, &err) == 0) {
        int len;
        const int32_t *c = vote_entry_candidate(&e, e.chosen_idx, &len);
        volatile int32_t sink = len > 0 ? c[len - 1] : 0; /* touch what the trainer reads */
        (void)sink;
    }
    vote_entry_free(&e);
    return 0;
}
