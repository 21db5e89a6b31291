/* cmd_train_service.c: `duel train`, the asynchronous online trainer (DESIGN.md section 6): reads
 * votes from Redis (trainer/stream_consumer.h), updates the ERM and the policy
 * (trainer/online_trainer.h), checkpoints, publishes snapshots. Stops cleanly on SIGINT/SIGTERM
 * or after --idle-exit-ms without votes: a last checkpoint holds everything offered (a partial
 * batch included), then its entries are acknowledged.
 *
 * The JSON config (--config) is read here: the sections model, erm, trainer and redis with
 * strict keys (unknown keys are errors naming the path); other top-level sections belong to
 * other commands and are ignored. docs/TRAINER.md lists every key with its default. */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "json_util.h"
#include "online_trainer.h"
#include "stream_consumer.h"
#include "timer.h"
#include "weight_transport.h"

int cmd_train_service(int argc, char **argv);

typedef struct train_service_config {
    online_trainer_options trainer;
    stream_consumer_options consumer;
    char model_path[4096], model_id[256], erm_path[4096], host[256], consumer_name[128], loss[16];
    char transport[16];
    int transport_device, nccl_world_size;
} train_service_config;

static int check_keys(json_t *section, const char *name, const char *const *keys, const char *src,
                      duel_error *err) {
    const char *key;
    json_t *v;
    json_object_foreach(section, key, v) {
        int known = 0;
        for (int i = 0; keys[i]; i++) known |= strcmp(keys[i], key) == 0;
        if (!known) return duel_error_set(err, DUEL_EFORMAT, "%s: unknown key %s.%s", src, name, key);
    }
    return 0;
}

static int get_int_option(json_t *s, const char *key, long long lo, long long hi, int *out, const char *src,
                          duel_error *err) {
    long long v = *out;
    int rc = duel_json_get_int(s, key, lo, hi, &v, src, err);
    if (rc == 0) *out = (int)v;
    return rc;
}

static int load_config(const char *path, train_service_config *c, duel_error *err) {
    json_t *root = NULL;
    int rc = duel_json_load_file(path, 1 << 20, &root, err);
    if (rc) return rc;
    static const char *const model_keys[] = {"path", "id", NULL};
    static const char *const erm_keys[] = {"path", "num_heads", "hidden", "lr", "weight_decay", "lambda",
                                           "min_pairs", "buffer_size", "minibatch", "adam_steps", NULL};
    static const char *const trainer_keys[] = {"loss", "beta", "batch_size", "lr", "min_lr", "warmup_steps",
                                               "total_steps", "clip_norm", "weight_decay", "publish_every",
                                               "max_deliveries", "seed", "consumer", "recent_vote_ids", "burn_in",
                                               "gamma", "synthetic_store", "checkpoint_every",
                                               "publish_every_seconds", "weight_transport", "transport_device",
                                               "nccl_world_size", NULL};
    static const char *const redis_keys[] = {"host", "port", NULL};
    json_t *model = json_object_get(root, "model"), *erm = json_object_get(root, "erm");
    json_t *tr = json_object_get(root, "trainer"), *redis = json_object_get(root, "redis");
    if (!json_is_object(root)) rc = duel_error_set(err, DUEL_EFORMAT, "%s: not a JSON object", path);
    if (rc == 0 && model) {
        if ((rc = check_keys(model, "model", model_keys, path, err)) == 0 &&
            (rc = duel_json_get_string(model, "path", c->model_path, sizeof c->model_path, path, err)) == 0)
            rc = duel_json_get_string(model, "id", c->model_id, sizeof c->model_id, path, err);
    }
    if (rc == 0 && erm) {
        erm_train_options *e = &c->trainer.erm;
        if ((rc = check_keys(erm, "erm", erm_keys, path, err)) == 0 &&
            (rc = duel_json_get_string(erm, "path", c->erm_path, sizeof c->erm_path, path, err)) == 0 &&
            (rc = get_int_option(erm, "num_heads", 1, ERM_MAX_NUM_HEADS, &c->trainer.erm_heads, path, err)) == 0 &&
            (rc = get_int_option(erm, "hidden", 1, ERM_MAX_HIDDEN, &c->trainer.erm_hidden, path, err)) == 0 &&
            (rc = duel_json_get_double(erm, "lr", &e->lr, path, err)) == 0 &&
            (rc = duel_json_get_double(erm, "weight_decay", &e->weight_decay, path, err)) == 0 &&
            (rc = duel_json_get_double(erm, "lambda", &e->lambda, path, err)) == 0 &&
            (rc = get_int_option(erm, "min_pairs", 1, ERM_TRAIN_MAX_BUFFER, &e->min_pairs, path, err)) == 0 &&
            (rc = get_int_option(erm, "buffer_size", 1, ERM_TRAIN_MAX_BUFFER, &e->buffer_capacity, path, err)) == 0 &&
            (rc = get_int_option(erm, "minibatch", 1, ERM_TRAIN_MAX_MINIBATCH, &e->minibatch, path, err)) == 0)
            rc = get_int_option(erm, "adam_steps", 1, 1000, &e->adam_steps, path, err);
    }
    if (rc == 0 && tr) {
        online_trainer_options *o = &c->trainer;
        long long warmup = o->warmup_steps, total = o->total_steps, seed = (long long)o->seed;
        long long burn_in = o->burn_in;
        if ((rc = check_keys(tr, "trainer", trainer_keys, path, err)) == 0 &&
            (rc = duel_json_get_string(tr, "loss", c->loss, sizeof c->loss, path, err)) == 0 && c->loss[0] &&
            (rc = dap_loss_kind_parse(c->loss, &o->loss.kind, err)) == 0)
            dap_loss_default_options(o->loss.kind, &o->loss);
        double beta = NAN;
        if (rc == 0 && (rc = duel_json_get_double(tr, "beta", &beta, path, err)) == 0 && !isnan(beta))
            o->loss.beta = beta;
        if (rc == 0 && (rc = get_int_option(tr, "batch_size", 1, ONLINE_MAX_BATCH, &o->batch_size, path, err)) == 0 &&
            (rc = duel_json_get_double(tr, "lr", &o->lr, path, err)) == 0 &&
            (rc = duel_json_get_double(tr, "min_lr", &o->min_lr, path, err)) == 0 &&
            (rc = duel_json_get_int(tr, "warmup_steps", 0, 1LL << 40, &warmup, path, err)) == 0 &&
            (rc = duel_json_get_int(tr, "total_steps", 1, 1LL << 40, &total, path, err)) == 0 &&
            (rc = duel_json_get_double(tr, "clip_norm", &o->clip_norm, path, err)) == 0 &&
            (rc = duel_json_get_double(tr, "weight_decay", &o->adamw.weight_decay, path, err)) == 0 &&
            (rc = get_int_option(tr, "publish_every", 0, 1 << 30, &o->publish_every, path, err)) == 0 &&
            (rc = get_int_option(tr, "max_deliveries", 1, 1 << 30, &c->consumer.max_deliveries, path, err)) == 0 &&
            (rc = duel_json_get_int(tr, "seed", 0, 1LL << 62, &seed, path, err)) == 0 &&
            (rc = duel_json_get_string(tr, "consumer", c->consumer_name, sizeof c->consumer_name, path, err)) == 0)
            rc = get_int_option(tr, "recent_vote_ids", 1, 1000000, &o->recent_vote_ids, path, err);
        if (rc == 0 && (rc = duel_json_get_int(tr, "burn_in", 0, 1LL << 40, &burn_in, path, err)) == 0 &&
            (rc = duel_json_get_double(tr, "gamma", &o->gamma, path, err)) == 0 &&
            (rc = get_int_option(tr, "synthetic_store", 1, ONLINE_MAX_STORE, &o->synthetic_store, path, err)) == 0 &&
            (rc = get_int_option(tr, "checkpoint_every", 1, 1 << 30, &o->checkpoint_every, path, err)) == 0 &&
            (rc = duel_json_get_double(tr, "publish_every_seconds", &o->publish_every_seconds, path, err)) == 0 &&
            !(o->gamma > 0 && o->gamma <= 1))
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: trainer.gamma must be in (0, 1]", path);
        if (rc == 0 &&
            (rc = duel_json_get_string(tr, "weight_transport", c->transport, sizeof c->transport, path, err)) == 0 &&
            (rc = get_int_option(tr, "transport_device", 0, 1 << 20, &c->transport_device, path, err)) == 0)
            rc = get_int_option(tr, "nccl_world_size", 2, 1 << 20, &c->nccl_world_size, path, err);
        weight_transport_kind kind;
        if (rc == 0 && weight_transport_kind_parse(c->transport, &kind, NULL) != 0)
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: trainer.weight_transport '%s' is not file, cuda_ipc or nccl",
                                path, c->transport);
        if (rc == 0 && !(o->publish_every_seconds >= 0 && isfinite(o->publish_every_seconds)))
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: trainer.publish_every_seconds must be >= 0", path);
        o->burn_in = burn_in;
        o->warmup_steps = warmup;
        o->total_steps = total;
        o->seed = (uint64_t)seed;
    }
    if (rc == 0 && redis) {
        if ((rc = check_keys(redis, "redis", redis_keys, path, err)) == 0 &&
            (rc = duel_json_get_string(redis, "host", c->host, sizeof c->host, path, err)) == 0)
            rc = get_int_option(redis, "port", 1, 65535, &c->consumer.port, path, err);
    }
    json_decref(root);
    return rc;
}

static void log_line(void *context, const char *line) {
    (void)context;
    fprintf(stderr, "duel train: %s\n", line);
}

static volatile sig_atomic_t g_stop; /* main's only mutable global: set by the signal handler */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

int cmd_train_service(int argc, char **argv) {
    const char *redis = NULL, *config_path = NULL, *data_dir = "data", *model = NULL;
    long long idle_exit_ms = 0;
    bool quiet = false;
    const cli_option options[] = {
        {"--redis", CLI_OPT_STRING, &redis, "HOST:PORT", "Redis address (default: config redis.*, else "
         "127.0.0.1:6379)", 0, 0, false, NULL},
        {"--config", CLI_OPT_STRING, &config_path, "FILE", "JSON config: sections model, erm, trainer, redis",
         0, 0, false, NULL},
        {"--data-dir", CLI_OPT_STRING, &data_dir, "DIR", "checkpoint and snapshots/ (default ./data)", 0, 0,
         false, NULL},
        {"--model", CLI_OPT_STRING, &model, "DIR", "initial policy (HF folder); overrides model.path", 0, 0,
         false, NULL},
        {"--idle-exit-ms", CLI_OPT_INT, &idle_exit_ms, "MS", "exit after MS without new votes (default 0: "
         "run until SIGINT/SIGTERM)", 0, 1e9, false, NULL},
        {"--quiet", CLI_OPT_FLAG, &quiet, NULL, "no per-update log lines", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "train", "[--redis HOST:PORT] [--config FILE] [--data-dir DIR] [options]",
        "The online trainer: reads votes from the Redis stream duel:prefs (consumer group trainers),\n"
        "updates the ERM ensemble and the policy (DPO/IPO/SLiC/SimPO) per batch of trainer.batch_size\n"
        "real pairs, plus ERM-labelled synthetic pairs (SEA mixture, fraction 1-trainer.gamma) once\n"
        "trainer.burn_in pairs are applied. Checkpoints into DIR/trainer every\n"
        "trainer.checkpoint_every updates (and after each snapshot, when idle and at exit);\n"
        "votes are acknowledged only once a checkpoint holds them. Publishes snapshots into\n"
        "DIR/snapshots every trainer.publish_every updates or trainer.publish_every_seconds.\n"
        "Live knobs are read from the hash duel:knobs before every batch (loss, beta, gamma,\n"
        "lr_scale, clip_norm, batch_size, burn_in, publish_every, publish_every_seconds,\n"
        "checkpoint_every; bad ones are logged and ignored). trainer.weight_transport (file,\n"
        "cuda_ipc, nccl) also sends each snapshot's weights to GPU servers. Status goes to the hash\n"
        "duel:trainer:status. Config keys: docs/TRAINER.md.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    train_service_config *c = calloc(1, sizeof *c);
    if (!c) return CLI_EXIT_FAILURE;
    online_trainer_default_options(&c->trainer);
    stream_consumer_default_options(&c->consumer);
    snprintf(c->transport, sizeof c->transport, "file");
    c->nccl_world_size = 2;
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    duel_error err = {0};
    if (config_path && load_config(config_path, c, &err) != 0) {
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
    if (!c->model_path[0]) {
        free(c);
        return cli_usage_error(&cmd, "no model: give --model DIR or model.path in the config");
    }
    c->trainer.model_dir = c->model_path;
    c->trainer.model_id = c->model_id;
    c->trainer.erm_path = c->erm_path[0] ? c->erm_path : NULL;
    c->consumer.host = c->host;
    if (c->consumer_name[0]) c->consumer.consumer = c->consumer_name;
    c->consumer.data_dir = data_dir;
    c->consumer.tokenizer_dir = c->model_path;
    c->consumer.base_model = c->model_path;
    c->consumer.log = log_line;
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
        wo.device = c->transport_device;
        wo.rank = 0;
        wo.world_size = c->nccl_world_size;
        wo.num_params = train_model_num_parameters(online_trainer_policy(trainer));
        rc = weight_transport_open(&wo, &transport, &err);
        c->consumer.transport = transport;
    }
    if (rc == 0) rc = stream_consumer_open(&c->consumer, trainer, &consumer, &err);
    if (rc == 0) {
        online_trainer_status s;
        online_trainer_get_status(trainer, &s);
        if (!quiet)
            fprintf(stderr, "duel train: redis %s:%d, step %lld, %lld prefs applied, last applied id '%s'\n",
                    c->host, c->consumer.port, (long long)s.step, (long long)s.prefs_applied, s.last_applied_id);
        int64_t last_step = s.step;
        double idle_since = duel_time_seconds();
        while (!g_stop) {
            int n = 0;
            if ((rc = stream_consumer_poll(consumer, &n, &err)) != 0) break;
            online_trainer_get_status(trainer, &s);
            if (s.step != last_step && !quiet) {
                fprintf(stderr, "step %lld  prefs %lld  loss %.4f  margin %.4f  kl %.4f  lr %.2e  |g| %.2f  "
                        "erm loss %.4f  erm acc %.3f  synthetic %d  snapshot %lld\n", (long long)s.step,
                        (long long)s.prefs_applied, s.loss, s.margin, s.kl, s.lr, s.grad_norm, s.erm_loss,
                        s.erm_accuracy, s.synthetic, (long long)s.published_version);
            }
            last_step = s.step;
            if (n > 0) idle_since = duel_time_seconds();
            else if (idle_exit_ms > 0 && (duel_time_seconds() - idle_since) * 1000.0 >= (double)idle_exit_ms)
                break;
        }
        if (rc == 0) rc = stream_consumer_flush(consumer, &err);
    }
    if (rc != 0) fprintf(stderr, "duel train: %s\n", err.message);
    stream_consumer_close(consumer);
    weight_transport_close(transport);
    online_trainer_close(trainer);
    free(c);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}
