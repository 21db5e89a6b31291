/* backend_test.c: the deterministic test backend (see duel_backend.h). One worker thread takes
 * requests from a bounded queue, fair across the requests' fairness keys as the engine's admission
 * is (common/fair_queue.h: in order within a key, least recently served key first), and, for each,
 * sleeps step_delay_ms between four progress events and then emits a ready event whose texts depend
 * only on the request (text, turn count, seed). It lets the gateway, its tests and the browser
 * tests run without a model. The queue and the cancelled flag are guarded by mu; the sink is called
 * without holding it. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "duel.h"
#include "duel_backend.h"
#include "fair_queue.h"

#define TEST_M 4
#define TEST_D_FEAT 8
#define TEST_HEADS 3

typedef struct test_job {
    uint64_t id;
    char *text;
    size_t n_history;
    uint64_t seed;
    long long arm;
    duel_backend_params params; /* recorded in gen_params (M stays TEST_M) */
} test_job;

typedef struct test_backend {
    backend_test_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool started, stopping;
    fair_queue queue; /* test_job *, by the request's fairness key */
    uint64_t current, cancelled; /* id being worked on, and the latest cancel for it */
    duel_backend_sink sink;
    void *sink_ctx;
} test_backend;

void duel_backend_result_free(duel_backend_result *r) {
    if (!r) return;
    free(r->text_a);
    free(r->text_b);
    free(r->prompt_tokens);
    free(r->cand_tokens);
    free(r->cand_offsets);
    free(r->features);
    free(r->ref_logprobs);
    free(r->rewards);
    free(r->gen_params_json);
    free(r->strategy);
    free(r->model_id);
    free(r->prompt_text);
    free(r);
}

static void sleep_ms(int ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool is_cancelled(test_backend *b, uint64_t id) {
    pthread_mutex_lock(&b->mu);
    bool c = b->cancelled == id || b->stopping;
    pthread_mutex_unlock(&b->mu);
    return c;
}

static uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static char *format_answer(const test_job *job, int cand, bool long_answer) {
    static const char *const OPENERS[TEST_M] = {
        "Here is a short answer about", "Let me explain", "A careful reply on",
        "Briefly, regarding"};
    size_t cap = strlen(job->text) + 4096;
    char *s = malloc(cap);
    if (!s) return NULL;
    int n = snprintf(s, cap, "%s \"%.200s\" (turn %zu, candidate %d). ", OPENERS[cand], job->text,
                     job->n_history + 1, cand);
    int sentences = long_answer ? 30 : 2;
    for (int i = 0; i < sentences && (size_t)n < cap - 200; i++)
        n += snprintf(s + n, cap - (size_t)n, "Sentence %d of candidate %d says something useful. ",
                      i + 1, cand);
    if (n > 0 && s[n - 1] == ' ') s[n - 1] = '\0';
    return s;
}

static duel_backend_result *make_result(const test_job *job) {
    duel_backend_result *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    bool long_answer = strncmp(job->text, "!long", 5) == 0;
    char *texts[TEST_M] = {0};
    bool ok = true;
    for (int c = 0; c < TEST_M; c++) ok = ok && (texts[c] = format_answer(job, c, long_answer));
    uint64_t h = mix(job->seed ^ job->id);
    r->cand_a = (int)(h % TEST_M);
    r->cand_b = (r->cand_a + 1 + (int)((h >> 8) % (TEST_M - 1))) % TEST_M;
    r->side_swap = (h >> 16) & 1;
    r->num_candidates = TEST_M;
    r->d_feat = TEST_D_FEAT;
    r->num_heads = TEST_HEADS;
    size_t plen = strlen(job->text);
    r->n_prompt_tokens = plen;
    r->prompt_tokens = malloc((plen + 1) * sizeof(int32_t));
    r->cand_offsets = malloc((TEST_M + 1) * sizeof(int32_t));
    size_t total = 0;
    for (int c = 0; ok && c < TEST_M; c++) total += strlen(texts[c]);
    r->cand_tokens = malloc((total + 1) * sizeof(int32_t));
    r->features = malloc(TEST_M * TEST_D_FEAT * sizeof(float));
    r->rewards = malloc(TEST_M * TEST_HEADS * sizeof(float));
    ok = ok && r->prompt_tokens && r->cand_offsets && r->cand_tokens && r->features && r->rewards;
    if (ok) {
        /* "Tokens" are bytes: deterministic and easy to check. */
        for (size_t i = 0; i < plen; i++) r->prompt_tokens[i] = (unsigned char)job->text[i];
        size_t o = 0;
        for (int c = 0; c < TEST_M; c++) {
            r->cand_offsets[c] = (int32_t)o;
            for (const char *p = texts[c]; *p; p++) r->cand_tokens[o++] = (unsigned char)*p;
        }
        r->cand_offsets[TEST_M] = (int32_t)o;
        r->n_cand_tokens = o;
        for (int i = 0; i < TEST_M * TEST_D_FEAT; i++)
            r->features[i] = (float)((mix(h + (uint64_t)i) >> 40) % 2001) / 1000.0f - 1.0f;
        for (int i = 0; i < TEST_M * TEST_HEADS; i++)
            r->rewards[i] = (float)((mix(~h + (uint64_t)i) >> 40) % 2001) / 500.0f - 2.0f;
        r->generated_tokens = (long long)o;
        int shown_a = r->side_swap ? r->cand_b : r->cand_a;
        int shown_b = r->side_swap ? r->cand_a : r->cand_b;
        r->cand_a = shown_a;
        r->cand_b = shown_b;
        r->text_a = strdup(texts[shown_a]);
        r->text_b = strdup(texts[shown_b]);
        /* The knobs it was given, as the engine adapter records them (it samples nothing). */
        const duel_backend_params *p = &job->params;
        json_t *gp = json_pack("{s:s, s:i, s:f, s:f, s:i, s:i, s:f, s:I}", "strategy", p->strategy, "M",
                               TEST_M, "temperature", (double)p->temperature, "top_p", (double)p->top_p,
                               "top_k", p->top_k, "max_new_tokens", p->max_new_tokens, "arena_fraction",
                               p->arena_fraction, "seed", (json_int_t)job->seed);
        r->gen_params_json = gp ? json_dumps(gp, JSON_COMPACT) : NULL;
        json_decref(gp);
        r->strategy = strdup(p->strategy);
        if (duel_estimated_regret(r->rewards, TEST_M, TEST_HEADS, r->cand_a, r->cand_b,
                                  &r->regret_estimate, NULL))
            r->regret_estimate = NAN;
        r->model_id = strdup("test-backend");
        size_t pcap = plen + 64;
        r->prompt_text = malloc(pcap);
        if (r->prompt_text) snprintf(r->prompt_text, pcap, "<user>%s</user>", job->text);
        r->policy_version = job->arm >= 0 ? job->arm : 0;
        ok = r->text_a && r->text_b && r->gen_params_json && r->strategy && r->model_id &&
             r->prompt_text;
        if (ok) {
            r->len_a = strlen(r->text_a);
            r->len_b = strlen(r->text_b);
        }
    }
    for (int c = 0; c < TEST_M; c++) free(texts[c]);
    if (!ok) {
        duel_backend_result_free(r);
        return NULL;
    }
    return r;
}

static void *worker(void *arg) {
    test_backend *b = arg;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        while (!fair_queue_count(&b->queue) && !b->stopping) pthread_cond_wait(&b->cv, &b->mu);
        if (b->stopping) {
            pthread_mutex_unlock(&b->mu);
            return NULL;
        }
        test_job *job = fair_queue_pop(&b->queue);
        b->current = job->id;
        pthread_mutex_unlock(&b->mu);

        int delay = strncmp(job->text, "!slow", 5) == 0 ? 200 : b->cfg.step_delay_ms;
        bool cancelled = false;
        for (int step = 1; step <= 4 && !cancelled; step++) {
            sleep_ms(delay);
            if ((cancelled = is_cancelled(b, job->id))) break;
            duel_backend_event ev = {.kind = DUEL_BACKEND_PROGRESS, .request_id = job->id,
                                     .tokens = 16LL * step};
            b->sink(b->sink_ctx, &ev);
        }
        if (!cancelled) {
            duel_backend_event ev = {.request_id = job->id};
            if (strncmp(job->text, "!error", 6) == 0) {
                ev.kind = DUEL_BACKEND_ERROR;
                snprintf(ev.message, sizeof ev.message, "test backend: error requested");
            } else if (!(ev.result = make_result(job))) {
                ev.kind = DUEL_BACKEND_ERROR;
                snprintf(ev.message, sizeof ev.message, "test backend: out of memory");
            } else {
                ev.kind = DUEL_BACKEND_READY;
            }
            b->sink(b->sink_ctx, &ev);
            duel_backend_result_free(ev.result); /* NULL when the sink took it */
        }
        free(job->text);
        free(job);
    }
}

static int tb_start(void *impl, duel_backend_sink sink, void *sink_ctx, duel_error *err) {
    test_backend *b = impl;
    b->sink = sink;
    b->sink_ctx = sink_ctx;
    if (pthread_create(&b->thread, NULL, worker, b))
        return duel_error_set(err, DUEL_ENOMEM, "test backend: cannot start its thread");
    b->started = true;
    return DUEL_OK;
}

static int tb_submit(void *impl, const duel_backend_request *req, duel_error *err) {
    test_backend *b = impl;
    test_job *job = calloc(1, sizeof *job);
    if (!job || !(job->text = strdup(req->text))) {
        free(job);
        return duel_error_set(err, DUEL_ENOMEM, "test backend: out of memory");
    }
    job->id = req->request_id;
    job->n_history = req->n_history;
    job->seed = req->seed;
    job->arm = req->arm_snapshot;
    if (req->params) job->params = *req->params;
    else job->params = (duel_backend_params){"ee_ts", TEST_M, 1.0f, 1.0f, 0, 128, 0.0};
    pthread_mutex_lock(&b->mu);
    if ((int)fair_queue_count(&b->queue) >= b->cfg.queue_capacity ||
        fair_queue_push(&b->queue, req->fairness_key, job)) {
        pthread_mutex_unlock(&b->mu);
        free(job->text);
        free(job);
        return duel_error_set(err, DUEL_ELIMIT, "test backend: queue full");
    }
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return DUEL_OK;
}

static bool job_has_id(const void *item, void *ctx) {
    return ((const test_job *)item)->id == *(const uint64_t *)ctx;
}

static void tb_cancel(void *impl, uint64_t id) {
    test_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    /* Queued: drop it. Running: flag it for the worker. */
    test_job *j = fair_queue_remove(&b->queue, job_has_id, &id);
    if (j) {
        free(j->text);
        free(j);
    }
    b->cancelled = id;
    pthread_mutex_unlock(&b->mu);
}

static size_t tb_queue_depth(void *impl) {
    test_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    size_t d = fair_queue_count(&b->queue);
    pthread_mutex_unlock(&b->mu);
    return d;
}

static void tb_destroy(void *impl) {
    test_backend *b = impl;
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stopping = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (b->started) pthread_join(b->thread, NULL);
    test_job *j;
    while ((j = fair_queue_pop(&b->queue))) {
        free(j->text);
        free(j);
    }
    fair_queue_free(&b->queue);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
}

int backend_test_create(const backend_test_config *cfg, duel_backend *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    test_backend *b = calloc(1, sizeof *b);
    if (!b) return duel_error_set(err, DUEL_ENOMEM, "test backend: out of memory");
    b->cfg = *cfg;
    if (b->cfg.queue_capacity <= 0) b->cfg.queue_capacity = 1024;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    out->name = "test";
    out->impl = b;
    out->start = tb_start;
    out->submit = tb_submit;
    out->cancel = tb_cancel;
    out->queue_depth = tb_queue_depth;
    out->count_tokens = NULL;
    out->destroy = tb_destroy;
    return DUEL_OK;
}
