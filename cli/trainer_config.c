/* trainer_config.c: the trainer's sections of the configuration (trainer_config.h); the keys
 * behind live knobs are checked by the knob table (common/knobs.h). */
#include "trainer_config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "json_util.h"
#include "knobs.h"
#include "weight_transport.h"

/* One section of the loaded configuration; messages name the dotted path
 * ("SOURCE: trainer.batch_size = 0 is outside [1, 4096]"). */
typedef struct section_reader {
    json_t *sec;
    const char *name, *source;
    duel_error *err;
} section_reader;

static int check_keys(const section_reader *r, const char *const *keys) {
    const char *key;
    json_t *v;
    json_object_foreach(r->sec, key, v) {
        int known = 0;
        for (int i = 0; keys[i]; i++) known |= strcmp(keys[i], key) == 0;
        if (!known)
            return duel_error_set(r->err, DUEL_EFORMAT, "%s: unknown key %s.%s", r->source, r->name, key);
    }
    return 0;
}

/* Absent keys leave *out as it is (the document from duel_config_load has every key). */
static int get_ll(const section_reader *r, const char *key, long long lo, long long hi, long long *out) {
    json_t *v = json_object_get(r->sec, key);
    if (!v) return 0;
    if (!json_is_integer(v))
        return duel_error_set(r->err, DUEL_EFORMAT, "%s: %s.%s must be an integer", r->source, r->name, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return duel_error_set(r->err, DUEL_EFORMAT, "%s: %s.%s = %lld is outside [%lld, %lld]", r->source,
                              r->name, key, x, lo, hi);
    *out = x;
    return 0;
}

static int get_int(const section_reader *r, const char *key, long long lo, long long hi, int *out) {
    long long v = *out;
    int rc = get_ll(r, key, lo, hi, &v);
    if (rc == 0) *out = (int)v;
    return rc;
}

/* A finite number; lo_open: lo itself is refused. */
static int get_double(const section_reader *r, const char *key, double lo, bool lo_open, double hi, double *out) {
    json_t *v = json_object_get(r->sec, key);
    if (!v) return 0;
    if (!json_is_number(v))
        return duel_error_set(r->err, DUEL_EFORMAT, "%s: %s.%s must be a number", r->source, r->name, key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
        return duel_error_set(r->err, DUEL_EFORMAT, "%s: %s.%s = %g is outside %c%g, %g]", r->source, r->name,
                              key, x, lo_open ? '(' : '[', lo, hi);
    *out = x;
    return 0;
}

static int get_bool(const section_reader *r, const char *key, bool *out) {
    json_t *v = json_object_get(r->sec, key);
    if (!v) return 0;
    if (!json_is_boolean(v))
        return duel_error_set(r->err, DUEL_EFORMAT, "%s: %s.%s must be true or false", r->source, r->name, key);
    *out = json_is_true(v);
    return 0;
}

/* A config key behind a live knob: the knob table's type and range (common/knobs.h), so the config
 * and duel:knobs accept the same values. */
static int get_knob(const section_reader *r, json_t *root, const char *knob, double *out) {
    duel_knob_value v;
    int rc = duel_knob_config_value(root, knob, r->source, &v, r->err);
    if (rc == 0) *out = v.number;
    return rc;
}

static int get_knob_int(const section_reader *r, json_t *root, const char *knob, int *out) {
    double v = 0;
    int rc = get_knob(r, root, knob, &v);
    if (rc == 0) *out = (int)v;
    return rc;
}

static int get_string(const section_reader *r, const char *key, char *out, size_t cap) {
    json_t *v = json_object_get(r->sec, key);
    if (!v) return 0;
    if (!json_is_string(v))
        return duel_error_set(r->err, DUEL_EFORMAT, "%s: %s.%s must be a string", r->source, r->name, key);
    if (json_string_length(v) >= cap)
        return duel_error_set(r->err, DUEL_ELIMIT, "%s: %s.%s is longer than %zu bytes", r->source, r->name,
                              key, cap - 1);
    snprintf(out, cap, "%s", json_string_value(v));
    return 0;
}

/* Reads the sections model, erm, trainer and redis of root (the document duel_config_load
 * assembled; source names it in messages) into c, with every key range-checked. beta_given:
 * trainer.beta was set explicitly (file or --set); otherwise a non-default trainer.loss takes
 * that loss's own beta. */
static int load_sections(json_t *root, const char *source, bool beta_given, trainer_config *c,
                         duel_error *err) {
    static const char *const model_keys[] = {"path", "id", NULL};
    static const char *const erm_keys[] = {"path", "num_heads", "hidden", "lr", "weight_decay", "lambda",
                                           "min_pairs", "buffer_size", "minibatch", "adam_steps", NULL};
    static const char *const trainer_keys[] = {"loss", "beta", "batch_size", "max_batch_size", "lr", "min_lr", "warmup_steps",
                                               "total_steps", "clip_norm", "weight_decay", "publish_every",
                                               "max_deliveries", "seed", "consumer", "recent_vote_ids", "burn_in",
                                               "gamma", "synthetic_store", "checkpoint_every",
                                               "publish_every_seconds", "publish_when_idle", "vote_ref_logprobs", "keep_snapshots",
                                               "weight_transport", "transport_device", "nccl_world_size",
                                               "stats_interval_ms", "metrics_listen", NULL};
    static const char *const redis_keys[] = {"host", "port", "stats_max_entries", "sentinels", "master_name",
                                             "ack_replicas", "ack_timeout_ms", NULL};
    if (!json_is_object(root)) return duel_error_set(err, DUEL_EFORMAT, "%s: not a JSON object", source);
    int rc = 0;
    const double big = 1e30;
    section_reader m = {json_object_get(root, "model"), "model", source, err};
    if (m.sec && (rc = check_keys(&m, model_keys)) == 0 &&
        (rc = get_string(&m, "path", c->model_path, sizeof c->model_path)) == 0)
        rc = get_string(&m, "id", c->model_id, sizeof c->model_id);
    section_reader r = {json_object_get(root, "erm"), "erm", source, err};
    if (rc == 0 && r.sec) {
        erm_train_options *e = &c->trainer.erm;
        if ((rc = check_keys(&r, erm_keys)) == 0 && (rc = get_string(&r, "path", c->erm_path, sizeof c->erm_path)) == 0 &&
            (rc = get_int(&r, "num_heads", 1, ERM_MAX_NUM_HEADS, &c->trainer.erm_heads)) == 0 &&
            (rc = get_int(&r, "hidden", 1, ERM_MAX_HIDDEN, &c->trainer.erm_hidden)) == 0 &&
            (rc = get_double(&r, "lr", 0, false, big, &e->lr)) == 0 &&
            (rc = get_double(&r, "weight_decay", 0, false, big, &e->weight_decay)) == 0 &&
            (rc = get_double(&r, "lambda", 0, false, big, &e->lambda)) == 0 &&
            (rc = get_int(&r, "min_pairs", 1, ERM_TRAIN_MAX_BUFFER, &e->min_pairs)) == 0 &&
            (rc = get_int(&r, "buffer_size", 1, ERM_TRAIN_MAX_BUFFER, &e->buffer_capacity)) == 0 &&
            (rc = get_int(&r, "minibatch", 1, ERM_TRAIN_MAX_MINIBATCH, &e->minibatch)) == 0)
            rc = get_int(&r, "adam_steps", 1, 1000, &e->adam_steps);
    }
    section_reader t = {json_object_get(root, "trainer"), "trainer", source, err};
    if (rc == 0 && t.sec) {
        online_trainer_options *o = &c->trainer;
        long long warmup = o->warmup_steps, total = o->total_steps, seed = (long long)o->seed;
        double burn_in = (double)o->burn_in;
        double beta = o->loss.beta;
        duel_knob_value loss;
        if ((rc = check_keys(&t, trainer_keys)) == 0 &&
            (rc = duel_knob_config_value(root, "loss", source, &loss, err)) == 0 &&
            (rc = dap_loss_kind_parse(loss.text, &o->loss.kind, err)) == 0)
            dap_loss_default_options(o->loss.kind, &o->loss); /* that loss's beta ... */
        if (rc == 0 && (rc = get_knob(&t, root, "beta", &beta)) == 0 && beta_given)
            o->loss.beta = beta; /* ... unless one is given */
        if (rc == 0 && (rc = get_knob_int(&t, root, "batch_size", &o->batch_size)) == 0 &&
            (rc = get_int(&t, "max_batch_size", 1, ONLINE_MAX_BATCH, &o->max_batch_size)) == 0 &&
            (rc = get_double(&t, "lr", 0, false, big, &o->lr)) == 0 &&
            (rc = get_double(&t, "min_lr", 0, false, big, &o->min_lr)) == 0 &&
            (rc = get_ll(&t, "warmup_steps", 0, 1LL << 40, &warmup)) == 0 &&
            (rc = get_ll(&t, "total_steps", 1, 1LL << 40, &total)) == 0 &&
            (rc = get_knob(&t, root, "clip_norm", &o->clip_norm)) == 0 &&
            (rc = get_double(&t, "weight_decay", 0, false, big, &o->adamw.weight_decay)) == 0 &&
            (rc = get_knob_int(&t, root, "publish_every", &o->publish_every)) == 0 &&
            (rc = get_int(&t, "max_deliveries", 1, 1 << 30, &c->consumer.max_deliveries)) == 0 &&
            (rc = get_ll(&t, "seed", 0, 1LL << 62, &seed)) == 0 &&
            (rc = get_string(&t, "consumer", c->consumer_name, sizeof c->consumer_name)) == 0 &&
            (rc = get_int(&t, "recent_vote_ids", 1, 1000000, &o->recent_vote_ids)) == 0 &&
            (rc = get_knob(&t, root, "burn_in", &burn_in)) == 0 &&
            (rc = get_knob(&t, root, "gamma", &o->gamma)) == 0 &&
            (rc = get_int(&t, "synthetic_store", 1, ONLINE_MAX_STORE, &o->synthetic_store)) == 0 &&
            (rc = get_knob_int(&t, root, "checkpoint_every", &o->checkpoint_every)) == 0 &&
            (rc = get_knob(&t, root, "publish_every_seconds", &o->publish_every_seconds)) == 0 &&
            (rc = get_bool(&t, "publish_when_idle", &o->publish_when_idle)) == 0 &&
            (rc = get_bool(&t, "vote_ref_logprobs", &o->vote_ref_logprobs)) == 0 &&
            (rc = get_int(&t, "keep_snapshots", 0, 1000000, &o->keep_snapshots)) == 0 &&
            (rc = get_string(&t, "weight_transport", c->transport, sizeof c->transport)) == 0 &&
            (rc = get_int(&t, "transport_device", 0, 1 << 20, &c->transport_device)) == 0 &&
            (rc = get_int(&t, "nccl_world_size", 2, 1 << 20, &c->nccl_world_size)) == 0 &&
            (rc = get_int(&t, "stats_interval_ms", 0, 3600 * 1000, &c->consumer.stats_interval_ms)) == 0)
            rc = get_string(&t, "metrics_listen", c->metrics_listen, sizeof c->metrics_listen);
        weight_transport_kind kind;
        if (rc == 0 && weight_transport_kind_parse(c->transport, &kind, NULL) != 0)
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: trainer.weight_transport '%s' is not file, cuda_ipc or nccl",
                                source, c->transport);
        o->burn_in = (int64_t)burn_in;
        o->warmup_steps = warmup;
        o->total_steps = total;
        o->seed = (uint64_t)seed;
    }
    section_reader d = {json_object_get(root, "redis"), "redis", source, err};
    if (rc == 0 && d.sec && (rc = check_keys(&d, redis_keys)) == 0 &&
        (rc = get_string(&d, "host", c->host, sizeof c->host)) == 0 &&
        (rc = get_int(&d, "port", 1, 65535, &c->consumer.port)) == 0 &&
        (rc = get_ll(&d, "stats_max_entries", 100, 100000000, &c->consumer.stats_max_entries)) == 0)
        rc = redis_link_config_read(&c->redis_link, d.sec, source, err);
    return rc;
}

/* Whether trainer.beta is set explicitly: in the file's "trainer" object or by a --set of
 * trainer.beta or of the whole trainer object. (The loaded document always holds a beta, the
 * default's; only an explicit one keeps a non-default loss from taking its own beta.) */
static bool beta_given(const char *path, const char *const *sets, size_t n_sets) {
    bool given = false;
    for (size_t i = 0; i < n_sets && !given; i++) {
        if (strncmp(sets[i], "trainer.beta=", 13) == 0) given = true;
        else if (strncmp(sets[i], "trainer=", 8) == 0) {
            json_t *v = json_loads(sets[i] + 8, JSON_DECODE_ANY, NULL);
            given = json_is_object(v) && json_object_get(v, "beta");
            json_decref(v);
        }
    }
    if (!given && path) {
        json_t *file = NULL;
        duel_error ignored = {0};
        if (duel_json_load_file(path, DUEL_CONFIG_MAX_BYTES, &file, &ignored) == 0)
            given = json_object_get(json_object_get(file, "trainer"), "beta") != NULL;
        json_decref(file);
    }
    return given;
}

int trainer_config_load(json_t *root, const char *config_path, const char *const *sets, size_t n_sets,
                        trainer_config *c, duel_error *err) {
    memset(c, 0, sizeof *c);
    online_trainer_default_options(&c->trainer);
    stream_consumer_default_options(&c->consumer);
    snprintf(c->transport, sizeof c->transport, "file");
    c->nccl_world_size = 2;
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    char source[4200];
    if (config_path) snprintf(source, sizeof source, "%s%s", config_path, n_sets ? " with --set" : "");
    else snprintf(source, sizeof source, "%s", n_sets ? "the configuration with --set" : "the built-in configuration");
    return load_sections(root, source, beta_given(config_path, sets, n_sets), c, err);
}
