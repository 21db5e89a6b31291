/* vote_entry.h: one duel:prefs stream entry (DESIGN.md section 8), decoded and validated in one
 * place before the trainer touches it. The fields are those the gateway's vote producer writes
 * (gateway/server.c build_vote): text fields as UTF-8 bytes, integers as decimal text, binary
 * arrays little-endian and packed:
 *   vote_id duel_id strategy choice(a|b|tie|both_bad) model_id gen_params(JSON text)
 *   prompt_text chosen_text rejected_text                      text
 *   ts_ms arm policy_version side_swap(0|1) chosen_idx rejected_idx
 *   num_candidates(M) d_feat num_heads(E)                      decimal integers
 *   prompt_tokens  i32[P]      cand_tokens i32[T]    cand_offsets i32[M+1] (0 .. T, non-decreasing)
 *   features       f32[M*d_feat] (or f16 when features_dtype is "f16")
 *   erm_rewards    f32[M*E]
 *   features_dtype ("f32" default, "f16"), conversation          optional
 *   ref_logprobs   f32[M]      optional: log pi_ref(candidate | prompt), summed over the
 *                              candidate's tokens, from the engine's reference pass (finite, <= 0);
 *                              the trainer uses them instead of running its reference model
 * Unknown field names are ignored (a newer producer may add context); a repeated name is an
 * error. Every size is checked against M, d_feat, E and the token counts, and against the
 * trainer's limits (model id, feature width, vocabulary, sequence length). A failure returns
 * DUEL_EFORMAT with a message that is the entry's dead-letter reason. Never crashes on any
 * input (fuzzed by tests/fuzz/fuzz_vote_entry.c).
 *
 * vote_entry_encode is the reference encoder (tests and tools produce entries with it); the
 * gateway has its own producer (gateway/server.c build_vote); tests/gateway/test_backend_engine.c
 * decodes what the gateway writes with vote_entry_decode, so the two cannot drift apart. */
#ifndef DUEL_VOTE_ENTRY_H
#define DUEL_VOTE_ENTRY_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define VOTE_ENTRY_MAX_FIELDS 64
#define VOTE_ENTRY_MAX_ID 128            /* bytes of vote_id, duel_id, model_id, strategy */
#define VOTE_ENTRY_MAX_TEXT (1u << 20)   /* bytes of each text field */
#define VOTE_ENTRY_MAX_CANDIDATES 256    /* M */
#define VOTE_ENTRY_MAX_TOKENS (1 << 20)  /* prompt or all candidates' tokens */

typedef enum vote_choice {
    VOTE_CHOICE_A,
    VOTE_CHOICE_B,
    VOTE_CHOICE_TIE,
    VOTE_CHOICE_BOTH_BAD,
} vote_choice;

/* A (name, value) pair as the stream entry holds it; neither need be NUL-terminated. */
typedef struct vote_entry_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} vote_entry_field;

/* What the consumer requires of entries. Zero / NULL members accept anything in range. */
typedef struct vote_entry_limits {
    const char *model_id; /* the policy's id; NULL or "" accepts any */
    int d_feat;           /* the ERM's feature width */
    int num_heads;        /* the ERM's head count (for erm_rewards) */
    int vocab;            /* token ids must be in [0, vocab) */
    int max_sequence;     /* prompt + chosen (or rejected) response tokens */
} vote_entry_limits;

typedef struct vote_entry {
    char vote_id[VOTE_ENTRY_MAX_ID + 1];
    char duel_id[VOTE_ENTRY_MAX_ID + 1];
    char model_id[VOTE_ENTRY_MAX_ID + 1];
    char strategy[VOTE_ENTRY_MAX_ID + 1];
    int64_t ts_ms, arm, policy_version;
    vote_choice choice;
    int side_swap;
    int num_candidates, d_feat, num_heads;
    int chosen_idx, rejected_idx;
    int n_prompt_tokens, n_cand_tokens;
    int32_t *prompt_tokens; /* [n_prompt_tokens] */
    int32_t *cand_tokens;   /* [n_cand_tokens] */
    int32_t *cand_offsets;  /* [M + 1] */
    float *features;        /* [M][d_feat], f16 widened */
    float *erm_rewards;     /* [M][E] */
    float *ref_logprobs;    /* [M], or NULL when the entry has none */
} vote_entry;

/* Decodes fields[0..n) into out (which owns its arrays afterwards; free with vote_entry_free,
 * also after an error). */
int vote_entry_decode(const vote_entry_field *fields, int n_fields,
                      const vote_entry_limits *limits, vote_entry *out, duel_error *err);
void vote_entry_free(vote_entry *entry);

/* Candidate i's response tokens. */
const int32_t *vote_entry_candidate(const vote_entry *entry, int i, int *len);
const char *vote_choice_name(vote_choice choice);
int vote_choice_is_pair(vote_choice choice); /* a or b: trainable */

/* The reference encoder: fields and owned value buffers of one entry, in the producer's order. */
typedef struct vote_entry_encoded {
    int n_fields;
    vote_entry_field fields[VOTE_ENTRY_MAX_FIELDS];
    char *buffers[VOTE_ENTRY_MAX_FIELDS];
} vote_entry_encoded;

/* Texts may be NULL (encoded as ""); gen_params NULL is "{}". */
typedef struct vote_entry_texts {
    const char *gen_params, *prompt_text, *chosen_text, *rejected_text;
} vote_entry_texts;

int vote_entry_encode(const vote_entry *entry, const vote_entry_texts *texts,
                      vote_entry_encoded *out, duel_error *err);
void vote_entry_encoded_free(vote_entry_encoded *enc);

#endif
