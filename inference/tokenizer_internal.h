/* tokenizer_internal.h: pieces shared by the tokenizer's source files (not a public header):
 * the hand-written matchers for the pre-tokenizer regexes (tokenizer_pretok.c) and the NFC
 * normalizer (tokenizer_nfc.c). All of them take valid UTF-8 (the encoder validates first). */
#ifndef DUEL_TOKENIZER_INTERNAL_H
#define DUEL_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "utf8.h"

/* The pre-tokenizer regexes we implement, recognised by exact string compare of the pattern. */
typedef enum tokenizer_split_pattern {
    TOKENIZER_PATTERN_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    TOKENIZER_PATTERN_LLAMA3, /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|... */
    TOKENIZER_PATTERN_QWEN2,  /* the Llama 3 pattern with \p{N} instead of \p{N}{1,3} */
} tokenizer_split_pattern;

extern const char *const tokenizer_pattern_gpt2;
extern const char *const tokenizer_pattern_llama3;
extern const char *const tokenizer_pattern_qwen2;

/* The code point at s[i] (i < n) and its length in bytes, for scanning text the encoder has
 * already validated: ASCII inline, the rest through the one decoder (common/utf8.h), which never
 * reads past n; an invalid sequence would give U+FFFD over its maximal subpart. */
static inline size_t tokenizer_cp_at(const unsigned char *s, size_t n, size_t i, uint32_t *cp) {
    if (s[i] < 0x80) {
        *cp = s[i];
        return 1;
    }
    size_t len;
    if (duel_utf8_next(s + i, n - i, &len, cp) != DUEL_UTF8_CHAR) *cp = 0xFFFD;
    return len;
}

/* End offset (exclusive) of the regex match of pattern starting at s[i] (i < n); always > i
 * because the patterns match every character. */
size_t tokenizer_pattern_match(tokenizer_split_pattern pattern, const unsigned char *s, size_t n,
                               size_t i);

/* End of the piece starting at i for the Digits pre-tokenizer (numbers are Rust's
 * char::is_numeric, i.e. \p{N}): a lone number when individual, else a run of numbers or of
 * non-numbers. */
size_t tokenizer_digits_match(bool individual, const unsigned char *s, size_t n, size_t i);

/* NFC of s[0..n) into a heap buffer (*out, *out_len); returns false when out of memory. When
 * the text is already NFC-stable for sure (nothing at or above U+0300), *out is NULL. */
bool tokenizer_nfc(const unsigned char *s, size_t n, unsigned char **out, size_t *out_len);

/* Unicode White_Space (what \s and Rust's char::is_whitespace mean). */
bool tokenizer_is_space_cp(uint32_t cp);

#endif
