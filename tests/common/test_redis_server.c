/* test_redis_server.c: common/redis_server.c, the project's one launcher of a private
 * redis-server: a started server answers on its port, a stopped one does not, a restart keeps the
 * port, and a server whose starter dies without stopping it (a test that failed an assertion, a
 * killed benchmark) goes with it instead of running on. Needs redis-server on PATH. */
#include "test_helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "redis_server.h"

/* true when something accepts a connection on 127.0.0.1:port */
static bool port_answers(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* polls until process pid is gone (or a zombie nobody has reaped yet: it serves nothing);
 * false after 10 s. By pid, not port: another test may take the freed port at once. */
static bool process_ends(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    for (int i = 0; i < 1000; i++) {
        FILE *f = fopen(path, "r");
        if (!f) return true;
        char state = '?';
        int n = fscanf(f, "%*d (%*[^)]) %c", &state);
        fclose(f);
        if (n == 1 && (state == 'Z' || state == 'X')) return true;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

static void test_start_stop_restart(void **state) {
    (void)state;
    redis_server s;
    duel_error err = {0};
    assert_int_equal(redis_server_start(&s, test_env("DUEL_TEST_TMP", "/tmp"), "rs-test", REDIS_SERVER_EPHEMERAL, &err), 0);
    assert_true(s.pid > 0 && s.port > 0);
    assert_true(port_answers(s.port));
    const int port = s.port;
    assert_int_equal(redis_server_restart(&s, &err), 0);
    assert_int_equal(s.port, port);
    assert_true(port_answers(port));
    redis_server_stop(&s, SIGTERM);
    assert_int_equal(s.pid, 0);
    assert_false(port_answers(port));
    redis_server_destroy(&s);
}

/* The starter is a child process that exits without redis_server_stop: its server must follow. */
static void test_server_dies_with_its_starter(void **state) {
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        redis_server s;
        duel_error err = {0};
        pid_t server = redis_server_start(&s, test_env("DUEL_TEST_TMP", "/tmp"), "rs-orphan", REDIS_SERVER_EPHEMERAL, &err)
                           ? -1
                           : s.pid;
        if (write(fds[1], &server, sizeof server) != (ssize_t)sizeof server) _exit(2);
        _exit(server > 0 ? 0 : 1); /* no stop: what a failed assertion's longjmp or a SIGKILL leaves */
    }
    close(fds[1]);
    pid_t server = -1;
    assert_int_equal(read(fds[0], &server, sizeof server), (ssize_t)sizeof server);
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(server > 0);
    assert_true(process_ends(server)); /* before the fix it ran on until killed by hand */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_stop_restart),
        cmocka_unit_test(test_server_dies_with_its_starter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
