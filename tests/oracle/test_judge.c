/* test_judge.c: the HTTP judge oracle (oracle/judge.c) against a stand-in server: a thread in
 * this process listening on 127.0.0.1 (port 0) that, connection by connection, follows a script:
 * answer well (plain or chunked), stay silent (timeout), return HTTP 500 or 404, return garbage
 * JSON, close early, or answer something that is not A or B. Each failure must give a clear
 * error and no vote; retries and backoff must happen where the header says. Also the request the
 * judge sends, the strict response parser, and config validation. */
#include "test_helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include <jansson.h>

#include "oracle.h"
#include "timer.h"

typedef enum {
    SRV_ANSWER,        /* 200 with a chat completion whose content is srv->answer */
    SRV_ANSWER_CHUNKED,
    SRV_BY_CONTENT,    /* "A" when the text in position A is "GOOD", else "B" */
    SRV_SILENT,        /* read the request, never answer */
    SRV_500,
    SRV_404,
    SRV_GARBAGE_JSON,
    SRV_CLOSE_EARLY,   /* read the request, close without a byte */
    SRV_SHORT_BODY,    /* Content-Length larger than what is sent, then close */
    SRV_NOT_HTTP,
} srv_mode;

typedef struct stand_in {
    int listen_fd;
    int stop_pipe[2];
    int port;
    pthread_t thread;
    pthread_mutex_t lock;
    srv_mode script[16]; /* mode of connection k; the last one repeats */
    int script_len;
    const char *answer;
    int connections;
    char last_request[1 << 16];
} stand_in;

static void send_str(int fd, const char *s) {
    size_t n = strlen(s), off = 0;
    while (off < n) {
        ssize_t w = send(fd, s + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) return;
        off += (size_t)w;
    }
}

/* Reads one request (headers plus Content-Length bytes) into buf; returns its length or -1. */
static int read_request(int fd, char *buf, size_t cap) {
    size_t len = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0) return -1;
        ssize_t got = recv(fd, buf + len, cap - 1 - len, 0);
        if (got <= 0) return -1;
        len += (size_t)got;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end) continue;
        char *cl = strcasestr(buf, "Content-Length:");
        size_t want = cl ? (size_t)atol(cl + 15) : 0;
        if (len >= (size_t)(end + 4 - buf) + want) return (int)len;
    }
}

static void respond_json(int fd, int status, const char *reason, const char *body, int chunked) {
    char head[512];
    if (chunked) {
        snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n", status, reason);
        send_str(fd, head);
        /* Two data chunks (one with an extension) and an empty trailer section. */
        size_t n = strlen(body), half = n / 2;
        char size_line[64];
        snprintf(size_line, sizeof size_line, "%zx;ext=1\r\n", half);
        send_str(fd, size_line);
        char *part = strndup(body, half);
        send_str(fd, part);
        free(part);
        snprintf(size_line, sizeof size_line, "\r\n%zX\r\n", n - half);
        send_str(fd, size_line);
        send_str(fd, body + half);
        send_str(fd, "\r\n0\r\n\r\n");
        return;
    }
    snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n", status, reason, strlen(body));
    send_str(fd, head);
    send_str(fd, body);
}

static char *completion(const char *content) {
    json_t *j = json_pack("{s:s, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:{s:i}}", "id", "cmpl-1",
                          "object", "chat.completion", "choices", "index", 0, "message", "role",
                          "assistant", "content", content, "finish_reason", "stop", "usage",
                          "total_tokens", 7);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

static void *serve(void *arg) {
    stand_in *s = arg;
    char *req = malloc(1 << 16);
    for (;;) {
        struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
                              {.fd = s->stop_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) continue;
        if (p[1].revents) break;
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        pthread_mutex_lock(&s->lock);
        int k = s->connections++;
        srv_mode mode = s->script[k < s->script_len ? k : s->script_len - 1];
        pthread_mutex_unlock(&s->lock);
        int n = read_request(fd, req, 1 << 16);
        if (n > 0) {
            pthread_mutex_lock(&s->lock);
            memcpy(s->last_request, req, (size_t)n + 1);
            pthread_mutex_unlock(&s->lock);
        }
        char *body = NULL;
        switch (mode) {
        case SRV_ANSWER:
        case SRV_ANSWER_CHUNKED:
            body = completion(s->answer);
            respond_json(fd, 200, "OK", body, mode == SRV_ANSWER_CHUNKED);
            break;
        case SRV_BY_CONTENT:
            body = completion(n > 0 && strstr(req, "Answer A:\\nGOOD") ? "A" : "B");
            respond_json(fd, 200, "OK", body, 0);
            break;
        case SRV_SILENT: {
            /* Until the client gives up (closes) or the test stops the server. */
            struct pollfd q[2] = {{.fd = fd, .events = POLLIN},
                                  {.fd = s->stop_pipe[0], .events = POLLIN}};
            poll(q, 2, 10000);
            break;
        }
        case SRV_500:
            respond_json(fd, 500, "Internal Server Error", "{\"error\":\"overloaded\"}", 0);
            break;
        case SRV_404:
            respond_json(fd, 404, "Not Found", "no such route", 0);
            break;
        case SRV_GARBAGE_JSON:
            respond_json(fd, 200, "OK", "{\"choices\": [{\"message\": {\"content\": \"A\"", 0);
            break;
        case SRV_CLOSE_EARLY:
            break;
        case SRV_SHORT_BODY:
            send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"choices\":");
            break;
        case SRV_NOT_HTTP:
            send_str(fd, "SSH-2.0-OpenSSH_9.2\r\n\r\n");
            break;
        }
        free(body);
        close(fd);
    }
    free(req);
    return NULL;
}

static stand_in *server_start(const srv_mode *script, int len, const char *answer) {
    stand_in *s = calloc(1, sizeof *s);
    memcpy(s->script, script, sizeof(srv_mode) * (size_t)len);
    s->script_len = len;
    s->answer = answer;
    pthread_mutex_init(&s->lock, NULL);
    s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->listen_fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->listen_fd, 16), 0);
    socklen_t alen = sizeof a;
    assert_int_equal(getsockname(s->listen_fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pipe(s->stop_pipe), 0);
    assert_int_equal(pthread_create(&s->thread, NULL, serve, s), 0);
    return s;
}

static int server_connections(stand_in *s) {
    pthread_mutex_lock(&s->lock);
    int n = s->connections;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void server_stop(stand_in *s) {
    assert_int_equal(write(s->stop_pipe[1], "x", 1), 1);
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* A config for the stand-in: short timeouts and backoff so that failures are quick. */
static void config_for(const stand_in *s, oracle_judge_config *c) {
    oracle_judge_config_default(c);
    snprintf(c->url, sizeof c->url, "http://127.0.0.1:%d/v1/chat/completions", s->port);
    snprintf(c->model, sizeof c->model, "stand-in-judge");
    c->connect_timeout_ms = 1000;
    c->read_timeout_ms = 300;
    c->max_attempts = 3;
    c->backoff_ms = 5;
    c->backoff_max_ms = 20;
}

static const oracle_choice NO_VOTE = (oracle_choice)99;

static void test_answers_well(void **state) {
    (void)state;
    srv_mode script[] = {SRV_ANSWER};
    stand_in *s = server_start(script, 1, "B");
    oracle_judge_config c;
    config_for(s, &c);
    snprintf(c.api_key, sizeof c.api_key, "sk-test-123");
    oracle_judge_result r;
    duel_error err;
    int rc = oracle_judge_compare(&c, "What is a river?", "A large stream of water.",
                                  "A kind of tree \"quoted\".", &r, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(r.choice, ORACLE_PREFER_B);
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.http_status, 200);
    /* The request: method, path, headers, and a JSON body with both answers in order. */
    const char *req = s->last_request;
    assert_true(strncmp(req, "POST /v1/chat/completions HTTP/1.1\r\n", 36) == 0);
    assert_non_null(strstr(req, "Authorization: Bearer sk-test-123\r\n"));
    assert_non_null(strstr(req, "Content-Type: application/json\r\n"));
    char host[64];
    snprintf(host, sizeof host, "Host: 127.0.0.1:%d\r\n", s->port);
    assert_non_null(strstr(req, host));
    json_error_t jerr;
    json_t *body = json_loads(strstr(req, "\r\n\r\n") + 4, 0, &jerr);
    assert_non_null(body);
    assert_string_equal(json_string_value(json_object_get(body, "model")), "stand-in-judge");
    assert_int_equal(json_integer_value(json_object_get(body, "max_tokens")), 8);
    json_t *msgs = json_object_get(body, "messages");
    assert_int_equal(json_array_size(msgs), 2);
    const char *user = json_string_value(json_object_get(json_array_get(msgs, 1), "content"));
    const char *q = strstr(user, "What is a river?"), *a = strstr(user, "Answer A:\nA large stream");
    const char *b = strstr(user, "Answer B:\nA kind of tree \"quoted\".");
    assert_true(q && a && b && q < a && a < b);
    json_decref(body);
    server_stop(s);
}

static void test_chunked_and_decorated_answers(void **state) {
    (void)state;
    const char *answers[] = {"A", " **Answer: a**\n", "(B)", "Answer B", "\"b\"."};
    const oracle_choice want[] = {ORACLE_PREFER_A, ORACLE_PREFER_A, ORACLE_PREFER_B,
                                  ORACLE_PREFER_B, ORACLE_PREFER_B};
    for (int i = 0; i < 5; i++) {
        srv_mode script[] = {SRV_ANSWER_CHUNKED};
        stand_in *s = server_start(script, 1, answers[i]);
        oracle_judge_config c;
        config_for(s, &c);
        oracle_judge_result r;
        duel_error err;
        int rc = oracle_judge_compare(&c, "q", "x", "y", &r, &err);
        if (rc) fprintf(stderr, "%s\n", err.message);
        assert_int_equal(rc, 0);
        assert_int_equal(r.choice, want[i]);
        assert_null(strstr(s->last_request, "Authorization"));
        server_stop(s);
    }
}

/* One failure mode for every connection: the judge tries max_attempts times, then fails with
 * the named problem and leaves the choice alone. */
static void check_failure(srv_mode mode, int code, const char *needle, int expect_attempts) {
    srv_mode script[] = {mode};
    stand_in *s = server_start(script, 1, "A");
    oracle_judge_config c;
    config_for(s, &c);
    oracle_judge_result r = {.choice = NO_VOTE};
    duel_error err;
    double t0 = duel_time_seconds();
    int rc = oracle_judge_compare(&c, "q", "x", "y", &r, &err);
    double elapsed = duel_time_seconds() - t0;
    if (rc != code || !strstr(err.message, needle))
        fprintf(stderr, "mode %d: rc %d: %s\n", (int)mode, rc, err.message);
    assert_int_equal(rc, code);
    assert_int_equal(r.choice, NO_VOTE);
    assert_non_null(strstr(err.message, needle));
    assert_non_null(strstr(err.message, c.url)); /* names the endpoint */
    assert_int_equal(r.attempts, expect_attempts);
    assert_int_equal(server_connections(s), expect_attempts);
    /* 3 attempts of at most 300 ms plus 5 + 10 ms of backoff. */
    assert_true(elapsed < 2.5);
    server_stop(s);
}

static void test_timeout(void **state) {
    (void)state;
    check_failure(SRV_SILENT, DUEL_EIO, "timed out after 300 ms", 3);
}

static void test_http_500(void **state) {
    (void)state;
    check_failure(SRV_500, DUEL_EIO, "HTTP 500 ({?error?:?overloaded?})", 3);
}

static void test_garbage_json(void **state) {
    (void)state;
    check_failure(SRV_GARBAGE_JSON, DUEL_EFORMAT, "judge response", 3);
}

static void test_closes_early(void **state) {
    (void)state;
    check_failure(SRV_CLOSE_EARLY, DUEL_EIO, "connection closed early (0 bytes received)", 3);
    check_failure(SRV_SHORT_BODY, DUEL_EIO, "body incomplete", 3);
}

static void test_not_http(void **state) {
    (void)state;
    check_failure(SRV_NOT_HTTP, DUEL_EFORMAT, "not an HTTP/1.x status line", 3);
}

static void test_not_a_verdict(void **state) {
    (void)state;
    srv_mode script[] = {SRV_ANSWER};
    stand_in *s = server_start(script, 1, "Both answers are fine.\nReally.");
    oracle_judge_config c;
    config_for(s, &c);
    c.max_attempts = 2;
    oracle_judge_result r = {.choice = NO_VOTE};
    duel_error err;
    assert_int_equal(oracle_judge_compare(&c, "q", "x", "y", &r, &err), DUEL_EFORMAT);
    assert_int_equal(r.choice, NO_VOTE);
    assert_int_equal(r.attempts, 2);
    assert_non_null(strstr(err.message, "judge answered \"Both answers are fine.?Really.\""));
    assert_non_null(strstr(err.message, "after 2 attempts"));
    server_stop(s);
}

/* A 404 will not heal: one attempt only. */
static void test_client_error_not_retried(void **state) {
    (void)state;
    check_failure(SRV_404, DUEL_EIO, "HTTP 404 (no such route)", 1);
}

/* Transient failures followed by a good answer: the retries pay off. */
static void test_retry_then_success(void **state) {
    (void)state;
    srv_mode script[] = {SRV_500, SRV_CLOSE_EARLY, SRV_ANSWER};
    stand_in *s = server_start(script, 3, "A");
    oracle_judge_config c;
    config_for(s, &c);
    oracle_judge_result r;
    duel_error err;
    assert_int_equal(oracle_judge_compare(&c, "q", "x", "y", &r, &err), 0);
    assert_int_equal(r.choice, ORACLE_PREFER_A);
    assert_int_equal(r.attempts, 3);
    server_stop(s);
    /* The same script with only two attempts allowed fails. */
    s = server_start(script, 3, "A");
    config_for(s, &c);
    c.max_attempts = 2;
    r.choice = NO_VOTE;
    assert_int_equal(oracle_judge_compare(&c, "q", "x", "y", &r, &err), DUEL_EIO);
    assert_int_equal(r.choice, NO_VOTE);
    assert_non_null(strstr(err.message, "closed early"));
    server_stop(s);
}

static void test_connection_refused(void **state) {
    (void)state;
    /* A port that was just free and is not listening. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t alen = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &alen);
    close(fd);
    oracle_judge_config c;
    oracle_judge_config_default(&c);
    snprintf(c.url, sizeof c.url, "http://127.0.0.1:%d/v1/chat/completions", ntohs(a.sin_port));
    c.max_attempts = 2;
    c.backoff_ms = 1;
    oracle_judge_result r = {.choice = NO_VOTE};
    duel_error err;
    assert_int_equal(oracle_judge_compare(&c, "q", "x", "y", &r, &err), DUEL_EIO);
    assert_int_equal(r.choice, NO_VOTE);
    assert_int_equal(r.attempts, 2);
    assert_non_null(strstr(err.message, "cannot connect to 127.0.0.1:"));
}

/* both_orders: a judge that always says "A" (pure position bias) yields a tie; a judge that
 * recognises the better answer wherever it is placed yields it. */
static void test_both_orders(void **state) {
    (void)state;
    srv_mode biased[] = {SRV_ANSWER};
    stand_in *s = server_start(biased, 1, "A");
    oracle_judge_config c;
    config_for(s, &c);
    c.both_orders = true;
    oracle_judge_result r;
    assert_int_equal(oracle_judge_compare(&c, "q", "GOOD", "bad", &r, NULL), 0);
    assert_int_equal(r.choice, ORACLE_TIE);
    assert_int_equal(r.attempts, 2);
    server_stop(s);
    srv_mode fair[] = {SRV_BY_CONTENT};
    s = server_start(fair, 1, NULL);
    config_for(s, &c);
    c.both_orders = true;
    assert_int_equal(oracle_judge_compare(&c, "q", "bad", "GOOD", &r, NULL), 0);
    assert_int_equal(r.choice, ORACLE_PREFER_B);
    assert_int_equal(oracle_judge_compare(&c, "q", "GOOD", "bad", &r, NULL), 0);
    assert_int_equal(r.choice, ORACLE_PREFER_A);
    c.both_orders = false;
    assert_int_equal(oracle_judge_compare(&c, "q", "bad", "GOOD", &r, NULL), 0);
    assert_int_equal(r.choice, ORACLE_PREFER_B);
    assert_int_equal(r.attempts, 1);
    server_stop(s);
}

static void test_parse_response(void **state) {
    (void)state;
    struct { const char *body; int rc; oracle_choice want; const char *needle; } cases[] = {
        {"{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"A\"}}]}", 0,
         ORACLE_PREFER_A, NULL},
        {"{\"choices\":[{\"message\":{\"content\":\"b\\n\"}},{\"message\":{\"content\":\"A\"}}]}",
         0, ORACLE_PREFER_B, NULL},
        {"{\"choices\":[{\"message\":{\"content\":\"A\",\"content\":\"B\"}}]}", DUEL_EFORMAT, 0,
         "duplicate"},
        {"{\"choices\":[]}", DUEL_EFORMAT, 0, "no \"choices\""},
        {"{\"error\":{\"message\":\"model not loaded\"}}", DUEL_EFORMAT, 0, "model not loaded"},
        {"{\"choices\":[{\"message\":{\"content\":null}}]}", DUEL_EFORMAT, 0, "not a string"},
        {"{\"choices\":[{\"text\":\"A\"}]}", DUEL_EFORMAT, 0, "not a string"},
        {"[1,2]", DUEL_EFORMAT, 0, "not a JSON object"},
        {"", DUEL_EFORMAT, 0, "judge response"},
        {"{\"choices\":[{\"message\":{\"content\":\"AB\"}}]}", DUEL_EFORMAT, 0, "\"AB\""},
        {"{\"choices\":[{\"message\":{\"content\":\"\"}}]}", DUEL_EFORMAT, 0, "answered \"\""},
        {"{\"choices\":[{\"message\":{\"content\":\"Answer: C\"}}]}", DUEL_EFORMAT, 0, "Answer: C"},
        {"{\"choices\":[{\"message\":{\"content\":\"answer\"}}]}", DUEL_EFORMAT, 0, "answer"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        oracle_choice got = NO_VOTE;
        duel_error err;
        int rc = oracle_judge_parse_response(cases[i].body, strlen(cases[i].body), &got, &err);
        if (rc != cases[i].rc || (rc && !strstr(err.message, cases[i].needle)))
            fprintf(stderr, "case %zu: rc %d %s\n", i, rc, rc ? err.message : "");
        assert_int_equal(rc, cases[i].rc);
        if (rc == 0) assert_int_equal(got, cases[i].want);
        else {
            assert_int_equal(got, NO_VOTE);
            assert_non_null(strstr(err.message, cases[i].needle));
        }
    }
    /* A very long answer is quoted only in part. */
    char body[2048];
    char longtext[1200];
    memset(longtext, 'x', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    snprintf(body, sizeof body, "{\"choices\":[{\"message\":{\"content\":\"%s\"}}]}", longtext);
    oracle_choice got;
    duel_error err;
    assert_int_equal(oracle_judge_parse_response(body, strlen(body), &got, &err), DUEL_EFORMAT);
    assert_true(strlen(err.message) < 200);
    assert_non_null(strstr(err.message, "...\""));
}

static void test_config_and_input_validation(void **state) {
    (void)state;
    oracle_judge_config c;
    oracle_judge_config_default(&c);
    duel_error err;
    assert_int_equal(oracle_judge_config_validate(&c, &err), 0);
    struct { const char *url; int rc; const char *needle; } urls[] = {
        {"https://api.example.com/v1/chat/completions", DUEL_EUNSUPPORTED, "https"},
        {"ftp://x/y", DUEL_EINVAL, "http://"},
        {"http:///v1", DUEL_EINVAL, "host"},
        {"http://host:0/v1", DUEL_EINVAL, "port"},
        {"http://host:65536/v1", DUEL_EINVAL, "port"},
        {"http://host:80x/v1", DUEL_EINVAL, "port"},
        {"http://host:8000", DUEL_EINVAL, "missing path"},
        {"http://ho st/v1", DUEL_EINVAL, "host"},
        {"http://host/v1 HTTP/1.1\r\nX: y", DUEL_EINVAL, "control"},
        {"http://[::1/v1", DUEL_EINVAL, "unclosed"},
    };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        oracle_judge_config b = c;
        snprintf(b.url, sizeof b.url, "%s", urls[i].url);
        int rc = oracle_judge_config_validate(&b, &err);
        if (rc != urls[i].rc) fprintf(stderr, "url %s: %d %s\n", urls[i].url, rc, err.message);
        assert_int_equal(rc, urls[i].rc);
        assert_non_null(strstr(err.message, urls[i].needle));
    }
    oracle_judge_config b = c;
    snprintf(b.url, sizeof b.url, "http://[::1]:9000/v1/chat/completions");
    assert_int_equal(oracle_judge_config_validate(&b, &err), 0);
    b = c;
    b.model[0] = '\0';
    assert_int_equal(oracle_judge_config_validate(&b, &err), DUEL_EINVAL);
    b = c;
    b.read_timeout_ms = 0;
    assert_int_equal(oracle_judge_config_validate(&b, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "read_timeout_ms"));
    b = c;
    b.max_attempts = 0;
    assert_int_equal(oracle_judge_config_validate(&b, &err), DUEL_EINVAL);
    b = c;
    b.temperature = NAN;
    assert_int_equal(oracle_judge_config_validate(&b, &err), DUEL_EINVAL);
    b = c;
    snprintf(b.api_key, sizeof b.api_key, "key\r\nX-Evil: 1");
    assert_int_equal(oracle_judge_config_validate(&b, &err), DUEL_EINVAL);

    /* Bad text never reaches the network (the URL points nowhere reachable). */
    oracle_judge_result r = {.choice = NO_VOTE};
    assert_int_equal(oracle_judge_compare(&c, "q", "bad \xff utf8", "y", &r, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "answer a is not valid UTF-8"));
    assert_int_equal(r.attempts, 0);
    char *big = malloc(ORACLE_JUDGE_MAX_TEXT_BYTES + 2);
    memset(big, 'a', ORACLE_JUDGE_MAX_TEXT_BYTES + 1);
    big[ORACLE_JUDGE_MAX_TEXT_BYTES + 1] = '\0';
    assert_int_equal(oracle_judge_compare(&c, big, "x", "y", &r, &err), DUEL_ELIMIT);
    assert_int_equal(r.choice, NO_VOTE);
    free(big);
    char *body = NULL;
    assert_int_equal(oracle_judge_build_request(&c, "q", NULL, "y", &body, &err), DUEL_EINVAL);
    assert_null(body);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers_well),
        cmocka_unit_test(test_chunked_and_decorated_answers),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_http_500),
        cmocka_unit_test(test_garbage_json),
        cmocka_unit_test(test_closes_early),
        cmocka_unit_test(test_not_http),
        cmocka_unit_test(test_not_a_verdict),
        cmocka_unit_test(test_client_error_not_retried),
        cmocka_unit_test(test_retry_then_success),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_both_orders),
        cmocka_unit_test(test_parse_response),
        cmocka_unit_test(test_config_and_input_validation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
