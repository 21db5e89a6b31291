/* utf8_stream.c: complete-character streaming of token bytes (utf8_stream.h). Invariant: pending
 * holds at most 3 bytes that are the well-formed start of some UTF-8 character. Characters are
 * read with the one decoder and invalid input replaced by the one rule (common/utf8.h: U+FFFD
 * per maximal subpart), so the stream writes exactly what duel_utf8_lossy makes of the whole
 * text, however the bytes are split. */
#include "utf8_stream.h"

#include <stdbool.h>
#include <stdint.h>

#include "utf8.h"

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

static bool is_control(uint32_t cp) {
    return (cp < 0x20 && cp != '\n' && cp != '\t') || (cp >= 0x7F && cp <= 0x9F); /* C0, DEL, C1 */
}

size_t utf8_stream_write(utf8_stream *s, const char *bytes, size_t len, FILE *out) {
    size_t written = 0, i = 0;
    const unsigned char *in = (const unsigned char *)bytes;
    while (i < len || s->n_pending > 0) {
        /* The held-back bytes, then as much input as one character can need. */
        unsigned char buf[4];
        size_t got = s->n_pending;
        for (size_t k = 0; k < got; k++) buf[k] = s->pending[k];
        for (size_t k = i; got < 4 && k < len; k++) buf[got++] = in[k];
        size_t n;
        uint32_t cp = 0;
        duel_utf8_kind kind = duel_utf8_next(buf, got, &n, &cp);
        if (kind == DUEL_UTF8_INCOMPLETE) {
            /* Well-formed so far but cut off: hold it back until more bytes come. */
            for (size_t k = 0; k < got; k++) s->pending[k] = buf[k];
            s->n_pending = got;
            break;
        }
        if (kind == DUEL_UTF8_INVALID || (s->escape_controls && is_control(cp))) {
            fwrite(DUEL_UTF8_REPLACEMENT, 1, 3, out);
            written += 3;
        } else {
            fwrite(buf, 1, n, out);
            written += n;
        }
        consume(s, &i, n);
    }
    return written;
}

size_t utf8_stream_finish(utf8_stream *s, FILE *out) {
    if (s->n_pending == 0) return 0;
    /* An incomplete character at the end is one maximal subpart. */
    s->n_pending = 0;
    fwrite(DUEL_UTF8_REPLACEMENT, 1, 3, out);
    return 3;
}
