/* cmd_serve.c: `duel serve`: runs the gateway (gateway.h) until SIGTERM or SIGINT. The signal
 * handler only writes a byte to a self-pipe; a waiter thread reads it and asks the gateway to
 * stop (gateway_stop is not async-signal-safe). Blocking the signals instead is not enough: other
 * libraries (OpenBLAS) start threads before main, and those would take the signal. Exit codes: 0
 * after a clean shutdown, 1 when the server could not start, 2 for a bad command line. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gateway.h"

int cmd_serve(int argc, char **argv);

/* The write end of the self-pipe. The one piece of process-wide state: a signal handler gets no
 * context argument. Set once before the handlers are installed. */
static int serve_signal_pipe = -1;

static void on_signal(int sig) {
    unsigned char b = (unsigned char)sig;
    int saved = errno;
    ssize_t w = write(serve_signal_pipe, &b, 1);
    (void)w;
    errno = saved;
}

typedef struct signal_waiter {
    int read_fd;
    gateway *gw;
} signal_waiter;

static void *wait_for_signal(void *arg) {
    signal_waiter *w = arg;
    unsigned char b = 0;
    ssize_t n;
    do n = read(w->read_fd, &b, 1);
    while (n < 0 && errno == EINTR);
    if (n == 1 && b != 0) gateway_stop(w->gw); /* 0: main's "we are done" wake-up */
    return NULL;
}

int cmd_serve(int argc, char **argv) {
    long long port = 8080, step_ms = 40;
    const char *redis = NULL, *config = NULL, *bind = NULL, *web_root = NULL, *spill = NULL;
    const char *backend_name = NULL, *model_dir = NULL, *erm_path = NULL, *strategy = "ee_ts";
    long long candidates = 4, max_new_tokens = 128;
    double temperature = 1.0, top_p = 1.0;
    bool port_given = false, no_snapshots = false, snapshots = false, poll_given = false;
    long long snapshot_poll_ms = 3000;
    const cli_option options[] = {
        {"--port", CLI_OPT_INT, &port, "N", "TCP port (default 8080; 0 picks a free one)", 0,
         65535, false, &port_given},
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT",
         "Redis for votes and conversations (default 127.0.0.1:6379 or the config's)", 0, 0,
         false, NULL},
        {"--config", CLI_OPT_STRING, &config, "FILE",
         "JSON config; its \"gateway\" and \"redis\" sections are read", 0, 0, false, NULL},
        {"--bind", CLI_OPT_STRING, &bind, "ADDR", "listen address (default 127.0.0.1)", 0, 0,
         false, NULL},
        {"--web-root", CLI_OPT_STRING, &web_root, "DIR",
         "folder with index.html, app.js, style.css (default gateway/web)", 0, 0, false, NULL},
        {"--spill", CLI_OPT_STRING, &spill, "FILE",
         "spill log for votes while Redis is away (default duel-data/gateway-spill.log)", 0, 0,
         false, NULL},
        {"--backend", CLI_OPT_STRING, &backend_name, "NAME",
         "where duels come from: 'engine' (a model, --model) or 'test' (deterministic answers, "
         "no model); default: engine when --model is given, else test", 0, 0, false, NULL},
        {"--model", CLI_OPT_STRING, &model_dir, "DIR",
         "Hugging Face model folder for the engine (e.g. models/default)", 0, 0, false, NULL},
        {"--erm", CLI_OPT_STRING, &erm_path, "FILE",
         "ERM ensemble (erm.safetensors); default: a fresh seeded one", 0, 0, false, NULL},
        {"--strategy", CLI_OPT_STRING, &strategy, "NAME",
         "pair selection: ee_ts (default), bai_ts, uncertainty, passive, bon; arena (with "
         "snapshots, M even): one answer from the latest snapshot, one from --model", 0, 0,
         false, NULL},
        {"--candidates", CLI_OPT_INT, &candidates, "M", "candidates per duel (default 4)", 2, 64,
         false, NULL},
        {"--max-new-tokens", CLI_OPT_INT, &max_new_tokens, "N",
         "tokens per candidate at most (default 128)", 1, 8192, false, NULL},
        {"--temperature", CLI_OPT_DOUBLE, &temperature, "T", "sampling temperature (default 1.0)",
         0, 10, false, NULL},
        {"--top-p", CLI_OPT_DOUBLE, &top_p, "P", "nucleus sampling (default 1.0: off)", 0, 1, true,
         NULL},
        {"--snapshots", CLI_OPT_FLAG, &snapshots, NULL,
         "hot-swap trainer snapshots: a loader thread follows duel:notify and the duel:snapshots "
         "zset, verifies each new snapshot's sha256s, loads it and switches new duels to it "
         "(engine backend; default: on when --redis is given)", 0, 0, false, NULL},
        {"--no-snapshots", CLI_OPT_FLAG, &no_snapshots, NULL,
         "serve the --model weights only, ignoring published snapshots", 0, 0, false, NULL},
        {"--snapshot-poll-ms", CLI_OPT_INT, &snapshot_poll_ms, "MS",
         "how often the loader reads duel:snapshots besides pub/sub notes (default 3000 or the "
         "config's gateway.snapshot_poll_ms)", 100, 600000, false, &poll_given},
        {"--test-step-ms", CLI_OPT_INT, &step_ms, "MS",
         "test backend: pause between its progress steps (default 40)", 0, 10000, false, NULL},
    };
    const cli_command cmd = {
        "serve", "[--port N] [--redis HOST:PORT] [--config FILE] [options]",
        "Serves the chat page, the duel.v1 websocket protocol, /healthz, /readyz and /metrics.\n"
        "Votes go to the Redis stream duel:prefs; while Redis is away they are kept in a fsynced\n"
        "spill log and replayed in order when it returns. With the engine backend and --redis\n"
        "(or --snapshots), new trainer snapshots are verified, loaded off the serving path and\n"
        "swapped in between engine steps; duels already generating finish on their weights, a\n"
        "bad snapshot is refused and logged (docs/SERVING.md). SIGTERM or SIGINT: stop taking\n"
        "asks, cancel running duels, flush votes, exit.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;

    gateway_config cfg;
    gateway_config_defaults(&cfg);
    duel_error err = {0};
    if (config && gateway_config_load(&cfg, config, &err)) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    if (redis && gateway_config_set_redis(&cfg, redis, &err))
        return cli_usage_error(&cmd, "%s", err.message);
    if (port_given || !config) cfg.port = (int)port;
    if (bind) snprintf(cfg.bind, sizeof cfg.bind, "%s", bind);
    if (web_root) snprintf(cfg.web_root, sizeof cfg.web_root, "%s", web_root);
    if (spill) snprintf(cfg.spill_path, sizeof cfg.spill_path, "%s", spill);

    if (poll_given) cfg.snapshot_poll_ms = (int)snapshot_poll_ms;
    if (snapshots && no_snapshots)
        return cli_usage_error(&cmd, "--snapshots and --no-snapshots contradict each other");
    duel_backend backend;
    if (!backend_name) backend_name = model_dir ? "engine" : "test";
    bool engine_backend = strcmp(backend_name, "engine") == 0;
    if (snapshots && !engine_backend)
        return cli_usage_error(&cmd, "--snapshots needs the engine backend (--model DIR)");
    cfg.snapshot_loader = engine_backend && !no_snapshots && (snapshots || redis);
    if (strcmp(backend_name, "engine") == 0) {
        if (!model_dir) return cli_usage_error(&cmd, "--backend engine needs --model DIR");
        backend_engine_config ecfg = {.model_dir = model_dir, .erm_path = erm_path,
                                      .erm_seed = 1, .strategy = strategy,
                                      .num_candidates = (int)candidates,
                                      .temperature = (float)temperature, .top_p = (float)top_p,
                                      .max_new_tokens = (int)max_new_tokens,
                                      .snapshots = cfg.snapshot_loader};
        if (backend_engine_create(&ecfg, &backend, &err)) {
            fprintf(stderr, "duel serve: %s\n", err.message);
            return CLI_EXIT_FAILURE;
        }
    } else if (strcmp(backend_name, "test") == 0) {
        backend_test_config tcfg = {.step_delay_ms = (int)step_ms, .queue_capacity = 1024};
        if (backend_test_create(&tcfg, &backend, &err)) {
            fprintf(stderr, "duel serve: %s\n", err.message);
            return CLI_EXIT_FAILURE;
        }
    } else {
        return cli_usage_error(&cmd, "unknown backend '%s' (available: engine, test)", backend_name);
    }

    signal(SIGPIPE, SIG_IGN);
    gateway *gw = NULL;
    if (gateway_create(&cfg, &backend, &gw, &err)) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    int fds[2];
    signal_waiter waiter = {.gw = gw};
    pthread_t thread;
    if (pipe2(fds, O_CLOEXEC)) {
        fprintf(stderr, "duel serve: pipe: %s\n", strerror(errno));
        gateway_destroy(gw);
        return CLI_EXIT_FAILURE;
    }
    waiter.read_fd = fds[0];
    serve_signal_pipe = fds[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (pthread_create(&thread, NULL, wait_for_signal, &waiter)) {
        fprintf(stderr, "duel serve: cannot start the signal thread\n");
        gateway_destroy(gw);
        return CLI_EXIT_FAILURE;
    }
    printf("duel serve: listening on http://%s:%d/ (redis %s:%d, backend %s, snapshots %s)\n",
           cfg.bind, gateway_port(gw), cfg.redis_host, cfg.redis_port, backend_name,
           cfg.snapshot_loader ? "followed" : "off");
    fflush(stdout);
    rc = gateway_run(gw, &err);
    unsigned char zero = 0;
    if (write(fds[1], &zero, 1) != 1) pthread_cancel(thread);
    pthread_join(thread, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    close(fds[0]);
    close(fds[1]);
    gateway_destroy(gw);
    if (rc) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    fprintf(stderr, "duel serve: stopped cleanly\n");
    return CLI_EXIT_OK;
}
