/* fuzz_vote_entry.c: libFuzzer target for the vote codec (common/vote_entry.c). The input is one
 * entry in the codec's framing outside Redis (the spill log's and entries.bin's: u32 count, then
 * per field u32 name length, name, u32 value length, value; little-endian), unpacked with
 * vote_entry_unpack and decoded against fixed limits (model "tiny", d_feat 4, 2 heads,
 * vocabulary 512, 64 positions). A decoded entry is encoded again and must decode to the same
 * entry: the encoder writes nothing the decoder refuses. Seeds in corpus/fuzz_vote_entry. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vote_entry.h"

static int same_entry(const vote_entry *a, const vote_entry *b) {
    int M = a->num_candidates;
    return strcmp(a->vote_id, b->vote_id) == 0 && strcmp(a->duel_id, b->duel_id) == 0 &&
           strcmp(a->conversation, b->conversation) == 0 && a->choice == b->choice &&
           a->num_candidates == b->num_candidates && a->chosen_idx == b->chosen_idx &&
           a->n_prompt_tokens == b->n_prompt_tokens && a->n_cand_tokens == b->n_cand_tokens &&
           memcmp(a->prompt_tokens, b->prompt_tokens, (size_t)a->n_prompt_tokens * 4) == 0 &&
           memcmp(a->cand_tokens, b->cand_tokens, (size_t)a->n_cand_tokens * 4) == 0 &&
           memcmp(a->features, b->features, (size_t)M * (size_t)a->d_feat * 4) == 0 &&
           !a->ref_logprobs == !b->ref_logprobs;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    vote_entry_field fields[VOTE_ENTRY_MAX_FIELDS];
    size_t at = 0;
    int n = 0;
    if (vote_entry_unpack(data, size, &at, fields, &n, NULL)) return 0;
    vote_entry_limits limits = {"tiny", 4, 2, 512, 64};
    vote_entry e;
    duel_error err;
    if (vote_entry_decode(fields, n, &limits, &e, &err) == 0) {
        int len;
        const int32_t *c = vote_entry_candidate(&e, e.chosen_idx, &len);
        volatile int32_t sink = len > 0 ? c[len - 1] : 0; /* touch what the trainer reads */
        (void)sink;
        vote_entry_encoded enc;
        if (vote_entry_encode(&e, NULL, &enc, &err) != 0) abort();
        char *packed;
        size_t packed_len, at2 = 0;
        vote_entry again;
        if (vote_entry_pack(enc.fields, enc.n_fields, &packed, &packed_len, &err) ||
            vote_entry_unpack(packed, packed_len, &at2, fields, &n, &err) || at2 != packed_len ||
            vote_entry_decode(fields, n, &limits, &again, &err) || !same_entry(&e, &again))
            abort();
        vote_entry_free(&again);
        free(packed);
        vote_entry_encoded_free(&enc);
    }
    vote_entry_free(&e);
    return 0;
}
