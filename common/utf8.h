/* utf8.h: strict UTF-8 validation and decoding (no overlongs, no surrogates, max U+10FFFF). */
#ifndef DUEL_UTF8_H
#define DUEL_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when s[0..n) is valid UTF-8. On false, *bad_offset (if non-NULL) is the byte offset of
 * the first invalid sequence. */
bool duel_utf8_valid(const char *s, size_t n, size_t *bad_offset);

/* Decodes one code point at s[0..n). Returns its length in bytes (1-4) and sets *cp, or 0 when
 * the sequence is invalid or truncated. */
int duel_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

/* Encodes cp (<= 0x10FFFF, not a surrogate) into out (4 bytes room). Returns bytes written or 0. */
int duel_utf8_encode(uint32_t cp, char *out);

#endif
