/* online_test_env.h: what the online trainer's tests share, so that each states only what it
 * changes: the fixture model tiny-llama-f32 (fwd_make_models), a small trainer configuration
 * that trains fast, trainers opened in a fresh folder, votes built in memory (offered directly)
 * with a hidden linear reward, the stream consumer's test options and polling loops, and the
 * `duel train` executable started and waited for. Votes XADDed to Redis are
 * test_online_votes.h's. Header-only. */
#ifndef DUEL_TEST_ONLINE_TEST_ENV_H
#define DUEL_TEST_ONLINE_TEST_ENV_H

#include "test_helpers.h"

#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "online_trainer.h"
#include "rng.h"
#include "stream_consumer.h"

#define ONLINE_TEST_M 4
#define ONLINE_TEST_D_FEAT 128 /* 2 * hidden_size of tiny-llama-f32 */

static inline void online_test_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The fixture model's folder (a static buffer). */
static inline const char *online_test_model(void) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/test-models/tiny-llama-f32", test_env("DUEL_BUILD_DIR", "."));
    return path;
}

/* Options that train the fixture model in milliseconds per update: ERM of 4 heads of width 32,
 * fixed batches of 4, no snapshots by time or idleness (publish_every 3), no SEA mixture before
 * 1000 pairs. */
static inline void online_test_options(online_trainer_options *o) {
    online_trainer_default_options(o);
    o->model_dir = online_test_model();
    o->model_id = "tiny";
    o->erm_heads = 4;
    o->erm_hidden = 32;
    o->batch_size = 4;
    o->max_batch_size = 1; /* fixed batches of batch_size */
    o->lr = 1e-3;
    o->min_lr = 1e-4;
    o->warmup_steps = 2;
    o->total_steps = 100;
    o->publish_every = 3;
    o->publish_every_seconds = 0;
    o->publish_when_idle = false;
    o->erm.min_pairs = 4;
}

/* Opens a trainer on a fresh folder (its path into dir when dir is not NULL). */
static inline online_trainer *online_test_open(const online_trainer_options *o, const char *tag, char *dir,
                                               size_t cap) {
    char local[512];
    if (!dir) dir = local, cap = sizeof local;
    test_make_temp_dir(tag, dir, cap);
    online_trainer *t = NULL;
    duel_error err = {0};
    if (online_trainer_open(o, dir, &t, &err)) fail_msg("%s", err.message);
    return t;
}

/* A vote on M random candidates (vocabulary 512, features of D_FEAT) made from rng; an a/b
 * choice (kind VOTE_CHOICE_A) follows a hidden linear reward on the features. */
static inline void online_test_entry(duel_rng *rng, int serial, vote_choice kind, vote_entry *e) {
    const int M = ONLINE_TEST_M, D = ONLINE_TEST_D_FEAT;
    memset(e, 0, sizeof *e);
    snprintf(e->vote_id, sizeof e->vote_id, "mix-%06d", serial);
    snprintf(e->duel_id, sizeof e->duel_id, "duel-%06d", serial);
    snprintf(e->model_id, sizeof e->model_id, "tiny");
    snprintf(e->strategy, sizeof e->strategy, "ee_ts");
    e->num_candidates = M;
    e->d_feat = D;
    e->num_heads = 1;
    e->n_prompt_tokens = 3 + (int)duel_rng_below(rng, 5);
    e->prompt_tokens = malloc((size_t)e->n_prompt_tokens * sizeof(int32_t));
    e->cand_offsets = malloc((size_t)(M + 1) * sizeof(int32_t));
    e->cand_tokens = malloc((size_t)M * 12 * sizeof(int32_t));
    e->features = malloc((size_t)M * D * sizeof(float));
    e->erm_rewards = calloc((size_t)M, sizeof(float));
    for (int i = 0; i < e->n_prompt_tokens; i++) e->prompt_tokens[i] = 3 + (int32_t)duel_rng_below(rng, 500);
    e->cand_offsets[0] = 0;
    for (int m = 0; m < M; m++) {
        int len = 2 + (int)duel_rng_below(rng, 10);
        for (int i = 0; i < len; i++) e->cand_tokens[e->cand_offsets[m] + i] = 3 + (int32_t)duel_rng_below(rng, 500);
        e->cand_offsets[m + 1] = e->cand_offsets[m] + len;
    }
    e->n_cand_tokens = e->cand_offsets[M];
    double r[ONLINE_TEST_M];
    for (int m = 0; m < M; m++) {
        r[m] = 0;
        for (int k = 0; k < D; k++) {
            float x = (float)duel_rng_normal(rng);
            e->features[m * D + k] = x;
            r[m] += (k % 3 == 0 ? 1.0 : -0.5) * x;
        }
    }
    int a = (int)duel_rng_below(rng, M), b = (a + 1 + (int)duel_rng_below(rng, M - 1)) % M;
    e->choice = kind != VOTE_CHOICE_A ? kind : (r[a] >= r[b] ? VOTE_CHOICE_A : VOTE_CHOICE_B);
    e->chosen_idx = e->choice == VOTE_CHOICE_B ? b : a;
    e->rejected_idx = e->choice == VOTE_CHOICE_B ? a : b;
}

/* Offers the vote of `serial` (each depends on its serial alone: stream id 1-<serial+1>; every
 * fifth a tie); returns what the trainer made of it. */
static inline online_offer_result online_test_offer_only(online_trainer *t, int serial) {
    duel_rng rng;
    duel_rng_seed(&rng, 1000 + (uint64_t)serial);
    vote_entry e;
    online_test_entry(&rng, serial, serial % 5 == 4 ? VOTE_CHOICE_TIE : VOTE_CHOICE_A, &e);
    char id[32];
    snprintf(id, sizeof id, "1-%d", serial + 1);
    online_offer_result res;
    duel_error err = {0};
    if (online_trainer_offer(t, id, &e, &res, &err)) fail_msg("%s", err.message);
    vote_entry_free(&e);
    return res;
}

/* online_test_offer_only, then the update when a batch is due (caught up). */
static inline void online_test_offer(online_trainer *t, int serial) {
    (void)online_test_offer_only(t, serial);
    duel_error err = {0};
    if (online_trainer_cut_due(t, true) && online_trainer_apply(t, &err)) fail_msg("%s", err.message);
}

/* ---- the stream consumer ------------------------------------------------------------------- */

static inline void online_test_consumer_options(stream_consumer_options *so, int redis_port, const char *data) {
    stream_consumer_default_options(so);
    so->port = redis_port;
    so->block_ms = 50;
    so->timeout_ms = 2000;
    so->data_dir = data;
    so->tokenizer_dir = online_test_model();
    so->base_model = online_test_model();
}

/* Polls until three rounds in a row read nothing new. */
static inline void online_test_drain(stream_consumer *sc) {
    int idle = 0;
    for (int round = 0; round < 10000 && idle < 3; round++) {
        int n = 0;
        duel_error err = {0};
        if (stream_consumer_poll(sc, &n, &err)) fail_msg("poll: %s", err.message);
        idle = n == 0 ? idle + 1 : 0;
    }
}

/* Polls until a round reads entries; returns how many. */
static inline int online_test_poll_some(stream_consumer *sc) {
    for (int round = 0; round < 100; round++) {
        int n = 0;
        duel_error err = {0};
        if (stream_consumer_poll(sc, &n, &err)) fail_msg("poll: %s", err.message);
        if (n > 0) return n;
    }
    fail_msg("no entries arrived");
    return 0;
}

/* ---- the duel train executable ------------------------------------------------------------- */

#ifdef DUEL_EXE
/* Starts `duel train --redis 127.0.0.1:PORT --config CONFIG --data-dir DATA` (and
 * --idle-exit-ms when idle_exit_ms is not NULL), stderr appended to log. */
static inline pid_t online_test_spawn_train(int redis_port, const char *config, const char *data, const char *log,
                                            const char *idle_exit_ms) {
    char redis[64];
    snprintf(redis, sizeof redis, "127.0.0.1:%d", redis_port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        if (idle_exit_ms)
            execl(DUEL_EXE, DUEL_EXE, "train", "--redis", redis, "--config", config, "--data-dir", data,
                  "--idle-exit-ms", idle_exit_ms, (char *)NULL);
        else
            execl(DUEL_EXE, DUEL_EXE, "train", "--redis", redis, "--config", config, "--data-dir", data,
                  (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits for the process to exit (at most seconds); its exit status, 128 when a signal ended
 * it. Fails the test (after SIGKILL) when it does not end in time. */
static inline int online_test_wait_exit(pid_t pid, int seconds) {
    for (int i = 0; i < seconds * 100; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        online_test_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("duel train did not finish within %d s", seconds);
    return -1;
}
#endif

#endif
