/* redis_fixture.c: see redis_fixture.h. */
#include "redis_fixture.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
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

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int spawn(redis_fixture *f) {
    char port[16], log[600];
    snprintf(port, sizeof port, "%d", f->port);
    snprintf(log, sizeof log, "%s/redis.log", f->dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        /* Not the test's stdout: a pipe reader must not wait for the server to exit. */
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir", f->dir,
               "--save", "", "--appendonly", "yes", "--daemonize", "no", "--logfile", log, (char *)NULL);
        _exit(127);
    }
    f->pid = pid;
    for (int i = 0; i < 250; i++) { /* up to 5 s */
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            f->pid = 0;
            return -1; /* exited: port taken or redis-server missing */
        }
        redisContext *c = redis_fixture_connect(f);
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            if (r) freeReplyObject(r);
            redisFree(c);
            if (ok) return 0;
        }
        sleep_ms(20);
    }
    redis_fixture_stop(f);
    return -1;
}

int redis_fixture_start(redis_fixture *f, const char *tag) {
    memset(f, 0, sizeof *f);
    const char *base = getenv("DUEL_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    mkdir(base, 0755);
    snprintf(f->dir, sizeof f->dir, "%s/redis-%s-XXXXXX", base, tag);
    if (!mkdtemp(f->dir)) {
        fprintf(stderr, "redis fixture: mkdtemp %s: %s\n", f->dir, strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        f->port = free_port();
        if (f->port > 0 && spawn(f) == 0) return 0;
    }
    fprintf(stderr, "redis fixture: redis-server did not start (is it installed? see %s/redis.log)\n", f->dir);
    return -1;
}

void redis_fixture_stop(redis_fixture *f) {
    if (f->pid <= 0) return;
    kill(f->pid, SIGTERM);
    for (int i = 0; i < 250; i++) {
        int status;
        if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
            f->pid = 0;
            return;
        }
        sleep_ms(20);
    }
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
    f->pid = 0;
}

int redis_fixture_restart(redis_fixture *f) {
    redis_fixture_stop(f);
    for (int attempt = 0; attempt < 20; attempt++) {
        if (spawn(f) == 0) return 0;
        sleep_ms(100); /* the port may linger briefly */
    }
    fprintf(stderr, "redis fixture: restart on port %d failed\n", f->port);
    return -1;
}

void redis_fixture_remove_dir(redis_fixture *f) {
    DIR *d = opendir(f->dir);
    if (!d) return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", f->dir, e->d_name);
        DIR *sub = opendir(path);
        if (sub) { /* appendonlydir/ */
            struct dirent *s;
            char p2[1400];
            while ((s = readdir(sub)) != NULL) {
                if (s->d_name[0] == '.') continue;
                snprintf(p2, sizeof p2, "%s/%s", path, s->d_name);
                unlink(p2);
            }
            closedir(sub);
            rmdir(path);
        } else {
            unlink(path);
        }
    }
    closedir(d);
    rmdir(f->dir);
}

redisContext *redis_fixture_connect(const redis_fixture *f) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", f->port, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}
