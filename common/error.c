/* error.c: formatting of duel_error messages (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int duel_error_set(duel_error *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int duel_error_prefix(duel_error *err, const char *fmt, ...) {
    if (!err) return DUEL_EINVAL;
    char prefix[DUEL_ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[DUEL_ERROR_MESSAGE_MAX];
    memcpy(old, err->message, sizeof old);
    size_t n = strnlen(prefix, sizeof prefix - 1);
    if (n > sizeof err->message - 3) n = sizeof err->message - 3;
    memcpy(err->message, prefix, n);
    memcpy(err->message + n, ": ", 2);
    size_t room = sizeof err->message - n - 2;
    size_t m = strnlen(old, sizeof old - 1);
    if (m > room - 1) m = room - 1;
    memcpy(err->message + n + 2, old, m);
    err->message[n + 2 + m] = '\0';
    return err->code;
}

const char *duel_error_name(int code) {
    switch (code) {
    case DUEL_OK: return "ok";
    case DUEL_EIO: return "io";
    case DUEL_EFORMAT: return "format";
    case DUEL_ENOMEM: return "nomem";
    case DUEL_EINVAL: return "invalid";
    case DUEL_EUNSUPPORTED: return "unsupported";
    case DUEL_ENOTFOUND: return "notfound";
    case DUEL_ELIMIT: return "limit";
    case DUEL_EDEVICE: return "device";
    default: return "unknown";
    }
}
