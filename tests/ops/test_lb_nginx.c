/* test_lb_nginx.c: several gateways behind Debian's nginx with ops/lb's configuration (issue 21,
 * docs/SERVING.md "Several gateways behind a load balancer"). A redis-server, two `duel serve
 * --backend test` processes and an unprivileged nginx (ops/lb/render --prefix, foreground, every
 * file in the test's folder), all on free loopback ports. Through nginx:
 *   - affinity: every socket of one client id (?client=, as the page sends it) reaches the same
 *     gateway, so a duel answered on one socket can be voted on from the next one (duels nobody
 *     voted on live in that gateway's memory only);
 *   - failover: with the gateway serving the conversation killed (SIGKILL), the same client
 *     reconnects through nginx, resumes the conversation (its turns come from Redis) on the
 *     other gateway, asks and votes there.
 * Exit 77 (skip) when nginx is not installed (ops/test installs it). */
#ifndef DUEL_EXE
#error "DUEL_EXE (path of the duel executable) must be defined by the build"
#endif

#include "gateway_test_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include "durable_file.h"

#define CLIENT_ID "0123456789abcdef0123456789abcdef" /* protocol_id_valid: 32 lowercase hex */

static const char *g_nginx;
static tu_redis g_redis;
static char g_dir[512];
static pid_t g_gateway[2], g_lb;
static int g_gateway_port[2], g_lb_port;

static pid_t spawn(char *const argv[], const char *log) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(log, "a", stdout);
        f = f ? freopen(log, "a", stderr) : NULL;
        (void)f;
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void stop(pid_t *pid, int sig) {
    if (*pid <= 0) return;
    kill(*pid, sig);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

/* Polls GET path on port until it answers 200 (at most 30 s), failing when the process exits. */
static void wait_ready(int port, const char *path, pid_t pid, const char *what) {
    for (int i = 0; i < 3000; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) fail_msg("%s exited before it was ready", what);
        int fd = tu_tcp_connect(port);
        if (fd >= 0) {
            close(fd);
            char *body = NULL;
            int status = tu_http_get(port, path, &body);
            free(body);
            if (status == 200) return;
        }
        tu_sleep_ms(10);
    }
    fail_msg("%s did not answer 200 on %s within 30 s", what, path);
}

static void start_gateway(int i) {
    char port[16], redis[32], data[700], log[700], web[600];
    snprintf(port, sizeof port, "%d", g_gateway_port[i]);
    snprintf(redis, sizeof redis, "127.0.0.1:%d", g_redis.port);
    snprintf(data, sizeof data, "%s/gw-%d", g_dir, i);
    snprintf(log, sizeof log, "%s/gw-%d.log", g_dir, i);
    snprintf(web, sizeof web, "%s/gateway/web", test_env("DUEL_SOURCE_DIR", "."));
    char *argv[] = {DUEL_EXE, "serve", "--backend", "test", "--port", port, "--bind", "127.0.0.1",
                    "--redis", redis, "--data-dir", data, "--web-root", web, "--set",
                    "gateway.stream_interval_ms=0", NULL};
    g_gateway[i] = spawn(argv, log);
    wait_ready(g_gateway_port[i], "/readyz", g_gateway[i], "duel serve");
}

static int setup(void **state) {
    (void)state;
    test_make_temp_dir("lb-nginx", g_dir, sizeof g_dir);
    tu_redis_start(&g_redis);
    for (int i = 0; i < 2; i++) g_gateway_port[i] = tu_free_port();
    g_lb_port = tu_free_port();
    for (int i = 0; i < 2; i++) start_gateway(i);
    char cmd[2048], prefix[700], conf[800], errlog[800], log[700];
    snprintf(prefix, sizeof prefix, "%s/lb", g_dir);
    snprintf(cmd, sizeof cmd,
             "'%s/ops/lb/render' --listen 127.0.0.1:%d --gateway 127.0.0.1:%d --gateway 127.0.0.1:%d "
             "--prefix '%s'",
             test_env("DUEL_SOURCE_DIR", "."), g_lb_port, g_gateway_port[0], g_gateway_port[1], prefix);
    assert_int_equal(system(cmd), 0);
    snprintf(conf, sizeof conf, "%s/nginx.conf", prefix);
    snprintf(errlog, sizeof errlog, "%s/error.log", prefix);
    snprintf(log, sizeof log, "%s/nginx.out", g_dir);
    char *argv[] = {(char *)g_nginx, "-p", prefix, "-c", conf, "-e", errlog, NULL};
    g_lb = spawn(argv, log);
    wait_ready(g_lb_port, "/readyz", g_lb, "nginx");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    stop(&g_lb, SIGQUIT); /* nginx's graceful stop */
    for (int i = 0; i < 2; i++) stop(&g_gateway[i], SIGTERM);
    tu_redis_stop(&g_redis, SIGTERM);
    durable_remove_tree(g_dir);
    return 0;
}

static long long asks(int i) { return tu_metric(g_gateway_port[i], "duel_gateway_asks_total"); }

/* A socket of CLIENT_ID through nginx, hello'd (resuming conv when it is not empty). */
static void lb_open(ws_client *c, char *conv, json_t **welcome) {
    assert_int_equal(ws_connect_path(c, g_lb_port, "/?client=" CLIENT_ID, NULL), 101);
    char msg[160];
    if (conv[0])
        snprintf(msg, sizeof msg, "{\"type\":\"hello\",\"client\":\"%s\",\"conversation\":\"%s\"}", CLIENT_ID, conv);
    else
        snprintf(msg, sizeof msg, "{\"type\":\"hello\",\"client\":\"%s\"}", CLIENT_ID);
    assert_int_equal(ws_send_text(c, msg), 0);
    json_t *w = ws_expect(c, "welcome");
    snprintf(conv, 33, "%s", json_string_value(json_object_get(w, "conversation")));
    if (welcome) *welcome = w;
    else json_decref(w);
}

/* The number of turns duel:conv:{conv} holds in Redis (-1 while it is absent). */
static int turns_in_redis(const char *conv) {
    redisContext *r = tu_redis_connect(&g_redis);
    assert_non_null(r);
    redisReply *rep = redisCommand(r, "HGET duel:conv:%s turns", conv);
    int n = -1;
    if (rep && rep->type == REDIS_REPLY_STRING) {
        json_t *j = json_loads(rep->str, 0, NULL);
        n = json_is_array(j) ? (int)json_array_size(j) : -1;
        json_decref(j);
    }
    if (rep) freeReplyObject(rep);
    redisFree(r);
    return n;
}

static void test_affinity_and_failover(void **state) {
    (void)state;
    char conv[33] = "";
    ws_client c;
    tu_duel d;

    /* Turn 1 on some gateway; both gateways together saw exactly one ask. */
    lb_open(&c, conv, NULL);
    ws_ask_duel(&c, "first question", &d);
    assert_false(ws_vote(&c, d.id, "a"));
    tu_duel_free(&d);
    ws_close(&c);
    assert_int_equal(asks(0) + asks(1), 1);
    const int serving = asks(0) == 1 ? 0 : 1, other = 1 - serving;

    /* Three more sockets of the same client: all on the serving gateway. The second answers a
     * duel and closes before voting; the third votes on it (only that gateway knows the duel). */
    lb_open(&c, conv, NULL);
    ws_ask_duel(&c, "second question", &d);
    tu_duel_free(&d);
    ws_close(&c);
    lb_open(&c, conv, NULL);
    ws_ask_duel(&c, "third question", &d);
    ws_close(&c);
    lb_open(&c, conv, NULL);
    assert_false(ws_vote(&c, d.id, "b"));
    tu_duel_free(&d);
    ws_close(&c);
    assert_int_equal(asks(serving), 3);
    assert_int_equal(asks(other), 0);

    /* Both votes made turns; once Redis holds them, the serving gateway dies. */
    for (int i = 0; i < 1000 && turns_in_redis(conv) != 2; i++) tu_sleep_ms(10);
    assert_int_equal(turns_in_redis(conv), 2);
    stop(&g_gateway[serving], SIGKILL);

    /* The same client through nginx: the other gateway resumes the conversation with its two
     * turns, answers and takes the vote. */
    json_t *welcome = NULL;
    char resumed[33];
    snprintf(resumed, sizeof resumed, "%s", conv);
    lb_open(&c, conv, &welcome);
    assert_string_equal(conv, resumed);
    assert_true(json_is_true(json_object_get(welcome, "resumed")));
    json_t *history = json_object_get(welcome, "history");
    assert_int_equal((int)json_array_size(history), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(history, 0), "user")), "first question");
    assert_string_equal(json_string_value(json_object_get(json_array_get(history, 1), "user")), "third question");
    json_decref(welcome);
    ws_ask_duel(&c, "fourth question", &d);
    assert_false(ws_vote(&c, d.id, "a"));
    tu_duel_free(&d);
    ws_close(&c);
    assert_int_equal(asks(other), 1);
    for (int i = 0; i < 1000 && turns_in_redis(conv) != 3; i++) tu_sleep_ms(10);
    assert_int_equal(turns_in_redis(conv), 3);
    /* All three votes in the test backend's stream, none lost to the kill. */
    assert_int_equal(tu_redis_int(&g_redis, "XLEN duel:prefs:test"), 3);
}

int main(void) {
    static const char *const candidates[] = {"/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"};
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates && !g_nginx; i++)
        if (access(candidates[i], X_OK) == 0) g_nginx = candidates[i];
    if (!g_nginx) {
        printf("SKIP: nginx is not installed (apt-get install nginx; ops/test installs it)\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_affinity_and_failover, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
