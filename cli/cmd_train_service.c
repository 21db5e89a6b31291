/* cmd_train_service.c: `duel train`, the asynchronous online trainer (DESIGN.md section 6): reads
 * votes from Redis (trainer/stream_consumer.h), updates the ERM and the policy
 * (trainer/online_trainer.h), checkpoints, publishes snapshots; the loop is stream_consumer_run.
 * Stops cleanly on SIGINT/SIGTERM or after --idle-exit-ms without votes: a last checkpoint
 * holds everything offered (a partial batch included), then its entries are acknowledged. When
 * Redis goes away it checkpoints, reconnects with backoff and resumes (logged on stderr).
 *
 * The configuration comes from duel_config_load (common/config.h: the built-in
 * config/default.json, --config FILE, DUEL_* variables, --set overrides; strict, unknown keys
 * and wrong types name their dotted path); cli/trainer_config.c reads its sections model, erm,
 * trainer and redis with every key range-checked (the keys behind live knobs by the knob table,
 * common/knobs.h). docs/CONFIG.md and docs/TRAINER.md list the keys. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "trainer_config.h"
#include "config.h"
#include "json_util.h"
#include "metrics_http.h"
#include "online_trainer.h"
#include "stream_consumer.h"
#include "trainer_metrics.h"
#include "weight_transport.h"

int cmd_train_service(int argc, char **argv);

extern char **environ;

static void log_line(void *context, const char *line) {
    (void)context;
    fprintf(stderr, "duel train: %s\n", line);
}

static volatile sig_atomic_t g_stop; /* main's only mutable global: set by the signal handler */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

/* What the log shows after each round: a line per update, and the outcome of the check of the
 * votes' reference log-probabilities. */
typedef struct round_log {
    online_trainer *trainer;
    bool quiet;
    int64_t last_step;
    int ref_check;
    stream_consumer *consumer;
    /* --metrics: the text the metrics thread serves, replaced after every round */
    pthread_mutex_t metrics_mu;
    char *metrics_text;
    size_t metrics_len;
} round_log;

/* The metrics thread's render callback: a copy of the last round's text. */
static char *render_metrics(void *context, size_t *len) {
    round_log *l = context;
    pthread_mutex_lock(&l->metrics_mu);
    char *copy = l->metrics_text ? malloc(l->metrics_len + 1) : NULL;
    if (copy) memcpy(copy, l->metrics_text, l->metrics_len + 1);
    *len = copy ? l->metrics_len : 0;
    pthread_mutex_unlock(&l->metrics_mu);
    return copy;
}

static void update_metrics(round_log *l, const online_trainer_status *s) {
    stats_trainer f;
    stream_consumer_stats cs;
    stream_consumer_get_figures(l->consumer, &f);
    stream_consumer_get_stats(l->consumer, &cs);
    size_t len = 0;
    char *text = trainer_metrics_render(&f, s, &cs, &len);
    if (!text) return;
    pthread_mutex_lock(&l->metrics_mu);
    free(l->metrics_text);
    l->metrics_text = text;
    l->metrics_len = len;
    pthread_mutex_unlock(&l->metrics_mu);
}

static void after_round(void *context) {
    round_log *l = context;
    online_trainer_status s;
    online_trainer_get_status(l->trainer, &s);
    update_metrics(l, &s);
    if (s.step != l->last_step && !l->quiet) {
        fprintf(stderr, "step %lld  prefs %lld  loss %.4f  margin %.4f  kl %.4f  lr %.2e  |g| %.2f  "
                "erm loss %.4f  erm acc %.3f  synthetic %d  snapshot %lld\n", (long long)s.step,
                (long long)s.prefs_applied, s.loss, s.margin, s.kl, s.lr, s.grad_norm, s.erm_loss,
                s.erm_accuracy, s.synthetic, (long long)s.published_version);
    }
    l->last_step = s.step;
    if (s.vote_ref_check != l->ref_check) {
        /* the first update whose votes carried the servers' reference log-probabilities */
        if (s.vote_ref_check < 0)
            fprintf(stderr, "duel train: warning: the votes' reference log-probabilities differ from this "
                    "trainer's reference model by up to %.3g nats (are the servers' base model and "
                    "model.path the same?); running the reference model here instead\n",
                    s.vote_ref_error);
        else if (!l->quiet)
            fprintf(stderr, "duel train: the votes' reference log-probabilities agree with this trainer's "
                    "(largest difference %.2g nats); using them\n", s.vote_ref_error);
        l->ref_check = s.vote_ref_check;
    }
}

int cmd_train_service(int argc, char **argv) {
    const char *redis = NULL, *config_path = NULL, *data_dir = "duel-data", *model = NULL;
    const char *set_doc = NULL; /* --set never reaches cli_parse (duel_config_take_sets); listed for --help */
    const char *metrics = NULL;
    long long idle_exit_ms = 0;
    bool quiet = false;
    const cli_option options[] = {
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT", "Redis address (default: redis.host:redis.port of "
         "the configuration, 127.0.0.1:6379)", 0, 0, false, NULL},
        {"--config", CLI_OPT_STRING, &config_path, "FILE", "JSON configuration (docs/CONFIG.md; default: the "
         "built-in config/default.json values); this command reads model, erm, trainer, redis", 0, 0, false,
         NULL},
        {"--set", CLI_OPT_STRING, &set_doc, "SECTION.KEY=VALUE", "override one configuration key, repeatable, "
         "applied in order after --config and DUEL_* (e.g. --set trainer.lr=2e-4)", 0, 0, false, NULL},
        {"--data-dir", CLI_OPT_STRING, &data_dir, "DIR", "the data folder: trainer/ (checkpoint) and snapshots/ (default ./duel-data, "
         "the folder `duel serve` uses too)", 0, 0,
         false, NULL},
        {"--model", CLI_OPT_STRING, &model, "DIR", "initial policy (HF folder); overrides model.path (default "
         "models/default)", 0, 0, false, NULL},
        {"--idle-exit-ms", CLI_OPT_INT, &idle_exit_ms, "MS", "exit after MS without new votes (default 0: "
         "run until SIGINT/SIGTERM)", 0, 1e9, false, NULL},
        {"--quiet", CLI_OPT_FLAG, &quiet, NULL, "no per-update log lines", 0, 0, false, NULL},
        {"--metrics", CLI_OPT_STRING, &metrics, "HOST:PORT", "serve Prometheus /metrics there (default "
         "trainer.metrics_listen, \"\": off; port 0 picks a free one, printed at start)", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "train", "[--redis HOST:PORT] [--config FILE] [--set SECTION.KEY=VALUE]... [--data-dir DIR] [options]",
        "The online trainer: reads votes from the Redis stream duel:prefs (consumer group trainers),\n"
        "updates the ERM ensemble and the policy (DPO/IPO/SLiC/SimPO) per batch of trainer.batch_size\n"
        "real pairs (up to trainer.max_batch_size while it is behind the stream), plus ERM-labelled\n"
        "synthetic pairs (SEA mixture, fraction 1-trainer.gamma) once\n"
        "trainer.burn_in pairs are applied. The reference's log-probabilities come with the votes\n"
        "where the servers wrote them (trainer.vote_ref_logprobs); otherwise the trainer runs its\n"
        "own copy of the reference model. Checkpoints into DIR/trainer every\n"
        "trainer.checkpoint_every updates (and when idle and at exit); votes are acknowledged\n"
        "only once a checkpoint holds them. Publishes snapshots into DIR/snapshots every\n"
        "trainer.publish_every updates or trainer.publish_every_seconds, and as soon as it has\n"
        "caught up with the stream (trainer.publish_when_idle); keeps the newest\n"
        "trainer.keep_snapshots of them (plus those duel:rollout pins) and deletes older ones.\n"
        "When Redis goes away (a restart, a lost connection) the trainer checkpoints, reconnects\n"
        "with a growing pause (up to 5 s), logs it, and resumes from that checkpoint.\n"
        "Live knobs are read from the hash duel:knobs before every batch (loss, beta, gamma,\n"
        "lr_scale, clip_norm, batch_size, burn_in, publish_every, publish_every_seconds,\n"
        "checkpoint_every; bad ones are logged and ignored). trainer.weight_transport (file,\n"
        "cuda_ipc, nccl) also sends each snapshot's weights to GPU servers. Status goes to the hash\n"
        "duel:trainer:status, figures for the dashboard to the stream duel:stats every\n"
        "trainer.stats_interval_ms (docs/OPERATIONS.md), and with --metrics to Prometheus.\n"
        "Configuration (docs/CONFIG.md): the built-in defaults (config/default.json), then --config\n"
        "FILE (strict: an unknown key or a wrong type is an error naming its dotted path), then\n"
        "DUEL_REDIS=HOST:PORT, then each --set in order; --redis and --model win over all of them.\n"
        "Without --model and model.path the policy is models/default (relative to the working\n"
        "directory).",
        options, sizeof options / sizeof options[0]};
    const char *sets[64];
    size_t n_sets = 0;
    duel_error err = {0};
    int rc = cli_parse_with_sets(&cmd, argc, argv, sets, 64, &n_sets);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    json_t *root = NULL;
    if (duel_config_load(config_path, sets, n_sets, (const char *const *)environ, &root, NULL, &err)) {
        fprintf(stderr, "duel train: %s\n", err.message);
        return n_sets > 0 && strncmp(err.message, "--set", 5) == 0 ? CLI_EXIT_USAGE : CLI_EXIT_FAILURE;
    }
    trainer_config *c = calloc(1, sizeof *c);
    if (!c) {
        json_decref(root);
        return CLI_EXIT_FAILURE;
    }
    rc = trainer_config_load(root, config_path, sets, n_sets, c, &err);
    json_decref(root);
    if (rc) {
        fprintf(stderr, "duel train: %s\n", err.message);
        free(c);
        return CLI_EXIT_FAILURE;
    }
    if (redis) {
        const char *colon = strrchr(redis, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == redis || (size_t)(colon - redis) >= sizeof c->host || !end || *end || port < 1 ||
            port > 65535) {
            free(c);
            return cli_usage_error(&cmd, "--redis wants HOST:PORT, got '%s'", redis);
        }
        snprintf(c->host, sizeof c->host, "%.*s", (int)(colon - redis), redis);
        c->consumer.port = (int)port;
    }
    if (model) snprintf(c->model_path, sizeof c->model_path, "%s", model);
    if (metrics) snprintf(c->metrics_listen, sizeof c->metrics_listen, "%s", metrics);
    if (!c->model_path[0]) {
        free(c);
        return cli_usage_error(&cmd, "no model: give --model DIR or model.path in the config");
    }
    c->trainer.model_dir = c->model_path;
    c->trainer.model_id = c->model_id;
    c->trainer.erm_path = c->erm_path[0] ? c->erm_path : NULL;
    c->consumer.host = c->host;
    c->consumer.link = &c->redis_link;
    if (c->consumer_name[0]) c->consumer.consumer = c->consumer_name;
    c->consumer.data_dir = data_dir;
    c->consumer.tokenizer_dir = c->model_path;
    c->consumer.base_model = c->model_path;
    c->consumer.log = log_line;
    c->consumer.wait_for_redis = true; /* may start before its Redis (systemd, ops/up): run connects */
    online_trainer *trainer = NULL;
    stream_consumer *consumer = NULL;
    weight_transport *transport = NULL;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    rc = online_trainer_open(&c->trainer, data_dir, &trainer, &err);
    if (rc == 0 && strcmp(c->transport, "file") != 0) { /* file: the snapshot folder alone */
        weight_transport_options wo;
        weight_transport_default_options(&wo);
        weight_transport_kind_parse(c->transport, &wo.kind, NULL);
        wo.data_dir = data_dir;
        wo.redis_host = c->host;
        wo.redis_port = c->consumer.port;
        wo.link = &c->redis_link;
        wo.device = c->transport_device;
        wo.rank = 0;
        wo.world_size = c->nccl_world_size;
        wo.num_params = train_model_num_parameters(online_trainer_policy(trainer));
        rc = weight_transport_open(&wo, &transport, &err);
        c->consumer.transport = transport;
    }
    if (rc == 0) rc = stream_consumer_open(&c->consumer, trainer, &consumer, &err);
    round_log rl = {.trainer = trainer, .quiet = quiet, .consumer = consumer};
    pthread_mutex_init(&rl.metrics_mu, NULL);
    metrics_http *metrics_server = NULL;
    if (rc == 0 && c->metrics_listen[0]) {
        char host[256];
        long port = 0;
        online_trainer_status s;
        online_trainer_get_status(trainer, &s);
        update_metrics(&rl, &s);
        if ((rc = duel_config_parse_host_port("trainer.metrics_listen", c->metrics_listen, 0, host, sizeof host,
                                              &port, &err)) == 0 &&
            (rc = metrics_http_start(host, (int)port, render_metrics, &rl, &metrics_server, &err)) == 0)
            fprintf(stderr, "duel train: metrics on http://%s:%d/metrics\n", host,
                    metrics_http_port(metrics_server));
    }
    if (rc == 0) {
        online_trainer_status s;
        online_trainer_get_status(trainer, &s);
        if (!quiet)
            fprintf(stderr, "duel train: redis %s:%d, step %lld, %lld prefs applied, last applied id '%s'\n",
                    c->host, c->consumer.port, (long long)s.step, (long long)s.prefs_applied, s.last_applied_id);
        rl.last_step = s.step;
        rl.ref_check = s.vote_ref_check;
        stream_consumer_run_options run = {.stop = &g_stop, .idle_exit_ms = (int)idle_exit_ms,
                                           .after_round = after_round, .context = &rl};
        rc = stream_consumer_run(consumer, &run, &err);
    }
    if (rc != 0) fprintf(stderr, "duel train: %s\n", err.message);
    metrics_http_stop(metrics_server);
    free(rl.metrics_text);
    pthread_mutex_destroy(&rl.metrics_mu);
    stream_consumer_close(consumer);
    weight_transport_close(transport);
    online_trainer_close(trainer);
    free(c);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}

