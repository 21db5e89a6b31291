/* lm_data.h: training data for language-model training, tokenized once up front.
 *
 * Pretraining text: one document per line (empty lines skipped), each followed by an end-of-text
 * token, concatenated into one token stream that is cut into windows of seq_len + 1 tokens (the
 * last partial window is dropped when there is at least one full one).
 * SFT JSONL: one {"prompt": str, "response": str} object per line; the prompt is rendered with a
 * chat template as a user turn with the generation prompt, the response is followed by the
 * template's end-of-turn token, and only response tokens (and the end of turn) carry loss.
 * Preference JSONL (DPO): {"prompt", "chosen", "rejected"} the same way.
 *
 * Bad lines (invalid UTF-8, malformed JSON, missing or non-string fields, empty responses)
 * are errors naming the file and line, unless skip_bad_lines is set: then they are skipped and
 * counted, and the first few line numbers are kept for the report. Either way every bad line
 * is seen before training starts, so none can stop a long run. */
#ifndef DUEL_LM_DATA_H
#define DUEL_LM_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_template.h"
#include "error.h"
#include "rng.h"
#include "tokenizer.h"

#define LM_DATA_MAX_FILE_BYTES ((size_t)4 << 30)
#define LM_DATA_MAX_LINE_BYTES ((size_t)1 << 20)
#define LM_DATA_BAD_LINES_KEPT 8

/* One training sequence: tokens[0..len), loss on the targets tokens[t+1] for t >= loss_start. */
typedef struct lm_example {
    int32_t *tokens;
    int len;
    int loss_start;
} lm_example;

/* A DPO pair: the same prompt with two responses. */
typedef struct lm_pair {
    lm_example chosen;
    lm_example rejected;
} lm_pair;

typedef struct lm_dataset {
    lm_example *examples;
    size_t num_examples;
    lm_pair *pairs;
    size_t num_pairs;
    long long num_tokens;    /* tokens over all examples */
    long long num_lines;     /* lines read (non-empty) */
    long long bad_lines;     /* skipped */
    long long first_bad_lines[LM_DATA_BAD_LINES_KEPT];
    long long truncated;     /* examples cut to the sequence length */
} lm_dataset;

typedef struct lm_data_options {
    const tokenizer *tok;
    chat_template_kind chat_template; /* SFT and DPO */
    int seq_len;                      /* model positions per example */
    bool skip_bad_lines;
    long long max_examples;           /* 0: no limit */
} lm_data_options;

int lm_data_load_text(const char *path, const lm_data_options *options, lm_dataset *out,
                      duel_error *err);
int lm_data_load_sft(const char *path, const lm_data_options *options, lm_dataset *out,
                     duel_error *err);
int lm_data_load_pairs(const char *path, const lm_data_options *options, lm_dataset *out,
                       duel_error *err);
void lm_data_free(lm_dataset *data);

/* Tokenizes one prompt with the chat template's generation prompt (for evaluation and DPO). */
int lm_data_encode_prompt(const lm_data_options *options, const char *prompt, int32_t **ids,
                          size_t *n, duel_error *err);

/* A batch in train_model's layout, filled from examples: rows right-padded with token 0, mask 1
 * on the targets that carry loss. Owns its arrays. */
typedef struct lm_batch {
    int capacity_rows, capacity_len;
    int32_t *tokens, *targets;
    float *mask;
    int batch_size, seq_len;
    double loss_tokens; /* sum of mask */
} lm_batch;

int lm_batch_init(lm_batch *batch, int rows, int seq_len, duel_error *err);
void lm_batch_free(lm_batch *batch);
/* Fills batch rows from examples[index[0..rows)] (T = the longest of them). */
void lm_batch_fill(lm_batch *batch, const lm_example *const *rows, int num_rows);

/* The example order: epoch e is a seeded shuffle of the examples in which neighbouring groups of
 * 64 batches are sorted by length (less padding), then the batches are shuffled. Deterministic
 * in (seed, epoch), so that a resumed run sees exactly the batches an uninterrupted one would. */
typedef struct lm_order {
    size_t num_examples;
    int batch_size;
    size_t batches_per_epoch;
    size_t *order;   /* [num_examples] of the current epoch */
    long long epoch; /* whose order is in order[], -1 none */
    uint64_t seed;
} lm_order;

int lm_order_init(lm_order *order, const lm_dataset *data, int batch_size, uint64_t seed,
                  duel_error *err);
void lm_order_free(lm_order *order);
/* The rows of global batch number k (k counts micro-batches from the start of training). */
void lm_order_batch(lm_order *order, const lm_dataset *data, long long k,
                    const lm_example **rows, int *num_rows);

#endif
