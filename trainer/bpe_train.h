/* bpe_train.h: trains a byte-level BPE tokenizer (the GPT-2 scheme) and writes it as a Hugging
 * Face tokenizer.json that inference/tokenizer.h (and HF `tokenizers`) load.
 *
 * Text is pre-tokenized with the GPT-2 regex (ByteLevel pre-tokenizer, no prefix space); each
 * distinct piece is counted once with its frequency. The vocabulary starts from the 256 bytes;
 * each round merges the most frequent adjacent pair (ties: the pair of smaller ids, so results
 * are deterministic) until vocab_size minus the special tokens is reached or no pair occurs
 * min_frequency times. Special tokens take the last ids. */
#ifndef DUEL_BPE_TRAIN_H
#define DUEL_BPE_TRAIN_H

#include <stddef.h>

#include "error.h"

#define BPE_TRAIN_MAX_VOCAB 262144
#define BPE_TRAIN_MAX_SPECIAL 64
/* Pieces longer than this many bytes are counted in chunks of it (keeps merge work bounded). */
#define BPE_TRAIN_MAX_PIECE_BYTES 64
/* Distinct pieces kept in memory. */
#define BPE_TRAIN_MAX_WORDS (8u << 20)

typedef struct bpe_train_options {
    int vocab_size;                 /* total, bytes + merges + special tokens */
    long long min_frequency;        /* a pair must occur this often to be merged (>= 1) */
    const char *const *special_tokens; /* e.g. {"<|endoftext|>", "<|im_start|>", "<|im_end|>"} */
    int num_special_tokens;
} bpe_train_options;

typedef struct bpe_trainer bpe_trainer;

int bpe_trainer_create(bpe_trainer **out, duel_error *err);
void bpe_trainer_free(bpe_trainer *trainer);
/* Counts the pieces of a UTF-8 text (source names it in messages: invalid UTF-8 is a
 * DUEL_EFORMAT error with the byte offset). */
int bpe_trainer_add_text(bpe_trainer *trainer, const char *text, size_t len, const char *source,
                         duel_error *err);
/* Runs the merges. DUEL_EINVAL for a vocab_size below 256 + specials or above the limit, or
 * bad special tokens (empty, duplicate); DUEL_EINVAL when called twice. */
int bpe_trainer_train(bpe_trainer *trainer, const bpe_train_options *options, duel_error *err);
/* After training: the number of merges learned and the final vocabulary size. */
int bpe_trainer_num_merges(const bpe_trainer *trainer);
int bpe_trainer_vocab_size(const bpe_trainer *trainer);
/* Writes tokenizer.json atomically (path.tmp, fsync, rename). */
int bpe_trainer_write_json(const bpe_trainer *trainer, const char *path, duel_error *err);

#endif
