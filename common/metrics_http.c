/* metrics_http.c: the one-document HTTP server (see metrics_http.h). Invariant: the thread owns
 * the listening socket and every accepted one; metrics_http_stop wakes it through a pipe and
 * joins it before closing anything. */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct metrics_http {
    int listen_fd, wake[2], port;
    metrics_http_render render;
    void *ctx;
    pthread_t thread;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void respond(int fd, int status, const char *reason, const char *type, const char *body,
                    size_t len) {
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                     status, reason, type, len);
    send_all(fd, head, (size_t)n);
    send_all(fd, body, len);
}

/* Reads the request head (until a blank line, the size limit or the deadline) and answers. */
static void serve(metrics_http *m, int fd) {
    char req[METRICS_HTTP_MAX_REQUEST + 1];
    size_t n = 0;
    double deadline = now_ms() + METRICS_HTTP_TIMEOUT_MS;
    while (n < METRICS_HTTP_MAX_REQUEST) {
        int left = (int)(deadline - now_ms());
        struct pollfd p = {fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0) return;
        ssize_t r = recv(fd, req + n, METRICS_HTTP_MAX_REQUEST - n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return;
        n += (size_t)r;
        req[n] = '\0';
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
    }
    req[n] = '\0';
    if (strncmp(req, "GET ", 4) != 0) {
        respond(fd, 405, "Method Not Allowed", "text/plain", "GET only\n", 9);
        return;
    }
    const char *path = req + 4;
    size_t plen = strcspn(path, " ?\r\n");
    if (plen != 8 || strncmp(path, "/metrics", 8) != 0) {
        respond(fd, 404, "Not Found", "text/plain", "not found\n", 10);
        return;
    }
    size_t len = 0;
    char *body = m->render(m->ctx, &len);
    if (!body) {
        respond(fd, 500, "Internal Server Error", "text/plain", "no figures\n", 11);
        return;
    }
    respond(fd, 200, "OK", "text/plain; version=0.0.4", body, len);
    free(body);
}

static void *run(void *arg) {
    metrics_http *m = arg;
    for (;;) {
        struct pollfd p[2] = {{m->listen_fd, POLLIN, 0}, {m->wake[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents) break;
        if (!(p[0].revents & POLLIN)) continue;
        int fd = accept(m->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        serve(m, fd);
        close(fd);
    }
    return NULL;
}

int metrics_http_start(const char *host, int port, metrics_http_render render, void *ctx,
                       metrics_http **out, duel_error *err) {
    *out = NULL;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int gai = getaddrinfo(host, service, &hints, &ai);
    if (gai)
        return duel_error_set(err, DUEL_EIO, "metrics %s:%d: %s", host, port, gai_strerror(gai));
    metrics_http *m = calloc(1, sizeof *m);
    if (!m) {
        freeaddrinfo(ai);
        return duel_error_set(err, DUEL_ENOMEM, "metrics: out of memory");
    }
    m->render = render;
    m->ctx = ctx;
    m->wake[0] = m->wake[1] = -1;
    m->listen_fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (m->listen_fd >= 0) setsockopt(m->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (m->listen_fd < 0 || bind(m->listen_fd, ai->ai_addr, ai->ai_addrlen) ||
        listen(m->listen_fd, 16) || pipe2(m->wake, O_CLOEXEC)) {
        int rc = duel_error_set(err, DUEL_EIO, "metrics %s:%d: cannot listen: %s", host, port,
                                strerror(errno));
        freeaddrinfo(ai);
        if (m->listen_fd >= 0) close(m->listen_fd);
        free(m);
        return rc;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    getsockname(m->listen_fd, (struct sockaddr *)&sa, &sl);
    m->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                             : ((struct sockaddr_in *)&sa)->sin_port);
    if (pthread_create(&m->thread, NULL, run, m)) {
        close(m->listen_fd);
        close(m->wake[0]);
        close(m->wake[1]);
        free(m);
        return duel_error_set(err, DUEL_ENOMEM, "metrics: cannot start its thread");
    }
    *out = m;
    return DUEL_OK;
}

int metrics_http_port(const metrics_http *m) { return m->port; }

void metrics_http_stop(metrics_http *m) {
    if (!m) return;
    char b = 0;
    ssize_t w = write(m->wake[1], &b, 1);
    (void)w;
    pthread_join(m->thread, NULL);
    close(m->listen_fd);
    close(m->wake[0]);
    close(m->wake[1]);
    free(m);
}
