/* vote_entry.h: the one codec of a vote, a duel:prefs stream entry (DESIGN.md section 8). The
 * gateway encodes its votes with it, the spill log and the trainer's checkpoint frame them with
 * it, the trainer decodes them with it, the benchmarks and tests produce them with it; nothing
 * else knows the field layout.
 *
 * Fields: text fields as UTF-8 bytes, integers as decimal text, binary arrays little-endian and
 * packed:
 *   vote_id duel_id strategy choice(a|b|tie|both_bad) model_id gen_params(JSON text)
 *   prompt_text chosen_text rejected_text                      text
 *   ts_ms arm policy_version side_swap(0|1) chosen_idx rejected_idx
 *   num_candidates(M) d_feat num_heads(E)                      decimal integers
 *   prompt_tokens  i32[P]      cand_tokens i32[T]    cand_offsets i32[M+1] (0 .. T, non-decreasing)
 *   features       f32[M*d_feat] (or f16 when features_dtype is "f16")
 *   erm_rewards    f32[M*E]
 *   d_feat 0 (then E is 0 too) is an unscored duel: strategy pilaf, whose candidates the engine
 *   decodes without the ERM's feature pass; features and erm_rewards are empty, the consumer's
 *   d_feat and num_heads limits do not apply, and the trainer applies its policy update without
 *   training the ERM on it (trainer/online_update.c).
 *   features_dtype ("f32" default, "f16"), conversation          optional
 *   ref_logprobs   f32[M]      optional: log pi_ref(candidate | prompt), summed over the
 *                              candidate's tokens, from the engine's reference pass (finite, <= 0);
 *                              the trainer uses them instead of running its reference model
 * The encoder writes them in that order (the required ones, then features_dtype, then the
 * optional ones it has).
 *
 * Decoding: unknown field names are ignored (a newer producer may add context); a repeated name
 * is an error. Every size is checked against M, d_feat, E and the token counts, and against the
 * consumer's limits (model id, feature width, vocabulary, sequence length). A failure returns
 * DUEL_EFORMAT with a message that is the entry's dead-letter reason. Never crashes on any input
 * (fuzzed by tests/fuzz/fuzz_vote_entry.c, through vote_entry_unpack). Encoding is as strict:
 * vote_entry_encode refuses an entry the decoder would refuse, so a producer cannot write a vote
 * that no trainer can read.
 *
 * Outside Redis (the gateway's spill log, the trainer's entries.bin) an entry is framed as
 *   u32 field count, then per field: u32 name length, name, u32 value length, value
 * (little-endian): vote_entry_pack / vote_entry_unpack. */
#ifndef DUEL_VOTE_ENTRY_H
#define DUEL_VOTE_ENTRY_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define VOTE_ENTRY_MAX_FIELDS 64
#define VOTE_ENTRY_MAX_NAME 256          /* bytes of a field name in a packed entry */
#define VOTE_ENTRY_MAX_ID 128            /* bytes of vote_id, duel_id, model_id, strategy,
                                            conversation */
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
    char conversation[VOTE_ENTRY_MAX_ID + 1]; /* "" when the entry has none */
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
/* "a", "b", "tie" or "both_bad" (len bytes at s) -> *out; anything else is DUEL_EFORMAT. */
int vote_choice_parse(const char *s, size_t len, vote_choice *out);

/* The encoder's output: fields and owned value buffers of one entry, in the order above. */
typedef struct vote_entry_encoded {
    int n_fields;
    vote_entry_field fields[VOTE_ENTRY_MAX_FIELDS];
    char *buffers[VOTE_ENTRY_MAX_FIELDS];
} vote_entry_encoded;

/* Texts may be NULL (encoded as ""); gen_params NULL is "{}". */
typedef struct vote_entry_texts {
    const char *gen_params, *prompt_text, *chosen_text, *rejected_text;
} vote_entry_texts;

/* Encodes entry (arrays read, not taken) and texts into out. An entry the decoder would refuse
 * without limits (an empty prompt, chosen_idx == rejected_idx, offsets that do not cover the
 * candidates, a non-finite feature, a text over VOTE_ENTRY_MAX_TEXT, ...) is DUEL_EFORMAT with
 * the decoder's reason, and out is left empty. */
int vote_entry_encode(const vote_entry *entry, const vote_entry_texts *texts,
                      vote_entry_encoded *out, duel_error *err);
void vote_entry_encoded_free(vote_entry_encoded *enc);

/* The first field called name among fields[0..n), or NULL. */
const vote_entry_field *vote_entry_field_find(const vote_entry_field *fields, int n_fields,
                                              const char *name);

/* Frames fields[0..n) (see the top comment) into a malloc'd buffer. */
int vote_entry_pack(const vote_entry_field *fields, int n_fields, char **out, size_t *out_len,
                    duel_error *err);
/* Reads one framed entry from data[*at..len): fields[0..*n_fields) point into data (no copy);
 * *at moves past the entry. Every length is checked against the buffer; more than
 * VOTE_ENTRY_MAX_FIELDS fields, an empty name, a name over VOTE_ENTRY_MAX_NAME or holding a NUL
 * byte is DUEL_EFORMAT. fields must hold VOTE_ENTRY_MAX_FIELDS. The values are not checked:
 * that is vote_entry_decode's work. */
int vote_entry_unpack(const void *data, size_t len, size_t *at, vote_entry_field *fields,
                      int *n_fields, duel_error *err);

#endif
