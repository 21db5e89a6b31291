/* error.h: the project's error convention. Library functions return an int status (0 ok, one of
 * the negative DUEL_E* codes on failure) and, when given a non-NULL duel_error, fill it with a
 * human-readable message naming the file or input and the problem. Only main() prints. */
#ifndef DUEL_ERROR_H
#define DUEL_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DUEL_OK = 0,
    DUEL_EIO = -1,          /* a file or socket could not be read or written */
    DUEL_EFORMAT = -2,      /* input is malformed (bad JSON, corrupt header, wrong shape) */
    DUEL_ENOMEM = -3,       /* an allocation failed */
    DUEL_EINVAL = -4,       /* a caller passed an invalid argument */
    DUEL_EUNSUPPORTED = -5, /* well-formed but not something we implement (architecture, dtype) */
    DUEL_ENOTFOUND = -6,    /* a named thing (tensor, file, key) does not exist */
    DUEL_ELIMIT = -7,       /* a size or count limit was exceeded */
    DUEL_EDEVICE = -8,      /* a GPU or other device is missing or failed */
};

#define DUEL_ERROR_MESSAGE_MAX 1024

typedef struct duel_error {
    int code;
    char message[DUEL_ERROR_MESSAGE_MAX];
} duel_error;

/* Records code and a printf-style message in err (if err is non-NULL) and returns code, so that
 * callers can write `return duel_error_set(err, DUEL_EFORMAT, "%s: bad header", path);`. */
int duel_error_set(duel_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "context: " to an existing message (for adding the file name at an outer level).
 * Returns err->code (or DUEL_EINVAL when err is NULL). */
int duel_error_prefix(duel_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Short stable name of a code, e.g. "format" for DUEL_EFORMAT. */
const char *duel_error_name(int code);

#ifdef __cplusplus
}
#endif

#endif
