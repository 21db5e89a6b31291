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
 * Byte sequences that are not valid UTF-8 are replaced by U+FFFD, one per maximal subpart, as
 * Hugging Face does (the one rule of common/utf8.h). */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len, duel_error *err);

/* The raw bytes a token stands for (after byte-level decoding; for special tokens their content).
 * For streaming: concatenate bytes and print only complete UTF-8. Returns DUEL_EINVAL for ids out
 * of range. */
int tokenizer_token_bytes(const tokenizer *tok, int32_t id, const char **bytes, size_t *len);

/* The GPT-2 pre-tokenizer's split of valid UTF-8 text: the end (exclusive) of the piece that
 * starts at s[i] (i < n), always > i. The BPE trainer splits its corpus with it, so that merges
 * never cross the pieces the encoder will see. */
size_t tokenizer_gpt2_piece_end(const char *s, size_t n, size_t i);

/* GPT-2's byte-level alphabet (bytes_to_unicode): the vocabulary string of the raw bytes
 * s[0..n), each byte one code point (printable bytes themselves, the others U+0100 upwards).
 * out holds 2 * n + 1 bytes; returns the string's length (out is NUL-terminated). */
size_t tokenizer_byte_level_string(const unsigned char *s, size_t n, char *out);

/* Number of ids (largest id + 1, counting added tokens). */
int tokenizer_vocab_size(const tokenizer *tok);
/* The id of a token given its string in the vocabulary or added tokens (e.g. "<|endoftext|>"),
 * or -1. */
int32_t tokenizer_token_id(const tokenizer *tok, const char *token);
bool tokenizer_is_special(const tokenizer *tok, int32_t id);

#endif
