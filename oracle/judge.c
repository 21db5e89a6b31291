/* judge.c: the LLM-judge oracle. A minimal HTTP/1.1 client over POSIX sockets (plain http://,
 * one request per connection, "Connection: close") posts a pairwise prompt to an OpenAI-compatible
 * /v1/chat/completions endpoint and reads back "A" or "B". Every byte from the network is
 * untrusted: the response is size-limited, the HTTP framing (Content-Length or chunked) checked,
 * the JSON parsed strictly, and the verdict must be one letter. Each attempt has a connect
 * deadline and a deadline for the whole exchange; failures are retried with exponential backoff
 * and, when all attempts fail, reported as an error with no preference (no vote).
 * Thread-safe: no state outside the call. Name resolution (getaddrinfo) is not covered by the
 * timeouts; use a numeric address where that matters. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "json_util.h"
#include "oracle.h"
#include "timer.h"
#include "utf8.h"

#ifndef DUEL_VERSION_STRING
#define DUEL_VERSION_STRING "0"
#endif

#define JUDGE_MAX_HEADER_BYTES (64u << 10) /* status line and headers of a response */
#define JUDGE_QUOTE_BYTES 80               /* how much of a bad answer an error message quotes */

static const char JUDGE_SYSTEM_PROMPT[] =
    "You are an impartial judge comparing two answers to the same question. Decide which answer "
    "is more helpful, correct and clear. Do not let the order of the answers, their length or "
    "their style sway you. Reply with a single letter: A or B.";

void oracle_judge_config_default(oracle_judge_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->url, sizeof c->url, "http://127.0.0.1:8000/v1/chat/completions");
    snprintf(c->model, sizeof c->model, "judge");
    c->connect_timeout_ms = 5000;
    c->read_timeout_ms = 60000;
    c->max_attempts = 3;
    c->backoff_ms = 500;
    c->backoff_max_ms = 8000;
    c->max_tokens = 8;
    c->temperature = 0.0;
    c->both_orders = false;
}

typedef struct judge_url {
    char host[256]; /* without brackets for IPv6 */
    char port[8];
    char host_header[272];
    const char *path; /* points into the config's url */
} judge_url;

static int parse_url(const char *url, judge_url *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    size_t n = strnlen(url, ORACLE_JUDGE_MAX_URL);
    if (n == ORACLE_JUDGE_MAX_URL)
        return duel_error_set(err, DUEL_EINVAL, "judge: url is not NUL-terminated");
    if (strncmp(url, "https://", 8) == 0)
        return duel_error_set(err, DUEL_EUNSUPPORTED, "judge url %s: https is not supported (put a "
                              "TLS proxy in front and give its http:// address)", url);
    if (strncmp(url, "http://", 7) != 0)
        return duel_error_set(err, DUEL_EINVAL, "judge url \"%s\" does not start with http://",
                              url);
    const char *p = url + 7, *host_end, *after;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (!host_end) return duel_error_set(err, DUEL_EINVAL, "judge url %s: unclosed [", url);
        p++;
        after = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        after = host_end;
    }
    size_t host_len = (size_t)(host_end - p);
    if (host_len == 0 || host_len >= sizeof out->host)
        return duel_error_set(err, DUEL_EINVAL, "judge url %s: missing or overlong host", url);
    for (size_t i = 0; i < host_len; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '_'))
            return duel_error_set(err, DUEL_EINVAL, "judge url %s: bad character in host", url);
    }
    memcpy(out->host, p, host_len);
    long port = 80;
    if (*after == ':') {
        char *end;
        errno = 0;
        port = after[1] >= '0' && after[1] <= '9' ? strtol(after + 1, &end, 10) : -1;
        if (port < 1 || port > 65535 || errno || (*end != '/' && *end != '\0'))
            return duel_error_set(err, DUEL_EINVAL, "judge url %s: bad port", url);
        after = end;
    }
    if (*after != '/')
        return duel_error_set(err, DUEL_EINVAL, "judge url %s: missing path (e.g. "
                              "/v1/chat/completions)", url);
    for (const char *q = after; *q; q++)
        if ((unsigned char)*q <= ' ' || *q == 0x7f)
            return duel_error_set(err, DUEL_EINVAL, "judge url %s: space or control character "
                                  "in path", url);
    out->path = after;
    snprintf(out->port, sizeof out->port, "%ld", port);
    int ipv6 = strchr(out->host, ':') != NULL;
    snprintf(out->host_header, sizeof out->host_header, "%s%s%s:%ld", ipv6 ? "[" : "", out->host,
             ipv6 ? "]" : "", port);
    return 0;
}

int oracle_judge_config_validate(const oracle_judge_config *c, duel_error *err) {
    if (!c) return duel_error_set(err, DUEL_EINVAL, "judge: config is NULL");
    judge_url u;
    int rc = parse_url(c->url, &u, err);
    if (rc) return rc;
    size_t model_len = strnlen(c->model, sizeof c->model);
    if (model_len == 0 || model_len == sizeof c->model)
        return duel_error_set(err, DUEL_EINVAL, "judge: model name is empty or not terminated");
    size_t key_len = strnlen(c->api_key, sizeof c->api_key);
    if (key_len == sizeof c->api_key)
        return duel_error_set(err, DUEL_EINVAL, "judge: api key is not terminated");
    for (size_t i = 0; i < key_len; i++)
        if ((unsigned char)c->api_key[i] <= ' ' || c->api_key[i] == 0x7f)
            return duel_error_set(err, DUEL_EINVAL, "judge: api key contains a space or control "
                                  "character");
    struct { const char *name; int v, lo, hi; } ints[] = {
        {"connect_timeout_ms", c->connect_timeout_ms, 1, 600000},
        {"read_timeout_ms", c->read_timeout_ms, 1, 3600000},
        {"max_attempts", c->max_attempts, 1, 100},
        {"backoff_ms", c->backoff_ms, 0, 600000},
        {"backoff_max_ms", c->backoff_max_ms, 0, 3600000},
        {"max_tokens", c->max_tokens, 1, 4096},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi)
            return duel_error_set(err, DUEL_EINVAL, "judge: %s %d outside %d..%d", ints[i].name,
                                  ints[i].v, ints[i].lo, ints[i].hi);
    if (!isfinite(c->temperature) || c->temperature < 0 || c->temperature > 2)
        return duel_error_set(err, DUEL_EINVAL, "judge: temperature %g outside 0..2",
                              c->temperature);
    return 0;
}

static int check_text(const char *what, const char *s, duel_error *err) {
    if (!s) return duel_error_set(err, DUEL_EINVAL, "judge: %s is NULL", what);
    size_t n = strnlen(s, ORACLE_JUDGE_MAX_TEXT_BYTES + 1);
    if (n > ORACLE_JUDGE_MAX_TEXT_BYTES)
        return duel_error_set(err, DUEL_ELIMIT, "judge: %s is longer than %u bytes", what,
                              ORACLE_JUDGE_MAX_TEXT_BYTES);
    size_t bad;
    if (!duel_utf8_valid(s, n, &bad))
        return duel_error_set(err, DUEL_EINVAL, "judge: %s is not valid UTF-8 (byte %zu)", what,
                              bad);
    return 0;
}

int oracle_judge_build_request(const oracle_judge_config *c, const char *prompt, const char *a,
                               const char *b, char **body, duel_error *err) {
    if (!c || !body) return duel_error_set(err, DUEL_EINVAL, "judge: NULL argument");
    *body = NULL;
    int rc;
    if ((rc = check_text("prompt", prompt, err)) || (rc = check_text("answer a", a, err)) ||
        (rc = check_text("answer b", b, err)))
        return rc;
    if (!duel_utf8_valid(c->model, strnlen(c->model, sizeof c->model), NULL))
        return duel_error_set(err, DUEL_EINVAL, "judge: model name is not valid UTF-8");
    size_t cap = strlen(prompt) + strlen(a) + strlen(b) + 256;
    char *user = malloc(cap);
    if (!user) return duel_error_set(err, DUEL_ENOMEM, "judge: out of memory");
    snprintf(user, cap,
             "Question:\n%s\n\nAnswer A:\n%s\n\nAnswer B:\n%s\n\n"
             "Which answer is better? Reply with exactly one letter, A or B.",
             prompt, a, b);
    json_t *root = json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:f, s:i, s:b}", "model",
                             c->model, "messages", "role", "system", "content",
                             JUDGE_SYSTEM_PROMPT, "role", "user", "content", user, "temperature",
                             c->temperature, "max_tokens", c->max_tokens, "stream", 0);
    free(user);
    if (!root) return duel_error_set(err, DUEL_ENOMEM, "judge: cannot build the request JSON");
    *body = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!*body) return duel_error_set(err, DUEL_ENOMEM, "judge: cannot serialise the request");
    return 0;
}

/* Copies at most JUDGE_QUOTE_BYTES of s with control characters and quotes made harmless. */
static void quote(const char *s, size_t n, char *out, size_t cap) {
    size_t w = 0;
    for (size_t i = 0; i < n && w + 4 < cap && i < JUDGE_QUOTE_BYTES; i++) {
        unsigned char c = (unsigned char)s[i];
        out[w++] = c < ' ' || c == 0x7f || c == '"' ? '?' : (char)c;
    }
    if (n > JUDGE_QUOTE_BYTES && w + 4 < cap) {
        memcpy(out + w, "...", 3);
        w += 3;
    }
    out[w] = '\0';
}

static int is_trim(char c, const char *set) { return c && strchr(set, c) != NULL; }

/* The verdict rules of oracle.h. */
static int extract_verdict(const char *s, size_t n, oracle_choice *out, duel_error *err) {
    static const char lead[] = " \t\r\n\"'`*([", trail[] = " \t\r\n\"'`*.)]!";
    size_t i = 0, j = n;
    for (int pass = 0; pass < 2; pass++) {
        while (i < j && is_trim(s[i], lead)) i++;
        while (j > i && is_trim(s[j - 1], trail)) j--;
        if (pass == 0 && j - i > 6 && strncasecmp(s + i, "answer", 6) == 0 &&
            (s[i + 6] == ':' || s[i + 6] == ' '))
            i += 7;
        else
            break;
    }
    if (j - i == 1 && (s[i] == 'A' || s[i] == 'a' || s[i] == 'B' || s[i] == 'b')) {
        *out = s[i] == 'A' || s[i] == 'a' ? ORACLE_PREFER_A : ORACLE_PREFER_B;
        return 0;
    }
    char q[JUDGE_QUOTE_BYTES + 8];
    quote(s, n, q, sizeof q);
    return duel_error_set(err, DUEL_EFORMAT, "judge answered \"%s\", expected A or B", q);
}

int oracle_judge_parse_response(const char *body, size_t len, oracle_choice *out,
                                duel_error *err) {
    if (!body || !out) return duel_error_set(err, DUEL_EINVAL, "judge: NULL argument");
    json_t *root = NULL;
    int rc = duel_json_parse(body, len, "judge response", &root, err);
    if (rc) return DUEL_EFORMAT;
    rc = DUEL_EFORMAT;
    if (!json_is_object(root)) {
        duel_error_set(err, rc, "judge response: not a JSON object");
        goto done;
    }
    json_t *choices = json_object_get(root, "choices");
    if (!json_is_array(choices) || json_array_size(choices) == 0) {
        json_t *e = json_object_get(root, "error");
        json_t *msg = json_is_object(e) ? json_object_get(e, "message") : NULL;
        char q[JUDGE_QUOTE_BYTES + 8] = "";
        if (json_is_string(msg)) quote(json_string_value(msg), json_string_length(msg), q, sizeof q);
        duel_error_set(err, rc, "judge response: no \"choices\"%s%s%s", *q ? " (error: \"" : "",
                       q, *q ? "\")" : "");
        goto done;
    }
    json_t *message = json_object_get(json_array_get(choices, 0), "message");
    json_t *content = json_is_object(message) ? json_object_get(message, "content") : NULL;
    if (!json_is_string(content)) {
        duel_error_set(err, rc, "judge response: choices[0].message.content is not a string");
        goto done;
    }
    rc = extract_verdict(json_string_value(content), json_string_length(content), out, err);
done:
    json_decref(root);
    return rc;
}

/* ---- one HTTP exchange ------------------------------------------------------------------- */

/* The outcome of one attempt: retryable tells the retry loop whether to try again. */
typedef struct attempt_result {
    int retryable;
    int http_status;
} attempt_result;

static int remaining_ms(double deadline) {
    double left = (deadline - duel_time_seconds()) * 1000.0;
    return left <= 0 ? 0 : left > 1e9 ? 1000000000 : (int)ceil(left);
}

/* Waits for events on fd until deadline; 0 ready, DUEL_EIO on timeout or poll failure. */
static int wait_fd(int fd, short events, double deadline) {
    for (;;) {
        int ms = remaining_ms(deadline);
        if (ms == 0) return DUEL_EIO;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, ms);
        if (r > 0) return 0;
        if (r == 0) return DUEL_EIO;
        if (errno != EINTR) return DUEL_EIO;
    }
}

static int connect_to(const judge_url *u, int timeout_ms, int *out_fd, duel_error *err) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *list = NULL;
    int g = getaddrinfo(u->host, u->port, &hints, &list);
    if (g != 0)
        return duel_error_set(err, DUEL_EIO, "cannot resolve %s: %s", u->host, gai_strerror(g));
    int last_errno = 0, timed_out = 0;
    for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        double deadline = duel_time_seconds() + timeout_ms / 1000.0;
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            if (wait_fd(fd, POLLOUT, deadline) != 0) {
                timed_out = 1;
                close(fd);
                continue;
            }
            int so = 0;
            socklen_t len = sizeof so;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &len) != 0) so = errno;
            r = so == 0 ? 0 : -1;
            errno = so;
        }
        if (r == 0) {
            freeaddrinfo(list);
            *out_fd = fd;
            return 0;
        }
        last_errno = errno;
        close(fd);
    }
    freeaddrinfo(list);
    if (timed_out && !last_errno)
        return duel_error_set(err, DUEL_EIO, "connect to %s timed out after %d ms",
                              u->host_header, timeout_ms);
    return duel_error_set(err, DUEL_EIO, "cannot connect to %s: %s", u->host_header,
                          strerror(last_errno ? last_errno : ECONNREFUSED));
}

static int send_all(int fd, const char *data, size_t n, double deadline, duel_error *err) {
    size_t sent = 0;
    while (sent < n) {
        ssize_t w = send(fd, data + sent, n - sent, MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline) != 0)
                return duel_error_set(err, DUEL_EIO, "timed out sending the request");
            continue;
        }
        return duel_error_set(err, DUEL_EIO, "sending the request failed: %s",
                              w < 0 ? strerror(errno) : "connection closed");
    }
    return 0;
}

/* A response being assembled. */
typedef struct http_response {
    char *data;
    size_t len, cap;
    size_t header_len; /* bytes up to and including the blank line; 0 until seen */
    int status;
    long long content_length; /* -1 when absent */
    int chunked;
    char *body; /* decoded body (malloc'd) once complete */
    size_t body_len;
} http_response;

/* Case-insensitive header name match at line start. */
static int header_is(const char *line, size_t n, const char *name) {
    size_t k = strlen(name);
    return n > k && strncasecmp(line, name, k) == 0 && line[k] == ':';
}

static int parse_headers(http_response *r, duel_error *err) {
    const char *end = NULL;
    for (size_t i = 0; i + 3 < r->len; i++)
        if (memcmp(r->data + i, "\r\n\r\n", 4) == 0) {
            end = r->data + i;
            break;
        }
    if (!end) {
        if (r->len > JUDGE_MAX_HEADER_BYTES)
            return duel_error_set(err, DUEL_ELIMIT, "response headers longer than %u bytes",
                                  JUDGE_MAX_HEADER_BYTES);
        return 1; /* need more */
    }
    r->header_len = (size_t)(end - r->data) + 4;
    const char *line = r->data, *stop = end + 2; /* each line ends with \r\n */
    const char *eol = memchr(line, '\r', (size_t)(stop - line));
    int minor = -1, status = -1;
    char tail = 0;
    if (!eol || eol - line < 12 || sscanf(line, "HTTP/1.%1d %3d%c", &minor, &status, &tail) < 2 ||
        status < 100 || status > 599 || memcmp(line, "HTTP/1.", 7) != 0)
        return duel_error_set(err, DUEL_EFORMAT, "not an HTTP/1.x status line");
    r->status = status;
    r->content_length = -1;
    for (line = eol + 2; line < stop; line = eol + 2) {
        eol = memchr(line, '\r', (size_t)(stop - line));
        if (!eol || eol[1] != '\n')
            return duel_error_set(err, DUEL_EFORMAT, "malformed HTTP header line");
        size_t n = (size_t)(eol - line);
        if (header_is(line, n, "content-length")) {
            const char *v = line + 15;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            long long x = 0;
            const char *d = v;
            for (; d < eol && *d >= '0' && *d <= '9'; d++) {
                x = x * 10 + (*d - '0');
                if (x > (long long)ORACLE_JUDGE_MAX_RESPONSE_BYTES)
                    return duel_error_set(err, DUEL_ELIMIT, "response body over %u bytes",
                                          ORACLE_JUDGE_MAX_RESPONSE_BYTES);
            }
            while (d < eol && (*d == ' ' || *d == '\t')) d++;
            if (d == v || d != eol || (r->content_length >= 0 && r->content_length != x))
                return duel_error_set(err, DUEL_EFORMAT, "bad Content-Length header");
            r->content_length = x;
        } else if (header_is(line, n, "transfer-encoding")) {
            const char *v = line + 18;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            if ((size_t)(eol - v) == 7 && strncasecmp(v, "chunked", 7) == 0)
                r->chunked = 1;
            else
                return duel_error_set(err, DUEL_EUNSUPPORTED, "unsupported Transfer-Encoding");
        }
    }
    if (r->chunked && r->content_length >= 0)
        return duel_error_set(err, DUEL_EFORMAT, "both Content-Length and chunked encoding");
    return 0;
}

/* Decodes a chunked body from p[0..n). Returns 0 when complete (body set), 1 when more bytes
 * are needed, or an error. Chunk extensions are ignored; trailers are skipped. */
static int decode_chunked(http_response *r, const char *p, size_t n, duel_error *err) {
    char *body = malloc(n + 1);
    if (!body) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    size_t i = 0, w = 0;
    for (;;) {
        const char *eol = NULL;
        for (size_t k = i; k + 1 < n; k++)
            if (p[k] == '\r' && p[k + 1] == '\n') {
                eol = p + k;
                break;
            }
        if (!eol) {
            free(body);
            return 1;
        }
        size_t size = 0, digits = 0;
        const char *d = p + i;
        for (; d < eol; d++, digits++) {
            int v = *d >= '0' && *d <= '9' ? *d - '0' : *d >= 'a' && *d <= 'f' ? *d - 'a' + 10
                    : *d >= 'A' && *d <= 'F' ? *d - 'A' + 10 : -1;
            if (v < 0) break;
            size = size * 16 + (size_t)v;
            if (size > ORACLE_JUDGE_MAX_RESPONSE_BYTES) {
                free(body);
                return duel_error_set(err, DUEL_ELIMIT, "chunk over %u bytes",
                                      ORACLE_JUDGE_MAX_RESPONSE_BYTES);
            }
        }
        if (digits == 0 || (d < eol && *d != ';')) {
            free(body);
            return duel_error_set(err, DUEL_EFORMAT, "bad chunk size line");
        }
        i = (size_t)(eol - p) + 2;
        if (size == 0) {
            /* Trailers end with an empty line. */
            for (;;) {
                const char *t = NULL;
                for (size_t k = i; k + 1 < n; k++)
                    if (p[k] == '\r' && p[k + 1] == '\n') {
                        t = p + k;
                        break;
                    }
                if (!t) {
                    free(body);
                    return 1;
                }
                int empty = t == p + i;
                i = (size_t)(t - p) + 2;
                if (empty) break;
            }
            body[w] = '\0';
            r->body = body;
            r->body_len = w;
            return 0;
        }
        if (n - i < size + 2) {
            free(body);
            return 1;
        }
        if (p[i + size] != '\r' || p[i + size + 1] != '\n') {
            free(body);
            return duel_error_set(err, DUEL_EFORMAT, "chunk not followed by CRLF");
        }
        memcpy(body + w, p + i, size);
        w += size;
        i += size + 2;
    }
}

/* Tries to complete the response from what has arrived: 0 complete, 1 need more, <0 error.
 * at_eof: the peer closed; a body without length then ends here. */
static int try_complete(http_response *r, int at_eof, duel_error *err) {
    if (!r->header_len) {
        int rc = parse_headers(r, err);
        if (rc != 0) return rc;
    }
    const char *p = r->data + r->header_len;
    size_t n = r->len - r->header_len;
    if (r->chunked) {
        /* A complete chunked body ends with CRLF: skip the decode until it could be complete. */
        if (n < 5 || memcmp(p + n - 2, "\r\n", 2) != 0) return 1;
        return decode_chunked(r, p, n, err);
    }
    size_t want = r->content_length >= 0 ? (size_t)r->content_length : n;
    if (r->content_length >= 0 && n < want) return 1;
    if (r->content_length < 0 && !at_eof) return 1;
    r->body = malloc(want + 1);
    if (!r->body) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    memcpy(r->body, p, want);
    r->body[want] = '\0';
    r->body_len = want;
    return 0;
}

static int read_response(int fd, double deadline, int timeout_ms, http_response *r,
                         duel_error *err) {
    for (;;) {
        if (r->cap - r->len < 4096) {
            size_t cap = r->cap ? r->cap * 2 : 16384;
            if (cap > ORACLE_JUDGE_MAX_RESPONSE_BYTES + 1) cap = ORACLE_JUDGE_MAX_RESPONSE_BYTES + 1;
            if (cap <= r->len)
                return duel_error_set(err, DUEL_ELIMIT, "response over %u bytes",
                                      ORACLE_JUDGE_MAX_RESPONSE_BYTES);
            char *d = realloc(r->data, cap);
            if (!d) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
            r->data = d;
            r->cap = cap;
        }
        if (wait_fd(fd, POLLIN, deadline) != 0)
            return duel_error_set(err, DUEL_EIO, "timed out after %d ms waiting for the answer "
                                  "(%zu bytes received)", timeout_ms, r->len);
        ssize_t got = recv(fd, r->data + r->len, r->cap - r->len, 0);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
            return duel_error_set(err, DUEL_EIO, "reading the answer failed: %s", strerror(errno));
        }
        if (got > 0) r->len += (size_t)got;
        int rc = try_complete(r, got == 0, err);
        if (rc <= 0) return rc;
        if (got == 0)
            return duel_error_set(err, DUEL_EIO, "connection closed early (%zu bytes received%s)",
                                  r->len, r->header_len ? ", body incomplete" : "");
    }
}

static int attempt(const oracle_judge_config *c, const judge_url *u, const char *body,
                   oracle_choice *out, attempt_result *res, duel_error *err) {
    res->retryable = 1;
    res->http_status = 0;
    int fd = -1;
    int rc = connect_to(u, c->connect_timeout_ms, &fd, err);
    if (rc) return rc;
    double deadline = duel_time_seconds() + c->read_timeout_ms / 1000.0;
    size_t body_len = strlen(body);
    char auth[300] = "";
    if (c->api_key[0]) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", c->api_key);
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: duel/" DUEL_VERSION_STRING
                      "\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n%s\r\n",
                      u->path, u->host_header, body_len, auth);
    http_response r;
    memset(&r, 0, sizeof r);
    if (hn < 0 || (size_t)hn >= sizeof head) {
        rc = duel_error_set(err, DUEL_EINVAL, "request line too long");
        res->retryable = 0;
        goto done;
    }
    if ((rc = send_all(fd, head, (size_t)hn, deadline, err)) ||
        (rc = send_all(fd, body, body_len, deadline, err)))
        goto done;
    if ((rc = read_response(fd, deadline, c->read_timeout_ms, &r, err))) goto done;
    res->http_status = r.status;
    if (r.status != 200) {
        char q[JUDGE_QUOTE_BYTES + 8];
        quote(r.body, r.body_len, q, sizeof q);
        rc = duel_error_set(err, DUEL_EIO, "HTTP %d (%s)", r.status, q);
        res->retryable = r.status == 408 || r.status == 429 || r.status >= 500;
        goto done;
    }
    rc = oracle_judge_parse_response(r.body, r.body_len, out, err);
done:
    free(r.data);
    free(r.body);
    close(fd);
    return rc;
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* One question with retries. attempts is incremented per HTTP request. */
static int ask(const oracle_judge_config *c, const judge_url *u, const char *prompt,
               const char *a, const char *b, oracle_choice *out, oracle_judge_result *result,
               duel_error *err) {
    char *body = NULL;
    int rc = oracle_judge_build_request(c, prompt, a, b, &body, err);
    if (rc) return rc;
    int wait = c->backoff_ms < c->backoff_max_ms ? c->backoff_ms : c->backoff_max_ms;
    duel_error last;
    memset(&last, 0, sizeof last);
    int n = 0;
    for (;;) {
        attempt_result res;
        n++;
        result->attempts++;
        rc = attempt(c, u, body, out, &res, &last);
        result->http_status = res.http_status;
        if (rc == 0) break;
        if (!res.retryable) {
            rc = duel_error_set(err, rc, "judge %s: attempt %d failed (not retried): %s", c->url,
                                n, last.message);
            break;
        }
        if (n == c->max_attempts) {
            rc = duel_error_set(err, rc, "judge %s: no verdict after %d attempt%s: %s", c->url, n,
                                n == 1 ? "" : "s", last.message);
            break;
        }
        sleep_ms(wait);
        wait = wait > c->backoff_max_ms / 2 ? c->backoff_max_ms : wait * 2;
    }
    free(body);
    return rc;
}

int oracle_judge_compare(const oracle_judge_config *c, const char *prompt, const char *a,
                         const char *b, oracle_judge_result *out, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "judge: result is NULL");
    int rc = oracle_judge_config_validate(c, err);
    if (rc) return rc;
    judge_url u;
    parse_url(c->url, &u, NULL);
    oracle_judge_result result = {.choice = ORACLE_TIE, .attempts = 0, .http_status = 0};
    oracle_choice first;
    rc = ask(c, &u, prompt, a, b, &first, &result, err);
    if (rc == 0 && c->both_orders) {
        oracle_choice swapped;
        rc = ask(c, &u, prompt, b, a, &swapped, &result, err);
        if (rc == 0) {
            /* In the swapped question "A" is answer b. */
            oracle_choice second = swapped == ORACLE_PREFER_A ? ORACLE_PREFER_B : ORACLE_PREFER_A;
            result.choice = first == second ? first : ORACLE_TIE;
        }
    } else if (rc == 0) {
        result.choice = first;
    }
    /* On failure only the counters are reported; the choice stays as the caller had it. */
    if (rc) {
        out->attempts = result.attempts;
        out->http_status = result.http_status;
        return rc;
    }
    *out = result;
    return 0;
}
