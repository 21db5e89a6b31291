/* utf8_stream.h: printing streamed token bytes as text. Byte-level BPE tokens may end in the
 * middle of a UTF-8 character; the stream holds such a tail back until the rest arrives and
 * writes only complete characters. Bytes that can never form valid UTF-8 become U+FFFD by the
 * one rule of common/utf8.h (one per maximal subpart, as Hugging Face's decoder and the chat
 * page do), so the output is always valid UTF-8 and, chunked any way, the same text as
 * duel_utf8_lossy of the whole. */
#ifndef DUEL_CLI_UTF8_STREAM_H
#define DUEL_CLI_UTF8_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct utf8_stream {
    unsigned char pending[4]; /* an incomplete but so far valid character */
    size_t n_pending;
    bool escape_controls;     /* write control characters (C0 but tab and newline, DEL, C1)
                               * as U+FFFD: for terminals, where they could act as commands */
} utf8_stream;

void utf8_stream_init(utf8_stream *s, bool escape_controls);
/* Appends bytes and writes every complete character to out. Returns bytes written to out. */
size_t utf8_stream_write(utf8_stream *s, const char *bytes, size_t len, FILE *out);
/* Writes a held-back incomplete tail as U+FFFD (end of the text). Returns bytes written. */
size_t utf8_stream_finish(utf8_stream *s, FILE *out);

#endif
