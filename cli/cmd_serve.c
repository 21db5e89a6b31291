/* cmd_serve.c: `duel serve`: runs the gateway (gateway.h) until SIGTERM or SIGINT. It serves a
 * model (model.path, or --model) through the engine adapter; the test backend's canned answers
 * only when asked for by name (--backend test), and then their votes go to duel:prefs:test, never
 * to the trainer's stream. Its files live in the data folder (--data-dir, default duel-data, as
 * `duel train`'s), which it creates: the vote spill log unless --spill or gateway.spill_path puts
 * it elsewhere. The signal handler only writes a byte to a self-pipe; a waiter thread reads it
 * and asks the gateway to stop (gateway_stop is not async-signal-safe). Blocking the signals
 * instead is not enough: other libraries (OpenBLAS) start threads before main, and those would
 * take the signal. Exit codes: 0 after a clean shutdown, 1 when the server could not start, 2
 * for a bad command line. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "config.h"
#include "engine.h"
#include "gateway.h"
#include "kv_cache.h"
#include "weight_format.h"
#include "weight_transport_model.h"
#include "knobs.h"

int cmd_serve(int argc, char **argv);

#define SERVE_DEFAULT_DATA_DIR "duel-data" /* `duel train`'s too: one data folder for both */
#define SERVE_SPILL_NAME "gateway-spill.log"

/* mkdir -p: path and every missing folder above it. */
static int make_folders(const char *path, duel_error *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        bool end = *p == '\0';
        if (*p != '/' && !end) continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return duel_error_set(err, DUEL_EIO, "%s: cannot create the folder: %s", buf, strerror(errno));
        if (end) break;
        *p = '/';
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return duel_error_set(err, DUEL_EIO, "%s: not a folder", path);
    return DUEL_OK;
}

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

int cli_engine_policy_features(const json_t *root, bool *policy, duel_error *err) {
    engine_feature_source f;
    const json_t *v = json_object_get(duel_config_section(root, "engine"), "features");
    if (engine_features_parse(json_string_value(v), &f, err)) return duel_error_prefix(err, "engine.features");
    *policy = f == ENGINE_FEATURES_POLICY;
    return DUEL_OK;
}

/* Reads the engine adapter's keys of root (strings point into root or into knobs): the serving
 * knobs' config keys (duel.strategy, candidates, temperature, top_p, top_k, max_new_tokens) come
 * from knobs, which the knob table (common/knobs.h) checked; the others are checked here, and
 * messages name the dotted path. */
static int engine_config_from_json(const json_t *root, const char *source,
                                   const duel_knob_values *knobs, backend_engine_config *e,
                                   duel_error *err) {
    static const struct { const char *section, *key; double lo, hi; } ranges[] = {
        {"duel", "erm_seed", 0, 9.2e18},
        {"erm", "num_heads", 1, 1024},
        {"engine", "kv_memory_bytes", 1 << 20, 1099511627776.0},
        {"engine", "max_pilaf_jobs", 1, ENGINE_MAX_PILAF_JOBS},
        {"duel", "pilaf_beta", 0, 1e6},
    };
    double v[sizeof ranges / sizeof ranges[0]];
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        const json_t *x = json_object_get(duel_config_section(root, ranges[i].section), ranges[i].key);
        if (!json_is_number(x))
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s.%s must be a number", source,
                                  ranges[i].section, ranges[i].key);
        v[i] = json_number_value(x);
        if (!(v[i] >= ranges[i].lo && v[i] <= ranges[i].hi))
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s.%s = %g is outside [%g, %g]", source,
                                  ranges[i].section, ranges[i].key, v[i], ranges[i].lo, ranges[i].hi);
    }
    const json_t *erm_path = json_object_get(duel_config_section(root, "erm"), "path");
    const json_t *compute = json_object_get(duel_config_section(root, "engine"), "backend");
    e->providers = cli_compute_providers(&e->num_providers);
    if (!json_is_string(compute) ||
        !compute_name_known(json_string_value(compute), e->providers, e->num_providers))
        return duel_error_set(err, DUEL_EFORMAT, "%s: engine.backend must be auto, cpu or cuda",
                              source);
    e->compute = json_string_value(compute);
    if (!json_is_string(erm_path))
        return duel_error_set(err, DUEL_EFORMAT, "%s: erm.path must be a string", source);
    e->strategy = knobs->v[duel_knob_index("strategy")].text;
    e->num_candidates = (int)knobs->v[duel_knob_index("M")].number;
    e->max_new_tokens = (int)knobs->v[duel_knob_index("max_new_tokens")].number;
    e->temperature = (float)knobs->v[duel_knob_index("temperature")].number;
    e->top_p = (float)knobs->v[duel_knob_index("top_p")].number;
    e->top_k = (int)knobs->v[duel_knob_index("top_k")].number;
    e->erm_seed = (uint64_t)v[0];
    e->erm_heads = (int)v[1];
    e->kv_memory_bytes = (size_t)v[2];
    e->max_pilaf_jobs = (int)v[3];
    e->pilaf_beta = v[4];
    const json_t *weights = json_object_get(duel_config_section(root, "engine"), "weights");
    const json_t *kv_dtype = json_object_get(duel_config_section(root, "engine"), "kv_dtype");
    if (!json_is_string(weights) || !json_is_string(kv_dtype))
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: engine.weights and engine.kv_dtype must be strings", source);
    if (weight_format_parse(json_string_value(weights), &e->weights, err))
        return duel_error_prefix(err, "%s: engine.weights", source);
    if (kv_dtype_parse(json_string_value(kv_dtype), &e->kv_bytes_per_element, err))
        return duel_error_prefix(err, "%s: engine.kv_dtype", source);
    if (cli_engine_policy_features(root, &e->policy_features, err)) return duel_error_prefix(err, "%s", source);
    e->erm_path = json_string_length(erm_path) ? json_string_value(erm_path) : NULL;
    return DUEL_OK;
}

/* The flags that set a serving knob's default: checked by the knob table, then applied as the
 * last --set of their config key, so that the engine and the live knobs' defaults agree. */
typedef struct knob_flag {
    const char *flag, *knob, *key;
    const char *value; /* NULL: not given */
} knob_flag;

int cmd_serve(int argc, char **argv) {
    long long port = 8080, step_ms = 40;
    const char *redis = NULL, *config = NULL, *bind = NULL, *web_root = NULL, *spill = NULL;
    const char *data_dir = SERVE_DEFAULT_DATA_DIR;
    const char *backend_name = NULL, *model_dir = NULL, *erm_path = NULL;
    const char *weights = NULL, *kv_dtype = NULL;
    const char *set_doc = NULL; /* --set never reaches cli_parse (duel_config_take_sets); listed for --help */
    knob_flag knob_flags[] = {{"--strategy", "strategy", "duel.strategy", NULL},
                              {"--candidates", "M", "duel.candidates", NULL},
                              {"--max-new-tokens", "max_new_tokens", "duel.max_new_tokens", NULL},
                              {"--temperature", "temperature", "duel.temperature", NULL},
                              {"--top-p", "top_p", "duel.top_p", NULL}};
    bool port_given = false, no_snapshots = false, snapshots = false, poll_given = false;
    long long snapshot_poll_ms = 3000;
    const cli_option options[] = {
        {"--port", CLI_OPT_INT, &port, "N", "TCP port (default gateway.port, 8080; 0 picks a free one)", 0,
         65535, false, &port_given},
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT",
         "Redis for votes and conversations (default redis.host:redis.port, 127.0.0.1:6379)", 0, 0,
         false, NULL},
        {"--config", CLI_OPT_STRING, &config, "FILE",
         "JSON configuration (docs/CONFIG.md; default: the built-in config/default.json values); "
         "this command reads gateway, redis, duel, engine.backend/features/kv_memory_bytes/max_pilaf_jobs/"
         "weights/kv_dtype, "
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
        {"--data-dir", CLI_OPT_STRING, &data_dir, "DIR",
         "the data folder, created when missing; the spill log goes there (default ./duel-data, "
         "the same as duel train's)", 0, 0, false, NULL},
        {"--spill", CLI_OPT_STRING, &spill, "FILE",
         "spill log for votes while Redis is away (default gateway.spill_path, else "
         "DIR/gateway-spill.log of --data-dir)", 0, 0, false, NULL},
        {"--backend", CLI_OPT_STRING, &backend_name, "NAME",
         "where duels come from: 'engine' (default: the model of --model, else model.path, "
         "models/default) or 'test' (canned answers, no model, for tests: their votes go to "
         "duel:prefs:test, never to training)", 0, 0, false, NULL},
        {"--model", CLI_OPT_STRING, &model_dir, "DIR",
         "Hugging Face model folder for the engine (default model.path, models/default)", 0, 0,
         false, NULL},
        {"--erm", CLI_OPT_STRING, &erm_path, "FILE",
         "ERM ensemble (erm.safetensors; default erm.path; \"\": a fresh one seeded with "
         "duel.erm_seed)", 0, 0, false, NULL},
        {"--strategy", CLI_OPT_STRING, &knob_flags[0].value, "NAME",
         "pair selection (default duel.strategy, ee_ts): ee_ts, bai_ts, uncertainty, passive, bon; "
         "pilaf: two answers (M = 2 whatever --candidates says), half the duels sampled from the "
         "policy's logits mixed with --model's by duel.pilaf_beta, no ERM scores; "
         "arena (with snapshots, M even): one answer from the latest snapshot, one from --model. "
         "This and the four below are the live knobs' defaults (duel knobs list): duel:knobs "
         "overrides them at run time", 0, 0, false, NULL},
        {"--candidates", CLI_OPT_STRING, &knob_flags[1].value, "M",
         "candidates per duel, 2..64 (default duel.candidates, 4)", 0, 0, false, NULL},
        {"--max-new-tokens", CLI_OPT_STRING, &knob_flags[2].value, "N",
         "tokens per candidate at most, 1..8192 (default duel.max_new_tokens, 128)", 0, 0, false, NULL},
        {"--temperature", CLI_OPT_STRING, &knob_flags[3].value, "T",
         "sampling temperature, 0..10 (default duel.temperature, 1.0)", 0, 0, false, NULL},
        {"--top-p", CLI_OPT_STRING, &knob_flags[4].value, "P",
         "nucleus sampling, (0, 1] (default duel.top_p, 1.0: off)", 0, 0, false, NULL},
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
         "--backend test: pause between its progress steps (default 40)", 0, 10000, false, NULL},
    };
    const cli_command cmd = {
        "serve", "[--port N] [--redis HOST:PORT] [--config FILE] [--set SECTION.KEY=VALUE]... [options]",
        "Serves the chat page, the duel.v1 websocket protocol, /healthz, /readyz and /metrics,\n"
        "answering with the model of model.path (models/default; --model DIR for another), and\n"
        "the operator console /ops with its admin API /api/stats, /api/knobs, /api/audit (bearer\n"
        "tokens from DUEL_TOKENS or gateway.tokens_file; docs/OPERATIONS.md).\n"
        "Votes go to the Redis stream duel:prefs; while Redis is away they are kept in a fsynced\n"
        "spill log (in the data folder) and replayed in order when it returns. --backend test\n"
        "serves canned answers without a model instead; the page says so and their votes go to\n"
        "duel:prefs:test, which no trainer reads. With the engine backend and --redis\n"
        "(or --snapshots), new trainer snapshots are verified, loaded off the serving path and\n"
        "swapped in between engine steps; duels already generating finish on their weights, a\n"
        "bad snapshot is refused and logged (docs/SERVING.md). SIGTERM or SIGINT: stop taking\n"
        "asks, cancel running duels, flush votes, exit.\n"
        "Configuration (docs/CONFIG.md): the built-in defaults (config/default.json), then --config\n"
        "FILE (strict: an unknown key or a wrong type is an error naming its dotted path), then\n"
        "DUEL_REDIS and DUEL_BIND, then each --set in order; the flags above win over all of them.",
        options, sizeof options / sizeof options[0]};
    const char *sets[64 + sizeof knob_flags / sizeof knob_flags[0]];
    char flag_sets[sizeof knob_flags / sizeof knob_flags[0]][128];
    size_t n_sets = 0;
    duel_error err = {0};
    int rc = cli_parse_with_sets(&cmd, argc, argv, sets, 64, &n_sets);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    size_t n_user_sets = n_sets;
    for (size_t i = 0; i < sizeof knob_flags / sizeof knob_flags[0]; i++) {
        const knob_flag *f = &knob_flags[i];
        if (!f->value) continue;
        duel_knob_value v;
        if (duel_knob_parse(f->knob, f->value, &v, NULL, &err))
            return cli_usage_error(&cmd, "%s: %s", f->flag, err.message);
        /* a string key takes the text as is; a number key the canonical JSON number */
        snprintf(flag_sets[i], sizeof flag_sets[i], "%s=%s", f->key, v.text);
        sets[n_sets++] = flag_sets[i];
    }

    json_t *root = NULL;
    duel_config_secrets secrets;
    if (duel_config_load(config, sets, n_sets, (const char *const *)environ, &root, &secrets, &err)) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        return n_sets > 0 && strncmp(err.message, "--set", 5) == 0 ? CLI_EXIT_USAGE
                                                                  : CLI_EXIT_FAILURE;
    }
    char source[4200];
    if (config) snprintf(source, sizeof source, "%s%s", config, n_user_sets ? " with --set" : "");
    else snprintf(source, sizeof source, "%s",
                  n_user_sets ? "the configuration with --set" : "the built-in configuration");
    gateway_config cfg;
    gateway_config_defaults(&cfg);
    backend_engine_config ecfg = {0};
    weight_transport_model_receiver *receiver = NULL; /* snapshots through a GPU transport */
    if (gateway_config_from_json(&cfg, root, source, &err) ||
        duel_knobs_defaults(root, source, &cfg.knobs, &err) ||
        engine_config_from_json(root, source, &cfg.knobs, &ecfg, &err)) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        json_decref(root);
        return CLI_EXIT_FAILURE;
    }
    cfg.tokens = secrets.tokens;
    /* Explicit flags win over the configuration. */
    if (redis && gateway_config_set_redis(&cfg, redis, &err)) {
        json_decref(root);
        return cli_usage_error(&cmd, "%s", err.message);
    }
    if (port_given) cfg.port = (int)port;
    if (bind) snprintf(cfg.bind, sizeof cfg.bind, "%s", bind);
    if (web_root) snprintf(cfg.web_root, sizeof cfg.web_root, "%s", web_root);
    if (spill) snprintf(cfg.spill_path, sizeof cfg.spill_path, "%s", spill);
    if (!cfg.spill_path[0] && snprintf(cfg.spill_path, sizeof cfg.spill_path, "%s/%s", data_dir,
                                       SERVE_SPILL_NAME) >= (int)sizeof cfg.spill_path) {
        json_decref(root);
        return cli_usage_error(&cmd, "--data-dir %s is too long", data_dir);
    }
    if (poll_given) cfg.snapshot_poll_ms = (int)snapshot_poll_ms;
    if (erm_path) ecfg.erm_path = erm_path[0] ? erm_path : NULL;
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
    if (!backend_name) backend_name = "engine";
    bool engine_backend = strcmp(backend_name, "engine") == 0;
    if (!rc && snapshots && !engine_backend)
        rc = cli_usage_error(&cmd, "--snapshots needs the engine backend (a model)");
    if (!rc && model_dir && !engine_backend)
        rc = cli_usage_error(&cmd, "--model is for the engine backend, not --backend %s", backend_name);
    cfg.snapshot_loader = engine_backend && !no_snapshots && (snapshots || redis);
    if (!rc && engine_backend) {
        const json_t *path = json_object_get(duel_config_section(root, "model"), "path");
        if (!model_dir && json_is_string(path) && json_string_length(path))
            model_dir = json_string_value(path);
        if (!model_dir) {
            rc = cli_usage_error(&cmd, "no model to serve: --model DIR or model.path (or --backend "
                                       "test for canned test answers)");
        } else {
            ecfg.model_dir = model_dir;
            ecfg.snapshots = cfg.snapshot_loader;
            if (ecfg.snapshots &&
                cli_snapshot_receiver_open(root, source, cfg.redis_host, cfg.redis_port,
                                           &receiver, &err)) {
                fprintf(stderr, "duel serve: %s\n", err.message);
                rc = CLI_EXIT_FAILURE;
            } else if (receiver) {
                ecfg.load_snapshot = cli_snapshot_receiver_load;
                ecfg.load_snapshot_ctx = receiver;
                ecfg.load_snapshot_via = cli_snapshot_receiver_via(receiver);
            }
            if (!rc && backend_engine_create(&ecfg, &backend, &err)) {
                fprintf(stderr, "duel serve: %s (serving model %s; --model DIR for another, "
                                "--backend test for canned test answers)\n",
                        err.message, model_dir);
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
    if (rc) {
        weight_transport_model_receiver_free(receiver);
        return rc;
    }
    /* The data folder, and the spill log's when --spill puts it elsewhere. */
    char spill_dir[sizeof cfg.spill_path];
    snprintf(spill_dir, sizeof spill_dir, "%s", cfg.spill_path);
    if (make_folders(data_dir, &err) || make_folders(dirname(spill_dir), &err)) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        if (backend.destroy) backend.destroy(backend.impl);
        weight_transport_model_receiver_free(receiver);
        return CLI_EXIT_FAILURE;
    }

    signal(SIGPIPE, SIG_IGN);
    gateway *gw = NULL;
    rc = gateway_create(&cfg, &backend, &gw, &err);
    /* the tokens are the gateway's now; no copy stays here */
    for (volatile char *p = secrets.tokens; p < secrets.tokens + sizeof secrets.tokens; p++) *p = 0;
    cfg.tokens = NULL;
    if (rc) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        weight_transport_model_receiver_free(receiver);
        return CLI_EXIT_FAILURE;
    }
    int fds[2];
    signal_waiter waiter = {.gw = gw};
    pthread_t thread;
    if (pipe2(fds, O_CLOEXEC)) {
        fprintf(stderr, "duel serve: pipe: %s\n", strerror(errno));
        gateway_destroy(gw);
        weight_transport_model_receiver_free(receiver);
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
        weight_transport_model_receiver_free(receiver);
        return CLI_EXIT_FAILURE;
    }
    printf("duel serve: listening on http://%s:%d/ (redis %s:%d, backend %s, snapshots %s, votes "
           "to %s, spill log %s)\n",
           cfg.bind, gateway_port(gw), cfg.redis_host, cfg.redis_port, backend_name,
           cfg.snapshot_loader ? "followed" : "off", gateway_vote_stream(gw), cfg.spill_path);
    if (!engine_backend)
        printf("duel serve: the test backend: canned answers, no model; their votes go to %s, "
               "which no trainer reads\n", gateway_vote_stream(gw));
    fflush(stdout);
    rc = gateway_run(gw, &err);
    unsigned char zero = 0;
    if (write(fds[1], &zero, 1) != 1) pthread_cancel(thread);
    pthread_join(thread, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    close(fds[0]);
    close(fds[1]);
    gateway_destroy(gw); /* the adapter first: it used the receiver */
    weight_transport_model_receiver_free(receiver);
    if (rc) {
        fprintf(stderr, "duel serve: %s\n", err.message);
        return CLI_EXIT_FAILURE;
    }
    fprintf(stderr, "duel serve: stopped cleanly\n");
    return CLI_EXIT_OK;
}

