/* text_buf.c: the growable text buffer and the Prometheus lines (see text_buf.h). */
#include "text_buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void text_buf_printf(text_buf *b, const char *fmt, ...) {
    while (!b->failed) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if (b->s && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->failed = true;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

char *text_buf_take(text_buf *b, size_t *len) {
    if (!b->failed && !b->s) text_buf_printf(b, "%s", "");
    char *s = b->failed ? NULL : b->s;
    if (len) *len = s ? b->len : 0;
    if (!s) free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
    b->failed = false;
    return s;
}

void text_buf_free(text_buf *b) {
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
    b->failed = false;
}

void prom_header(text_buf *b, const char *name, const char *type, const char *help) {
    text_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

const char *prom_value(double v, char buf[32]) {
    if (isnan(v)) snprintf(buf, 32, "NaN");
    else if (isinf(v)) snprintf(buf, 32, v > 0 ? "+Inf" : "-Inf");
    else snprintf(buf, 32, "%.17g", v);
    return buf;
}

void prom_counter(text_buf *b, const char *name, const char *help, uint64_t value) {
    prom_header(b, name, "counter", help);
    text_buf_printf(b, "%s %llu\n", name, (unsigned long long)value);
}

void prom_gauge(text_buf *b, const char *name, const char *help, double value) {
    char v[32];
    prom_header(b, name, "gauge", help);
    text_buf_printf(b, "%s %s\n", name, prom_value(value, v));
}
