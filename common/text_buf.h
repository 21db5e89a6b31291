/* text_buf.h: a growable NUL-terminated text buffer written with printf, and the lines of the
 * Prometheus text exposition format (0.0.4) written into one: what the gateway's and the
 * trainer's /metrics, and the generated docs, build their text with. A failed allocation marks
 * the buffer failed; later writes are ignored and text_buf_take returns NULL. */
#ifndef DUEL_TEXT_BUF_H
#define DUEL_TEXT_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct text_buf {
    char *s;
    size_t len, cap;
    bool failed;
} text_buf;

void text_buf_printf(text_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The text (malloc'd, the caller frees; *len may be NULL) and an empty buffer; NULL when a write
 * failed. */
char *text_buf_take(text_buf *b, size_t *len);
void text_buf_free(text_buf *b);

/* "# HELP name help\n# TYPE name type\n" */
void prom_header(text_buf *b, const char *name, const char *type, const char *help);
/* A whole unlabelled metric: header and one sample (a gauge that is not finite is NaN). */
void prom_counter(text_buf *b, const char *name, const char *help, uint64_t value);
void prom_gauge(text_buf *b, const char *name, const char *help, double value);
/* A sample's value as the format writes it ("NaN", "+Inf", or %.17g). */
const char *prom_value(double value, char buf[32]);

#endif
