/* bench_util.h: what the gateway's benchmark programs (bench_gateway.c, bench_console.c) share:
 * a `duel serve` child on a port of the tests' Redis, and percentiles of their samples. Header
 * only, like gateway_test_util.h, which it builds on. */
#ifndef DUEL_TEST_BENCH_UTIL_H
#define DUEL_TEST_BENCH_UTIL_H

#include "gateway_test_util.h"

#include <fcntl.h>

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The p-quantile (0..1) of v[0..n), nearest rank; sorts v. */
static inline double bench_pct(double *v, int n, double p) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return v[(int)(p * (n - 1) + 0.5)];
}

/* Starts `bin serve --port port --redis r --web-root src/gateway/web --config config` plus
 * `extra` (NULL-terminated: the backend, the data folder or spill log, ...), stdout to
 * /dev/null; returns once the port accepts (fails the test after 30 s). */
static inline pid_t bench_serve_start(const char *bin, const char *src, int port, const tu_redis *r,
                                      const char *config, const char *const *extra) {
    char port_s[16], redis_s[64], web[1100];
    snprintf(port_s, sizeof port_s, "%d", port);
    snprintf(redis_s, sizeof redis_s, "127.0.0.1:%d", r->port);
    snprintf(web, sizeof web, "%s/gateway/web", src);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        const char *argv[40] = {bin, "serve", "--port", port_s, "--redis", redis_s, "--web-root", web, "--config", config};
        int n = 10;
        for (; extra && *extra && n < 39; extra++) argv[n++] = *extra;
        argv[n] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 3000; i++) {
        int fd = tu_tcp_connect(port);
        if (fd >= 0) {
            close(fd);
            return pid;
        }
        tu_sleep_ms(10);
    }
    fail_msg("duel serve did not start");
    return -1;
}

static inline void bench_serve_stop(pid_t pid) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

#endif
