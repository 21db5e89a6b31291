/* utf8_stream.c: complete-character streaming of token bytes (utf8_stream.h). Invariant: pending
 * holds at most 3 bytes that are a valid prefix of some UTF-8 character. Invalid input is
 * replaced like Rust's String::from_utf8_lossy (which Hugging Face uses): one U+FFFD per maximal
 * prefix of a valid sequence, or per byte that cannot start one. */
#include "utf8_stream.h"

#include <stdbool.h>
#include <stdint.h>

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* Length a lead byte announces, or 0 when it cannot start a character. */
static size_t lead_length(unsigned char b) {
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0;
}

/* Length of the longest prefix of p[0..n) (p[0] a valid lead) that can still be part of a valid
 * character: continuation bytes, with the second-byte ranges that exclude overlongs, surrogates
 * and code points above U+10FFFF. */
static size_t valid_prefix_length(const unsigned char *p, size_t n) {
    for (size_t i = 1; i < n; i++) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (i == 1) {
            if (p[0] == 0xE0) lo = 0xA0;
            else if (p[0] == 0xED) hi = 0x9F;
            else if (p[0] == 0xF0) lo = 0x90;
            else if (p[0] == 0xF4) hi = 0x8F;
        }
        if (p[i] < lo || p[i] > hi) return i;
    }
    return n;
}

/* Drops n bytes of the character being assembled: pending ones first, then input. */
static void consume(utf8_stream *s, size_t *i, size_t n) {
    if (n <= s->n_pending) {
        for (size_t k = n; k < s->n_pending; k++) s->pending[k - n] = s->pending[k];
        s->n_pending -= n;
    } else {
        *i += n - s->n_pending;
        s->n_pending = 0;
    }
}

void utf8_stream_init(utf8_stream *s, bool escape_controls) {
    s->n_pending = 0;
    s->escape_controls = escape_controls;
}

static bool is_control(const unsigned char *c, size_t len) {
    if (len == 1) return (c[0] < 0x20 && c[0] != '\n' && c[0] != '\t') || c[0] == 0x7F;
    return len == 2 && c[0] == 0xC2 && c[1] < 0xA0; /* U+0080..U+009F */
}

size_t utf8_stream_write(utf8_stream *s, const char *bytes, size_t len, FILE *out) {
    size_t written = 0, i = 0;
    const unsigned char *in = (const unsigned char *)bytes;
    while (i < len || s->n_pending > 0) {
        unsigned char buf[4];
        size_t got = s->n_pending;
        for (size_t k = 0; k < got; k++) buf[k] = s->pending[k];
        size_t need = lead_length(got ? buf[0] : in[i]);
        if (need == 0) {
            fwrite(REPLACEMENT, 1, 3, out);
            written += 3;
            consume(s, &i, 1);
            continue;
        }
        for (size_t k = i; got < need && k < len; k++) buf[got++] = in[k];
        size_t valid = valid_prefix_length(buf, got);
        if (valid < got) {
            fwrite(REPLACEMENT, 1, 3, out); /* a prefix that the next byte broke */
            written += 3;
            consume(s, &i, valid);
            continue;
        }
        if (got < need) {
            /* Valid so far but incomplete: hold it back until more bytes come. */
            for (size_t k = 0; k < got; k++) s->pending[k] = buf[k];
            s->n_pending = got;
            i = len;
            break;
        }
        if (s->escape_controls && is_control(buf, need)) {
            fwrite(REPLACEMENT, 1, 3, out);
            written += 3;
        } else {
            fwrite(buf, 1, need, out);
            written += need;
        }
        consume(s, &i, need);
    }
    return written;
}

size_t utf8_stream_finish(utf8_stream *s, FILE *out) {
    if (s->n_pending == 0) return 0;
    s->n_pending = 0;
    fwrite(REPLACEMENT, 1, 3, out);
    return 3;
}
