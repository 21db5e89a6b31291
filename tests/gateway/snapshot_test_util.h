/* snapshot_test_util.h: what the tests of snapshots in serving share (test_snapshot_swap.c,
 * test_rollout_serving.c): a snapshot of a model written the trainer's way with its weights
 * perturbed, and a backend sink that hands a test each finished duel. Header-only; include it
 * once, after gateway_test_util.h. */
#ifndef DUEL_TESTS_SNAPSHOT_TEST_UTIL_H
#define DUEL_TESTS_SNAPSHOT_TEST_UTIL_H

#include "duel_backend.h"
#include "erm.h"
#include "lm_trainer.h"
#include "rng.h"
#include "snapshot_write.h"
#include "train_model.h"

/* Writes snapshot v of the model at model_dir into data_dir, every weight scaled by
 * 1 + noise * U(-1, 1) (seeded by v), published at created_ms with the new votes' mean time
 * votes_mean_ms (0: none) in its meta.json; its folder into path. */
static inline void tu_write_snapshot(const char *model_dir, const char *data_dir, long long v,
                                     double noise, int64_t created_ms, int64_t votes_mean_ms,
                                     char *path, size_t cap) {
    train_model *tm = NULL;
    char *config_json = NULL;
    duel_error err = {0};
    if (lm_model_load_hf(model_dir, &tm, &config_json, &err)) fail_msg("%s", err.message);
    float *w = train_model_parameter_memory(tm);
    size_t n = train_model_num_parameters(tm);
    duel_rng rng;
    duel_rng_seed(&rng, (uint64_t)v);
    for (size_t i = 0; i < n; i++)
        w[i] *= (float)(1.0 + noise * ((double)duel_rng_below(&rng, 2001) / 1000.0 - 1.0));
    int H = train_model_config(tm)->hidden_size;
    erm_config ec = {ERM_DEFAULT_NUM_HEADS, 2 * H, ERM_DEFAULT_HIDDEN};
    erm *e = NULL;
    assert_int_equal(erm_create(&ec, &rng, &e, &err), 0);
    snapshot_info info = {v, v - 1, 10 * v, 8 * v, created_ms, model_dir, NULL, votes_mean_ms};
    if (snapshot_write(data_dir, &info, tm, config_json, e, model_dir, path, cap, &err))
        fail_msg("snapshot_write: %s", err.message);
    erm_free(e);
    train_model_free(tm);
    free(config_json);
}

/* A backend sink keeping the last ready result (or the error) for tu_sink_duel. */
typedef struct tu_sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    duel_backend_result *ready;
    char error[256];
    bool failed;
} tu_sink;

static inline void tu_sink_fn(void *ctx, duel_backend_event *ev) {
    tu_sink *s = ctx;
    pthread_mutex_lock(&s->mu);
    if (ev->kind == DUEL_BACKEND_READY) {
        s->ready = ev->result;
        ev->result = NULL;
    } else if (ev->kind == DUEL_BACKEND_ERROR) {
        s->failed = true;
        snprintf(s->error, sizeof s->error, "%s", ev->message);
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Submits req and waits for its result (fails the test on an error). */
static inline duel_backend_result *tu_sink_duel(duel_backend *b, tu_sink *s,
                                                const duel_backend_request *req) {
    duel_error err = {0};
    if (b->submit(b->impl, req, &err)) fail_msg("submit: %s", err.message);
    pthread_mutex_lock(&s->mu);
    while (!s->ready && !s->failed) pthread_cond_wait(&s->cv, &s->mu);
    duel_backend_result *r = s->ready;
    s->ready = NULL;
    if (s->failed) fail_msg("duel failed: %s", s->error);
    pthread_mutex_unlock(&s->mu);
    return r;
}

#endif
