/* admin_auth.c: bearer tokens and their checks (see admin_auth.h). Invariant: a secret leaves
 * this file only through admin_auth_equal's yes or no: no message, log line or reply holds one. */
#include "admin_auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_map.h"

#define FAILURE_WINDOW_S 60.0

typedef struct failure_bucket {
    double tokens, last; /* token bucket: ADMIN_AUTH_FAILURES_PER_MINUTE, refilled per minute */
} failure_bucket;

void admin_auth_init(admin_auth *a) {
    memset(a, 0, sizeof *a);
    str_map_init(&a->failures);
}

static void free_bucket(void *ctx, const char *key, void *value) {
    (void)ctx, (void)key;
    free(value);
}

/* Overwrites memory the compiler may not elide (the secrets). */
static void wipe(void *p, size_t n) {
    volatile unsigned char *v = p;
    while (n--) *v++ = 0;
}

void admin_auth_free(admin_auth *a) {
    str_map_foreach(&a->failures, free_bucket, NULL);
    str_map_free(&a->failures);
    wipe(a->tokens, sizeof a->tokens);
    a->n_tokens = 0;
}

bool admin_auth_equal(const char *a, size_t a_len, const char *b, size_t b_len) {
    size_t n = a_len > b_len ? a_len : b_len;
    unsigned char diff = a_len != b_len;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < a_len ? (unsigned char)a[i] : 0;
        unsigned char y = i < b_len ? (unsigned char)b[i] : 0;
        diff |= x ^ y;
    }
    return diff == 0;
}

static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

static bool secret_char(char c) {
    return name_char(c) || c == '~' || c == '+' || c == '/' || c == '=';
}

/* Parses one ROLE:NAME:SECRET entry of len bytes into t; a message names entry number k. */
static int parse_entry(const char *s, size_t len, int k, const char *source, admin_token *t,
                       duel_error *err) {
    memset(t, 0, sizeof *t);
    const char *c1 = memchr(s, ':', len);
    const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - s)) : NULL;
    if (!c1 || !c2)
        return duel_error_set(err, DUEL_EINVAL, "%s: token %d: expected ROLE:NAME:SECRET", source, k);
    size_t role_len = (size_t)(c1 - s), name_len = (size_t)(c2 - c1 - 1);
    size_t secret_len = len - (size_t)(c2 + 1 - s);
    if (role_len == 5 && memcmp(s, "admin", 5) == 0) t->role = ADMIN_ROLE_ADMIN;
    else if (role_len == 6 && memcmp(s, "viewer", 6) == 0) t->role = ADMIN_ROLE_VIEWER;
    else
        return duel_error_set(err, DUEL_EINVAL, "%s: token %d: the role must be admin or viewer",
                              source, k);
    if (name_len == 0 || name_len >= ADMIN_AUTH_NAME_MAX)
        return duel_error_set(err, DUEL_EINVAL, "%s: token %d: the name must be 1..%d bytes", source,
                              k, ADMIN_AUTH_NAME_MAX - 1);
    for (size_t i = 0; i < name_len; i++)
        if (!name_char(c1[1 + i]))
            return duel_error_set(err, DUEL_EINVAL,
                                  "%s: token %d: the name may hold only letters, digits, '_', '.' "
                                  "and '-'",
                                  source, k);
    memcpy(t->name, c1 + 1, name_len);
    if (secret_len < ADMIN_AUTH_MIN_SECRET || secret_len >= ADMIN_AUTH_SECRET_MAX)
        return duel_error_set(err, DUEL_EINVAL, "%s: token %d (%s): the secret must be %d..%d bytes",
                              source, k, t->name, ADMIN_AUTH_MIN_SECRET, ADMIN_AUTH_SECRET_MAX - 1);
    for (size_t i = 0; i < secret_len; i++)
        if (!secret_char(c2[1 + i]))
            return duel_error_set(err, DUEL_EINVAL,
                                  "%s: token %d (%s): the secret may hold only letters, digits and "
                                  "._~+/=-",
                                  source, k, t->name);
    memcpy(t->secret, c2 + 1, secret_len);
    t->secret_len = secret_len;
    return DUEL_OK;
}

int admin_auth_add(admin_auth *a, const char *text, const char *source, duel_error *err) {
    admin_token added[ADMIN_AUTH_MAX_TOKENS];
    int n = 0, k = 0, rc = DUEL_OK;
    for (const char *p = text; *p && !rc;) {
        size_t len = strcspn(p, ",\n");
        const char *next = p + len + (p[len] ? 1 : 0);
        while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        while (len > 0 && (*p == ' ' || *p == '\t')) p++, len--;
        if (len > 0 && *p != '#') {
            k++;
            if (a->n_tokens + n >= ADMIN_AUTH_MAX_TOKENS)
                rc = duel_error_set(err, DUEL_ELIMIT, "%s: more than %d tokens", source,
                                    ADMIN_AUTH_MAX_TOKENS);
            else rc = parse_entry(p, len, k, source, &added[n], err);
            for (int i = 0; !rc && i < a->n_tokens + n; i++) {
                const char *other = i < a->n_tokens ? a->tokens[i].name : added[i - a->n_tokens].name;
                if (strcmp(other, added[n].name) == 0)
                    rc = duel_error_set(err, DUEL_EINVAL, "%s: token %d: the name %s is taken", source,
                                        k, added[n].name);
            }
            if (!rc) n++;
        }
        p = next;
    }
    if (!rc) {
        memcpy(&a->tokens[a->n_tokens], added, (size_t)n * sizeof added[0]);
        a->n_tokens += n;
    }
    wipe(added, sizeof added);
    return rc;
}

#define TOKENS_FILE_MAX (64 * 1024)

int admin_auth_add_file(admin_auth *a, const char *path, duel_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = duel_file_read_all(path, TOKENS_FILE_MAX, &text, &len, err);
    if (rc) return rc;
    rc = strlen(text) != len ? duel_error_set(err, DUEL_EFORMAT, "%s: not text", path)
                             : admin_auth_add(a, text, path, err);
    wipe(text, len);
    free(text);
    return rc;
}

/* The address's bucket, refilled to now; NULL on out of memory (then no limit applies). */
static failure_bucket *bucket_for(admin_auth *a, const char *address, double now) {
    failure_bucket *b = str_map_get(&a->failures, address);
    if (!b) {
        if (a->failures.size >= ADMIN_AUTH_MAX_ADDRESSES) {
            /* a flood of addresses: start afresh rather than grow without bound */
            str_map_foreach(&a->failures, free_bucket, NULL);
            str_map_free(&a->failures);
            str_map_init(&a->failures);
        }
        if (!(b = malloc(sizeof *b))) return NULL;
        b->tokens = ADMIN_AUTH_FAILURES_PER_MINUTE;
        b->last = now;
        if (str_map_put(&a->failures, address, b)) {
            free(b);
            return NULL;
        }
    }
    b->tokens += (now - b->last) * ADMIN_AUTH_FAILURES_PER_MINUTE / FAILURE_WINDOW_S;
    if (b->tokens > ADMIN_AUTH_FAILURES_PER_MINUTE) b->tokens = ADMIN_AUTH_FAILURES_PER_MINUTE;
    b->last = now;
    return b;
}

admin_auth_result admin_auth_check(admin_auth *a, const char *header, const char *address,
                                   double now, admin_role *role, const char **who) {
    *role = ADMIN_ROLE_NONE;
    *who = NULL;
    failure_bucket *b = bucket_for(a, address ? address : "", now);
    if (b && b->tokens < 1) return ADMIN_AUTH_LIMITED;
    admin_auth_result refusal = header && *header ? ADMIN_AUTH_REFUSED : ADMIN_AUTH_MISSING;
    const char *token = NULL;
    if (header && strncmp(header, "Bearer ", 7) == 0) token = header + 7;
    const char *colon = token ? strchr(token, ':') : NULL;
    if (colon) {
        size_t name_len = (size_t)(colon - token), secret_len = strlen(colon + 1);
        const admin_token *match = NULL;
        static const char DUMMY[ADMIN_AUTH_SECRET_MAX] = {0};
        for (int i = 0; i < a->n_tokens; i++)
            if (strlen(a->tokens[i].name) == name_len && memcmp(a->tokens[i].name, token, name_len) == 0)
                match = &a->tokens[i];
        /* The same comparison whether the name exists or not. */
        bool equal = admin_auth_equal(match ? match->secret : DUMMY,
                                      match ? match->secret_len : ADMIN_AUTH_SECRET_MAX - 1,
                                      colon + 1, secret_len);
        if (match && equal) {
            *role = match->role;
            *who = match->name;
            return ADMIN_AUTH_OK;
        }
    }
    if (b) b->tokens -= 1;
    return refusal;
}
