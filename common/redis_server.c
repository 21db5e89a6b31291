/* redis_server.c: a private redis-server child (see redis_server.h). */
#include "redis_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "durable_file.h"

#define REDIS_SERVER_READY_MS 5000 /* longest wait for PING after a start */
#define REDIS_SERVER_STOP_MS 5000  /* longest wait after SIGTERM before SIGKILL */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A port the kernel just handed out for loopback (another process may take it first: the
 * caller retries). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Whether something answers +PONG on the server's port now (not -LOADING: still reading its
 * AOF). */
static int ping(const redis_server *s) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)s->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char reply[64] = "";
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && write(fd, "PING\r\n", 6) == 6 &&
             read(fd, reply, sizeof reply - 1) >= 5 && strncmp(reply, "+PONG", 5) == 0; /* not -LOADING */
    close(fd);
    return ok;
}

/* Forks redis-server on s->port and s->dir; 0 once it answers PING, -1 when it exited (the
 * port taken, redis-server missing) or did not answer in time (then it is killed). */
static int spawn(redis_server *s) {
    char port[16], log[600];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(log, sizeof log, "%s/redis.log", s->dir);
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        /* A private server dies with its parent: a test that fails an assertion (and never
         * reaches redis_server_stop) or a killed benchmark leaves no redis-server behind. The
         * signal follows the forking THREAD's exit: start servers from a thread that outlives
         * them (every caller does so from main). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(126);
        /* Not the parent's stdout: a pipe reader must not wait for the server to exit. */
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        const char *argv[24];
        int n = 0;
        argv[n++] = "redis-server";
        argv[n++] = "--port", argv[n++] = port;
        argv[n++] = "--bind", argv[n++] = "127.0.0.1";
        argv[n++] = "--dir", argv[n++] = s->dir;
        argv[n++] = "--save", argv[n++] = "";
        argv[n++] = "--daemonize", argv[n++] = "no";
        argv[n++] = "--logfile", argv[n++] = log;
        argv[n++] = "--appendonly", argv[n++] = s->persistence == REDIS_SERVER_EPHEMERAL ? "no" : "yes";
        if (s->persistence == REDIS_SERVER_AOF_ALWAYS) argv[n++] = "--appendfsync", argv[n++] = "always";
        argv[n] = NULL;
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    for (int waited = 0; waited < REDIS_SERVER_READY_MS; waited += 10) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            s->pid = 0;
            return -1;
        }
        if (ping(s)) return 0;
        sleep_ms(10);
    }
    redis_server_stop(s, SIGKILL);
    return -1;
}

int redis_server_start(redis_server *s, const char *tmp_base, const char *tag,
                       redis_server_persistence persistence, duel_error *err) {
    memset(s, 0, sizeof *s);
    snprintf(s->host, sizeof s->host, "127.0.0.1");
    s->persistence = persistence;
    mkdir(tmp_base, 0755);
    if (snprintf(s->dir, sizeof s->dir, "%s/%s-XXXXXX", tmp_base, tag) >= (int)sizeof s->dir)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", tmp_base);
    if (!mkdtemp(s->dir)) {
        int e = errno;
        s->dir[0] = '\0';
        return duel_error_set(err, DUEL_EIO, "%s/%s-XXXXXX: cannot create: %s", tmp_base, tag, strerror(e));
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        s->port = free_port();
        if (s->port > 0 && spawn(s) == 0) return 0;
    }
    return duel_error_set(err, DUEL_EIO, "redis-server did not start (is it installed? see %s/redis.log)", s->dir);
}

void redis_server_stop(redis_server *s, int sig) {
    if (s->pid <= 0) return;
    kill(s->pid, sig);
    for (int waited = 0; sig != SIGKILL && waited < REDIS_SERVER_STOP_MS; waited += 10) {
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            s->pid = 0;
            return;
        }
        sleep_ms(10);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

int redis_server_restart(redis_server *s, duel_error *err) {
    redis_server_stop(s, SIGTERM);
    for (int attempt = 0; attempt < 20; attempt++) {
        if (spawn(s) == 0) return 0;
        sleep_ms(100); /* the port may linger briefly */
    }
    return duel_error_set(err, DUEL_EIO, "redis-server: restart on port %d failed (see %s/redis.log)", s->port,
                          s->dir);
}

void redis_server_destroy(redis_server *s) {
    redis_server_stop(s, SIGTERM);
    if (s->dir[0]) durable_remove_tree(s->dir);
    s->dir[0] = '\0';
}
