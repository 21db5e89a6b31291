/* admin_auth.h: who may use the admin API (/api/...): bearer tokens with a role. A token is
 * NAME:SECRET; the server knows each as ROLE:NAME:SECRET (ROLE admin or viewer), from the
 * environment (DUEL_TOKENS, a comma-separated list) and from a file (gateway.tokens_file: one per
 * line, # comments; `ops/up` writes one with a random admin token, mode 0600). Viewers read
 * (/api/stats, GET /api/knobs, /api/audit); admins also change knobs.
 *
 * The decision (admin_auth_check): no Authorization header or a token that is not
 * "Bearer NAME:SECRET" of a known name and secret: 401; a known token whose role may not do the
 * request: 403 (the caller decides, from the role); an address with more than
 * ADMIN_AUTH_FAILURES_PER_MINUTE failed attempts in the last minute: 429 before any comparison.
 * Secrets are compared in constant time (every byte of the longer of the two, whether the name
 * exists or not), never logged, never accepted in a URL. Secrets: at least
 * ADMIN_AUTH_MIN_SECRET bytes of [A-Za-z0-9._~+/=-].
 *
 * Thread: the lws thread owns an admin_auth (its failure table); parsing is pure. */
#ifndef DUEL_GATEWAY_ADMIN_AUTH_H
#define DUEL_GATEWAY_ADMIN_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "str_map.h"

#define ADMIN_AUTH_MAX_TOKENS 64
#define ADMIN_AUTH_NAME_MAX 33    /* bytes of a name, NUL included */
#define ADMIN_AUTH_SECRET_MAX 129 /* bytes of a secret, NUL included */
#define ADMIN_AUTH_MIN_SECRET 16
#define ADMIN_AUTH_FAILURES_PER_MINUTE 10
#define ADMIN_AUTH_MAX_ADDRESSES 10000 /* failure records kept (full ones go first) */

typedef enum admin_role { ADMIN_ROLE_NONE = 0, ADMIN_ROLE_VIEWER = 1, ADMIN_ROLE_ADMIN = 2 } admin_role;

typedef struct admin_token {
    admin_role role;
    char name[ADMIN_AUTH_NAME_MAX];
    char secret[ADMIN_AUTH_SECRET_MAX];
    size_t secret_len;
} admin_token;

typedef struct admin_auth {
    admin_token tokens[ADMIN_AUTH_MAX_TOKENS];
    int n_tokens;
    str_map failures; /* address -> failure bucket */
} admin_auth;

void admin_auth_init(admin_auth *a);
void admin_auth_free(admin_auth *a); /* wipes the secrets */

/* Adds the tokens of text: ROLE:NAME:SECRET entries separated by commas or newlines; blank
 * lines and lines starting with # are skipped. source names the text in messages ("DUEL_TOKENS",
 * a file's path); a message names the entry by its position and name, never its secret.
 * DUEL_EINVAL for a bad entry or a name given twice (nothing of text is added then). */
int admin_auth_add(admin_auth *a, const char *text, const char *source, duel_error *err);
/* The same for a file (at most 64 KiB). */
int admin_auth_add_file(admin_auth *a, const char *path, duel_error *err);

typedef enum admin_auth_result {
    ADMIN_AUTH_OK,       /* *who and *role are set */
    ADMIN_AUTH_MISSING,  /* no Authorization header: 401 */
    ADMIN_AUTH_REFUSED,  /* not a known token: 401 */
    ADMIN_AUTH_LIMITED,  /* too many failures from this address: 429 */
} admin_auth_result;

/* Checks an Authorization header value (NULL or "" when absent) from address at time now
 * (seconds); a refusal counts against the address. who gets the token's name. */
admin_auth_result admin_auth_check(admin_auth *a, const char *header, const char *address,
                                   double now, admin_role *role, const char **who);

/* Constant-time equality of two byte strings (time depends only on the longer length). */
bool admin_auth_equal(const char *a, size_t a_len, const char *b, size_t b_len);

#endif
