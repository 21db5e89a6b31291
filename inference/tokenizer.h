/* tokenizer.h: byte-level BPE tokenizers read from Hugging Face tokenizer.json, encoding and
 * decoding exactly as the `tokenizers` library does for the GPT-2, Llama 3, Qwen2 and SmolLM2
 * pre-tokenizers (both merges formats; added and special tokens). Immutable after load, so one
 * tokenizer may be shared by threads. */
#ifndef DUEL_TOKENIZER_H
#define DUEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define TOKENIZER_MAX_JSON_BYTES (64u << 20)

typedef struct tokenizer tokenizer;

/* Loads a tokenizer.json file. Errors name the file and the offending key. */
int tokenizer_load(const char *path, tokenizer **out, duel_error *err);
/* Same from memory (tests, fuzzing); source names the input in messages. */
int tokenizer_load_buffer(const char *json_text, size_t len, const char *source, tokenizer **out,
                          duel_error *err);
void tokenizer_free(tokenizer *tok);

/* Encodes UTF-8 text. Invalid UTF-8 is a DUEL_EFORMAT error giving the byte offset. When
 * parse_special is true, added tokens marked special (e.g. "<|im_start|>") in the text map to their
 * ids; otherwise they are encoded as plain text. *ids is heap-allocated; free() it. */
int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool parse_special,
                     int32_t **ids, size_t *n_ids, duel_error *err);

/* Decodes ids to UTF-8 text (heap-allocated, NUL-terminated). skip_special drops special tokens.
 * Byte sequences that are not valid UTF-8 are replaced by U+FFFD, as Hugging Face does. */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len, duel_error *err);

/* The raw bytes a token stands for (after byte-level decoding; for special tokens their content).
 * For streaming: concatenate bytes and print only complete UTF-8. Returns DUEL_EINVAL for ids out
 * of range. */
int tokenizer_token_bytes(const tokenizer *tok, int32_t id, const char **bytes, size_t *len);

/* Number of ids (largest id + 1, counting added tokens). */
int tokenizer_vocab_size(const tokenizer *tok);
/* The id of a token given its string in the vocabulary or added tokens (e.g. "<|endoftext|>"),
 * or -1. */
int32_t tokenizer_token_id(const tokenizer *tok, const char *token);
bool tokenizer_is_special(const tokenizer *tok, int32_t id);

#endif
