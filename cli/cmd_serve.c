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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "config.h"
#include "engine.h"
#include "gateway.h"
#include "kv_cache.h"
#include "weight_format.h"

int cmd_serve(int argc, char **argv);

extern char **environ;

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

/* Reads the serving keys of the sections duel, engine and erm of root into the engine adapter's
 * config (strings point into root); ranges as the live knobs (common/config.c), messages name
 * the dotted path. */
static int engine_config_from_json(const json_t *root, const char *source,
                                   backend_engine_config *e, duel_error *err) {
    static const struct { const char *section, *key; double lo, hi; bool lo_open; } ranges[] = {
        {"duel", "candidates", 2, 64, false},      {"duel", "max_new_tokens", 1, 8192, false},
        {"duel", "temperature", 0, 10, false},     {"duel", "top_p", 0, 1, true},
        {"duel", "top_k", 0, 1000000, false},      {"duel", "erm_seed", 0, 9.2e18, false},
        {"erm", "num_heads", 1, 1024, false},
        {"engine", "kv_memory_bytes", 1 << 20, 1099511627776.0, false},
        {"engine", "max_pilaf_jobs", 1, ENGINE_MAX_PILAF_JOBS, false},
    };
    double v[sizeof ranges / sizeof ranges[0]];
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        const json_t *x = json_object_get(duel_config_section(root, ranges[i].section), ranges[i].key);
        if (!json_is_number(x))
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s.%s must be a number", source,
                                  ranges[i].section, ranges[i].key);
        v[i] = json_number_value(x);
        if (!(v[i] >= ranges[i].lo && v[i] <= ranges[i].hi) || (ranges[i].lo_open && v[i] == ranges[i].lo))
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s.%s = %g is outside %c%g, %g]", source,
                                  ranges[i].section, ranges[i].key, v[i],
                                  ranges[i].lo_open ? '(' : '[', ranges[i].lo, ranges[i].hi);
    }
    const json_t *strategy = json_object_get(duel_config_section(root, "duel"), "strategy");
    const json_t *erm_path = json_object_get(duel_config_section(root, "erm"), "path");
    const json_t *weights = json_object_get(duel_config_section(root, "engine"), "weights");
    const json_t *kv_dtype = json_object_get(duel_config_section(root, "engine"), "kv_dtype");
    if (!json_is_string(strategy) || !json_is_string(erm_path) || !json_is_string(weights) ||
        !json_is_string(kv_dtype))
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: duel.strategy, erm.path, engine.weights and engine.kv_dtype "
                              "must be strings",
                              source);
    if (weight_format_parse(json_string_value(weights), &e->weights, err))
        return duel_error_prefix(err, "%s: engine.weights", source);
    if (kv_dtype_parse(json_string_value(kv_dtype), &e->kv_bytes_per_element, err))
        return duel_error_prefix(err, "%s: engine.kv_dtype", source);
    e->num_candidates = (int)v[0];
    e->max_new_tokens = (int)v[1];
    e->temperature = (float)v[2];
    e->top_p = (float)v[3];
    e->top_k = (int)v[4];
    e->erm_seed = (uint64_t)v[5];
    e->erm_heads = (int)v[6];
    e->kv_memory_bytes = (size_t)v[7];
    e->max_pilaf_jobs = (int)v[8];
    e->strategy = json_string_value(strategy);
    e->erm_path = json_string_length(erm_path) ? json_string_value(erm_path) : NULL;
    return DUEL_OK;
}

int cmd_serve(int argc, char **argv) {
    long long port = 8080, step_ms = 40;
    const char *redis = NULL, *config = NULL, *bind = NULL, *web_root = NULL, *spill = NULL;
    const char *backend_name = NULL, *model_dir = NULL, *erm_path = NULL, *strategy = NULL;
    const char *weights = NULL, *kv_dtype = NULL;
    const char *set_doc = NULL; /* --set never reaches cli_parse (duel_config_take_sets); listed for --help */
    long long candidates = 4, max_new_tokens = 128;
    double temperature = 1.0, top_p = 1.0;
    bool port_given = false, no_snapshots = false, snapshots = false, poll_given = false;
    bool candidates_given = false, max_new_given = false, temperature_given = false, top_p_given = false;
    long long snapshot_poll_ms = 3000;
    const cli_option options[] = {
        {"--port", CLI_OPT_INT, &port, "N", "TCP port (default gateway.port, 8080; 0 picks a free one)", 0,
         65535, false, &port_given},
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT",
         "Redis for votes and conversations (default redis.host:redis.port, 127.0.0.1:6379)", 0, 0,
         false, NULL},
        {"--config", CLI_OPT_STRING, &config, "FILE",
         "JSON configuration (docs/CONFIG.md; default: the built-in config/default.json values); "
         "this command reads gateway, redis, duel, engine.kv_memory_bytes/max_pilaf_jobs, "
         "erm.path/num_heads and "
         "model.path (with --backend engine)", 0, 0, false, NULL},
        {"--set", CLI_OPT_STRING, &set_doc, "SECTION.KEY=VALUE",
         "override one configuration key, repeatable, applied in order after --config and DUEL_* "
         "(e.g. --set duel.candidates=6)", 0, 0, false, NULL},
        {"--bind", CLI_OPT_STRING, &bind, "ADDR", "listen address (default gateway.bind, 127.0.0.1)", 0, 0,
         false, NULL},
        {"--web-root", CLI_OPT_STRING, &web_root, "DIR",
         "folder with index.html, app.js, style.css (default gateway.web_root, gateway/web)", 0, 0, false,
         NULL},
        {"--spill", CLI_OPT_STRING, &spill, "FILE",
         "spill log for votes while Redis is away (default gateway.spill_path, "
         "duel-data/gateway-spill.log)", 0, 0, false, NULL},
        {"--backend", CLI_OPT_STRING, &backend_name, "NAME",
         "where duels come from: 'engine' (a model: --model, else model.path) or 'test' "
         "(deterministic answers, no model); default: engine when --model is given, else test", 0, 0,
         false, NULL},
        {"--model", CLI_OPT_STRING, &model_dir, "DIR",
         "Hugging Face model folder for the engine (e.g. models/default)", 0, 0, false, NULL},
        {"--erm", CLI_OPT_STRING, &erm_path, "FILE",
         "ERM ensemble (erm.safetensors; default erm.path; \"\": a fresh one seeded with "
         "duel.erm_seed)", 0, 0, false, NULL},
        {"--strategy", CLI_OPT_STRING, &strategy, "NAME",
         "pair selection (default duel.strategy, ee_ts): ee_ts, bai_ts, uncertainty, passive, bon; "
         "arena (with snapshots, M even): one answer from the latest snapshot, one from --model", 0,
         0, false, NULL},
        {"--candidates", CLI_OPT_INT, &candidates, "M", "candidates per duel (default duel.candidates, 4)",
         2, 64, false, &candidates_given},
        {"--max-new-tokens", CLI_OPT_INT, &max_new_tokens, "N",
         "tokens per candidate at most (default duel.max_new_tokens, 128)", 1, 8192, false,
         &max_new_given},
        {"--temperature", CLI_OPT_DOUBLE, &temperature, "T",
         "sampling temperature (default duel.temperature, 1.0)", 0, 10, false, &temperature_given},
        {"--top-p", CLI_OPT_DOUBLE, &top_p, "P", "nucleus sampling (default duel.top_p, 1.0: off)", 0,
         1, true, &top_p_given},
        {"--snapshots", CLI_OPT_FLAG, &snapshots, NULL,
         "hot-swap trainer snapshots: a loader thread follows duel:notify and the duel:snapshots "
         "zset, verifies each new snapshot's sha256s, loads it and switches new duels to it "
         "(engine backend; default: on when --redis is given)", 0, 0, false, NULL},
        {"--no-snapshots", CLI_OPT_FLAG, &no_snapshots, NULL,
         "serve the --model weights only, ignoring published snapshots", 0, 0, false, NULL},
        {"--snapshot-poll-ms", CLI_OPT_INT, &snapshot_poll_ms, "MS",
         "how often the loader reads duel:snapshots besides pub/sub notes (default "
         "gateway.snapshot_poll_ms, 3000)", 100, 600000, false, &poll_given},
        {"--weights", CLI_OPT_STRING, &weights, "FMT",
         "weight storage of the model and every snapshot: f32, bf16 or q8 (default "
         "engine.weights, f32)", 0, 0, false, NULL},
        {"--kv-dtype", CLI_OPT_STRING, &kv_dtype, "T",
         "KV cache storage: f32 or bf16 (default engine.kv_dtype, f32)", 0, 0, false, NULL},
        {"--test-step-ms", CLI_OPT_INT, &step_ms, "MS",
         "test backend: pause between its progress steps (default 40)", 0, 10000, false, NULL},
    };
    const cli_command cmd = {
        "serve", "[--port N] [--redis HOST:PORT] [--config FILE] [--set SECTION.KEY=VALUE]... [options]",
        "Serves the chat page, the duel.v1 websocket protocol, /healthz, /readyz and /metrics.\n"
        "Votes go to the Redis stream duel:prefs; while Redis is away they are kept in a fsynced\n"
        "spill log and replayed in order when it returns. With the engine backend and --redis\n"
        "(or --snapshots), new trainer snapshots are verified, loaded off the serving path and\n"
        "swapped in between engine steps; duels already generating finish on their weights, a\n"
        "bad snapshot is refused and logged (docs/SERVING.md). SIGTERM or SIGINT: stop taking\n"
        "asks, cancel running duels, flush votes, exit.\n"
        "Configuration (docs/CONFIG.md): the built-in defaults (config/default.json), then --config\n"
        "FILE (strict: an unknown key or a wrong type is an error naming its dotted path), then\n"
        "DUEL_REDIS and DUEL_BIND, then each --set in order; the flags above win over all of them.",
        options, sizeof options / sizeof options[0]};
    const char *sets[64];
    size_t n_sets = 0;
    duel_error err = {0};
    if (duel_config_take_sets(&argc, argv, sets, 64, &n_sets, &err))
        return cli_usage_error(&cmd, "%s", err.message);
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;

    json_t *root = NULL;
    if (duel_config_load(config, sets, n_sets, (const char *const *)environ, &root, NULL, &err)) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        return n_sets > 0 && strncmp(err.message, "--set", 5) == 0 ? CLI_EXIT_USAGE
                                                                  : CLI_EXIT_FAILURE;
    }
    char source[4200];
    if (config) snprintf(source, sizeof source, "%s%s", config, n_sets ? " with --set" : "");
    else snprintf(source, sizeof source, "%s",
                  n_sets ? "the configuration with --set" : "the built-in configuration");
    gateway_config cfg;
    gateway_config_defaults(&cfg);
    backend_engine_config ecfg = {0};
    if (gateway_config_from_json(&cfg, root, source, &err) ||
        engine_config_from_json(root, source, &ecfg, &err)) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        json_decref(root);
        return CLI_EXIT_FAILURE;
    }
    /* Explicit flags win over the configuration. */
    if (redis && gateway_config_set_redis(&cfg, redis, &err)) {
        json_decref(root);
        return cli_usage_error(&cmd, "%s", err.message);
    }
    if (port_given) cfg.port = (int)port;
    if (bind) snprintf(cfg.bind, sizeof cfg.bind, "%s", bind);
    if (web_root) snprintf(cfg.web_root, sizeof cfg.web_root, "%s", web_root);
    if (spill) snprintf(cfg.spill_path, sizeof cfg.spill_path, "%s", spill);
    if (poll_given) cfg.snapshot_poll_ms = (int)snapshot_poll_ms;
    if (strategy) ecfg.strategy = strategy;
    if (erm_path) ecfg.erm_path = erm_path[0] ? erm_path : NULL;
    if (candidates_given) ecfg.num_candidates = (int)candidates;
    if (max_new_given) ecfg.max_new_tokens = (int)max_new_tokens;
    if (temperature_given) ecfg.temperature = (float)temperature;
    if (top_p_given) ecfg.top_p = (float)top_p;
    if (weights && weight_format_parse(weights, &ecfg.weights, &err)) {
        json_decref(root);
        return cli_usage_error(&cmd, "--weights: %s", err.message);
    }
    if (kv_dtype && kv_dtype_parse(kv_dtype, &ecfg.kv_bytes_per_element, &err)) {
        json_decref(root);
        return cli_usage_error(&cmd, "--kv-dtype: %s", err.message);
    }

    rc = CLI_EXIT_OK;
    if (snapshots && no_snapshots)
        rc = cli_usage_error(&cmd, "--snapshots and --no-snapshots contradict each other");
    duel_backend backend;
    if (!backend_name) backend_name = model_dir ? "engine" : "test";
    bool engine_backend = strcmp(backend_name, "engine") == 0;
    if (!rc && snapshots && !engine_backend)
        rc = cli_usage_error(&cmd, "--snapshots needs the engine backend (--model DIR)");
    cfg.snapshot_loader = engine_backend && !no_snapshots && (snapshots || redis);
    if (!rc && engine_backend) {
        const json_t *path = json_object_get(duel_config_section(root, "model"), "path");
        if (!model_dir && json_is_string(path) && json_string_length(path))
            model_dir = json_string_value(path);
        if (!model_dir) {
            rc = cli_usage_error(&cmd, "--backend engine needs --model DIR or model.path");
        } else {
            ecfg.model_dir = model_dir;
            ecfg.snapshots = cfg.snapshot_loader;
            if (backend_engine_create(&ecfg, &backend, &err)) {
                fprintf(stderr, "duel serve: %s\n", err.message);
                rc = CLI_EXIT_FAILURE;
            }
        }
    } else if (!rc && strcmp(backend_name, "test") == 0) {
        backend_test_config tcfg = {.step_delay_ms = (int)step_ms, .queue_capacity = 1024};
        if (backend_test_create(&tcfg, &backend, &err)) {
            fprintf(stderr, "duel serve: %s\n", err.message);
            rc = CLI_EXIT_FAILURE;
        }
    } else if (!rc) {
        rc = cli_usage_error(&cmd, "unknown backend '%s' (available: engine, test)", backend_name);
    }
    /* The engine adapter copies what it keeps (strategy, paths) before returning. */
    json_decref(root);
    if (rc) return rc;

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

