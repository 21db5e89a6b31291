/* utf8.h: the one UTF-8 decoder (RFC 3629: no overlongs, no surrogates, at most U+10FFFF) and the
 * one replacement rule for bytes that are not UTF-8: each maximal subpart of an ill-formed
 * sequence becomes one U+FFFD (Unicode 15, section 3.9 "U+FFFD Substitution of Maximal
 * Subparts"; what WHATWG's TextDecoder, Rust's String::from_utf8_lossy and Hugging Face's
 * tokenizers do). Everything that turns bytes into text (the tokenizer's decode, the gateway's
 * answers, the CLI's streamed output) goes through here, so the page and the terminal show the
 * same bad bytes the same way. */
#ifndef DUEL_UTF8_H
#define DUEL_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DUEL_UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD, 3 bytes */

/* What starts at s[0..n) (n > 0), as duel_utf8_next reports it. */
typedef enum duel_utf8_kind {
    DUEL_UTF8_CHAR,       /* a whole character of *len bytes, code point *cp */
    DUEL_UTF8_INVALID,    /* an ill-formed sequence; its maximal subpart is *len bytes (>= 1) */
    DUEL_UTF8_INCOMPLETE, /* the well-formed start of a character cut off by the end of the
                             input (*len == n): more bytes may complete it; at the end of the
                             text it is a maximal subpart like any other */
} duel_utf8_kind;

/* Scans the sequence at s[0..n); n == 0 is DUEL_UTF8_INCOMPLETE with *len 0. Never reads past n.
 * *cp is set for DUEL_UTF8_CHAR only. Inline: the tokenizer's pre-tokenizer calls it per
 * character. The second-byte ranges of Unicode's table 3-7 exclude overlongs, surrogates and
 * code points above U+10FFFF, so a sequence is rejected at the first byte that no well-formed
 * sequence could have there, and that byte is where its maximal subpart ends. */
static inline duel_utf8_kind duel_utf8_next(const unsigned char *s, size_t n, size_t *len,
                                            uint32_t *cp) {
    if (n == 0) {
        *len = 0;
        return DUEL_UTF8_INCOMPLETE;
    }
    unsigned char c = s[0];
    if (c < 0x80) {
        *len = 1;
        *cp = c;
        return DUEL_UTF8_CHAR;
    }
    size_t need;
    uint32_t v;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;      /* overlong below U+0800 */
        else if (c == 0xED) hi = 0x9F; /* surrogates U+D800..U+DFFF */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        v = c & 0x07;
        if (c == 0xF0) lo = 0x90;      /* overlong below U+10000 */
        else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
    } else {
        *len = 1; /* 80..C1, F5..FF can never start a character */
        return DUEL_UTF8_INVALID;
    }
    for (size_t i = 1; i < need; i++) {
        if (i == n) {
            *len = n;
            return DUEL_UTF8_INCOMPLETE;
        }
        if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) {
            *len = i;
            return DUEL_UTF8_INVALID;
        }
        v = (v << 6) | (s[i] & 0x3F);
    }
    *len = need;
    *cp = v;
    return DUEL_UTF8_CHAR;
}

/* Decodes one code point at s[0..n). Returns its length in bytes (1-4) and sets *cp, or 0 when
 * the sequence is invalid or truncated. */
int duel_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

/* True when s[0..n) is valid UTF-8. On false, *bad_offset (if non-NULL) is the byte offset of
 * the first invalid sequence. */
bool duel_utf8_valid(const char *s, size_t n, size_t *bad_offset);

/* Encodes cp (<= 0x10FFFF, not a surrogate) into out (4 bytes room). Returns bytes written or 0. */
int duel_utf8_encode(uint32_t cp, char *out);

/* The longest text duel_utf8_lossy can make of n bytes: every byte a maximal subpart. */
#define DUEL_UTF8_LOSSY_MAX(n) (3 * (n))

/* Flags of duel_utf8_lossy. */
#define DUEL_UTF8_LOSSY_NUL 1u /* U+0000 becomes U+FFFD too: for text kept as C strings */

/* Copies s[0..n) to out with every maximal subpart of an ill-formed sequence (an incomplete
 * character at the end included) replaced by U+FFFD. out holds DUEL_UTF8_LOSSY_MAX(n) bytes
 * (it is not NUL-terminated). Returns the bytes written: valid UTF-8. */
size_t duel_utf8_lossy(const char *s, size_t n, unsigned flags, char *out);

#endif
