/* test_scheduler.c: continuous batching (inference/scheduler.c) under stress, with a fake model
 * that makes corruption visible. The fake forward writes into each token's K/V slot its token,
 * its position and a hash chained over the whole sequence (h_p = mix(h_{p-1}, token_p, p)), and
 * before writing it re-reads every earlier position of the sequence through the block table and
 * checks token, position and chain; the logits are a function of h. So a token that attended to
 * another sequence's block, a stale block after preemption or a broken copy-on-write changes
 * the tokens sampled, and a reference simulator (the same hash chain and sampler, no KV at all)
 * predicts every candidate's tokens, log-probability and hidden state exactly.
 *
 * The stress runs thousands of requests (random prompt lengths, multi-turn prompts that extend
 * earlier ones, M up to 5 forked candidates, stop tokens, two resident models, cancels, and a
 * fifth of them with a lockstep reference model (the other model or the same one) whose logits
 * a logits step mixes into the candidate's, PILAF's formula, so that a reference sequence that
 * fell out of step or read another's blocks changes the tokens) through
 * pools so small that preemption is constant, checking sched_check (which includes kv_pool_check:
 * reference counts equal table contents, no leaked or double-freed block) after every step, and
 * that the pool is entirely free at the end. A sixth of the requests without a reference are
 * scoring requests (forced tokens, the duel's reference pass), half of them keeping an ended
 * request's place in the age order: their log-probabilities and hidden states are the
 * simulator's too, so a token scored twice or never after a preemption shows. Then submit's bad
 * inputs. The fake model is a
 * compute backend (compute.h) whose logits rows live in host memory, sampled by the shared
 * host-logits helper exactly as the CPU backend samples them. */
#include "test_helpers.h"

#include "compute.h"
#include "cpu_ops.h"
#include "kv_cache.h"
#include "rng.h"
#include "sampler.h"
#include "scheduler.h"

#define FAKE_VOCAB 24
#define FAKE_HIDDEN 4
#define FAKE_LAYERS 2
#define FAKE_HEAD_DIM 4

static uint32_t mix32(uint32_t h, uint32_t a, uint32_t b) {
    h ^= a * 0x9E3779B1u;
    h = (h ^ (h >> 16)) * 0x85EBCA77u;
    h ^= b * 0xC2B2AE3Du;
    h = (h ^ (h >> 13)) * 0x27D4EB2Fu;
    return h ^ (h >> 16);
}

static uint32_t chain_root(int model) { return 0x1234567u + (uint32_t)model * 7919u; }

static void fake_logits(uint32_t h, int model, float *logits) {
    for (int v = 0; v < FAKE_VOCAB; v++)
        logits[v] = (float)(mix32(h, (uint32_t)v, (uint32_t)model + 99u) & 0xffffu) / 65536.0f *
                        6.0f - 3.0f;
}

static void fake_hidden(uint32_t h, int64_t pos, int model, float *hidden) {
    hidden[0] = (float)(h & 0xffffu);
    hidden[1] = (float)(h >> 16);
    hidden[2] = (float)pos;
    hidden[3] = (float)model;
}

/* The fake backend: arms are model indices; fail_call > 0 makes that forward call fail. */
typedef struct fake_ctx {
    compute_backend base;
    compute_host_logits logits;
    int calls;
    int fail_call;
    int failures;
    char failure[512];
} fake_ctx;

struct compute_arm {
    int model_index;
};

static compute_arm fake_arms[3] = {{0}, {1}, {2}};

static uint32_t slot_hash(const float *k) { return (uint32_t)k[2] | ((uint32_t)k[3] << 16); }

/* The fake forward: verify history, write K/V (both layers) and produce outputs. */
static int fake_forward(compute_backend *b, compute_arm *arm, kv_pool *pool,
                        const compute_entry *entries, int n, duel_error *err) {
    fake_ctx *ctx = (fake_ctx *)b;
    int model_index = arm->model_index;
    if (++ctx->calls == ctx->fail_call)
        return duel_error_set(err, DUEL_ENOMEM, "simulated out of memory");
    int bs = kv_pool_block_size(pool);
    for (int i = 0; i < n; i++) {
        const compute_entry *e = &entries[i];
        uint32_t h = chain_root(model_index);
        for (int64_t q = 0; q < e->start + e->n_tokens; q++) {
            int32_t tok;
            if (q < e->start) {
                if (q >= e->seq->num_tokens)
                    return duel_error_set(err, DUEL_EFORMAT, "position %lld not committed",
                                          (long long)q);
                tok = kv_pool_block_tokens(pool, e->seq->blocks[q / bs])[q % bs];
            } else {
                tok = e->tokens[q - e->start];
            }
            uint32_t next = mix32(h, (uint32_t)tok, (uint32_t)q);
            for (int l = 0; l < FAKE_LAYERS; l++) {
                float *k = kv_sequence_key(pool, e->seq, l, 0, q);
                float *v = kv_sequence_value(pool, e->seq, l, 0, q);
                if (!k || !v) return duel_error_set(err, DUEL_EFORMAT, "no slot for %lld", (long long)q);
                if (q >= e->start) {
                    float w[4] = {(float)tok, (float)q, (float)(next & 0xffffu),
                                  (float)(next >> 16)};
                    memcpy(k, w, sizeof w);
                    memcpy(v, w, sizeof w);
                } else if (k[0] != (float)tok || k[1] != (float)q || slot_hash(k) != next ||
                           memcmp(k, v, 4 * sizeof *k) != 0) {
                    ctx->failures++;
                    snprintf(ctx->failure, sizeof ctx->failure,
                             "model %d layer %d position %lld: slot holds token %g position %g, "
                             "expected %d %lld",
                             model_index, l, (long long)q, k[0], k[1], (int)tok, (long long)q);
                    return duel_error_set(err, DUEL_EFORMAT, "%s", ctx->failure);
                }
            }
            h = next;
        }
        /* targets: re-derive each row's hash and score its target */
        if (e->targets) {
            *e->target_logprob = 0;
            uint32_t hr = chain_root(model_index);
            for (int64_t q = 0; q < e->start + e->n_tokens; q++) {
                int32_t tok = q < e->start ? kv_pool_block_tokens(pool, e->seq->blocks[q / bs])[q % bs]
                                           : e->tokens[q - e->start];
                hr = mix32(hr, (uint32_t)tok, (uint32_t)q);
                if (q < e->start || e->targets[q - e->start] < 0) continue;
                float lg[FAKE_VOCAB + 1];
                fake_logits(hr, model_index, lg);
                *e->target_logprob +=
                    (double)lg[e->targets[q - e->start]] - cpu_log_sum_exp(lg, FAKE_VOCAB);
            }
        }
        int64_t last = e->start + e->n_tokens - 1;
        if (e->logits_row >= 0) {
            float *row = compute_host_logits_row(&ctx->logits, e->logits_row);
            if (!row) return duel_error_set(err, DUEL_EINVAL, "no logits row %d", e->logits_row);
            fake_logits(h, model_index, row);
        }
        if (e->hidden_last) fake_hidden(h, last, model_index, e->hidden_last);
    }
    return DUEL_OK;
}

static int fake_step_begin(compute_backend *b, int rows, int vocab, duel_error *err) {
    return compute_host_logits_begin(&((fake_ctx *)b)->logits, rows, vocab, err);
}

static int fake_sample(compute_backend *b, compute_sample *samples, int n, duel_error *err) {
    return compute_host_logits_sample(&((fake_ctx *)b)->logits, samples, n, err);
}

static int fake_read_logits(compute_backend *b, int row, float *out, duel_error *err) {
    return compute_host_logits_read(&((fake_ctx *)b)->logits, row, out, err);
}

static const compute_ops fake_ops = {.name = "fake",
                                     .step_begin = fake_step_begin,
                                     .forward = fake_forward,
                                     .sample = fake_sample,
                                     .read_logits = fake_read_logits};

static void fake_init(fake_ctx *f) {
    memset(f, 0, sizeof *f);
    f->base.ops = &fake_ops;
}

static void fake_fini(fake_ctx *f) { compute_host_logits_free(&f->logits); }

/* ---- reference simulator ------------------------------------------------------------------ */

typedef struct expected_candidate {
    int32_t tokens[128];
    int count;
    double logprob_sum;
    float hidden[FAKE_HIDDEN];
    sched_finish_reason reason;
    bool seen;
} expected_candidate;

typedef struct expected_request {
    bool active, cancelled, done;
    bool scoring;      /* forced tokens */
    uint64_t arrival;  /* its place in the age order (from DONE, or the one it took) */
    int model, M, prompt_len;
    int runs; /* models each position runs on: 2 with a lockstep reference */
    bool want_hidden;
    float prompt_hidden[FAKE_HIDDEN];
    expected_candidate cand[8];
    int32_t prompt[128];
} expected_request;

/* The stress's logits step: PILAF's mix with beta 0.5 for even candidates (y+) and -0.5 for
 * odd ones ((1 - 0.5) h + 0.5 h_ref, y-), in float so that the simulator repeats it exactly. */
static void mix_logits(int candidate, const float *logits, const float *ref, int vocab, float *out) {
    float b = candidate % 2 ? -0.5f : 0.5f;
    for (int v = 0; v < vocab; v++) out[v] = (1 + b) * logits[v] - b * ref[v];
}

static int stress_logits_step(void *ctx, int candidate, const float *logits,
                              const float *ref_logits, int vocab, float *out, duel_error *err) {
    int *calls = ctx;
    (*calls)++;
    if (!ref_logits) return duel_error_set(err, DUEL_EINVAL, "no reference logits");
    mix_logits(candidate, logits, ref_logits, vocab, out);
    return DUEL_OK;
}

/* A scoring request's candidates: log p(forced | prompt) summed in double, the hidden state at
 * the last forced token. */
static void simulate_forced(const sched_request_params *p, uint32_t hp, expected_request *x) {
    for (int c = 0; c < p->num_candidates; c++) {
        expected_candidate *ec = &x->cand[c];
        memset(ec, 0, sizeof *ec);
        uint32_t h = hp;
        int len = p->prompt_len;
        for (int j = 0; j < p->forced_counts[c]; j++) {
            float logits[FAKE_VOCAB];
            fake_logits(h, p->model, logits);
            int32_t tok = p->forced[c][j];
            ec->logprob_sum += (double)logits[tok] - cpu_log_sum_exp(logits, FAKE_VOCAB);
            ec->tokens[ec->count++] = tok;
            h = mix32(h, (uint32_t)tok, (uint32_t)len);
            len++;
        }
        ec->reason = SCHED_FINISH_LENGTH;
        fake_hidden(h, len - 1, p->model, ec->hidden);
    }
}

static void simulate(const sched_request_params *p, int max_context, expected_request *x) {
    x->model = p->model;
    x->scoring = p->forced != NULL;
    x->arrival = p->arrival;
    x->runs = p->use_ref_model ? 2 : 1;
    x->M = p->num_candidates;
    x->prompt_len = p->prompt_len;
    x->want_hidden = p->want_hidden;
    memcpy(x->prompt, p->prompt, (size_t)p->prompt_len * sizeof(int32_t));
    uint32_t hp = chain_root(p->model), hrp = chain_root(p->ref_model);
    for (int i = 0; i < p->prompt_len; i++) {
        hp = mix32(hp, (uint32_t)p->prompt[i], (uint32_t)i);
        hrp = mix32(hrp, (uint32_t)p->prompt[i], (uint32_t)i);
    }
    fake_hidden(hp, p->prompt_len - 1, p->model, x->prompt_hidden);
    if (p->forced) {
        simulate_forced(p, hp, x);
        return;
    }
    for (int c = 0; c < p->num_candidates; c++) {
        expected_candidate *ec = &x->cand[c];
        memset(ec, 0, sizeof *ec);
        duel_rng rng;
        duel_rng_seed(&rng, p->seed + (uint64_t)c);
        uint32_t h = hp, hr = hrp;
        int len = p->prompt_len;
        for (;;) {
            float logits[FAKE_VOCAB], ref[FAKE_VOCAB], mixed[FAKE_VOCAB], lp;
            fake_logits(h, p->model, logits);
            const float *from = logits;
            if (p->use_ref_model) {
                fake_logits(hr, p->ref_model, ref);
                mix_logits(c, logits, ref, FAKE_VOCAB, mixed);
                from = mixed;
            }
            int32_t tok = sampler_sample(from, FAKE_VOCAB, &p->sampling, &rng, &lp, NULL);
            assert_true(tok >= 0);
            ec->tokens[ec->count++] = tok;
            ec->logprob_sum += lp;
            h = mix32(h, (uint32_t)tok, (uint32_t)len);
            hr = mix32(hr, (uint32_t)tok, (uint32_t)len);
            len++;
            bool stop = false;
            for (int s = 0; s < p->num_stop_tokens; s++) stop |= p->stop_tokens[s] == tok;
            if (stop) ec->reason = SCHED_FINISH_STOP;
            else if (ec->count >= p->max_new_tokens) ec->reason = SCHED_FINISH_LENGTH;
            else if (len >= max_context) ec->reason = SCHED_FINISH_CONTEXT;
            else continue;
            break;
        }
        fake_hidden(h, len - 1, p->model, ec->hidden);
    }
}

/* ---- stress -------------------------------------------------------------------------------- */

#define MAX_REQUESTS 4000

typedef struct stress {
    expected_request *x; /* [MAX_REQUESTS + 1], by id */
    int max_context;
    int candidates_seen, done, cancelled, progress_tokens;
    char failure[1024];
} stress;

static void stress_fail(stress *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void stress_fail(stress *st, const char *fmt, ...) {
    if (st->failure[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->failure, sizeof st->failure, fmt, ap);
    va_end(ap);
}

static void on_event(void *vctx, const sched_event *ev) {
    stress *st = vctx;
    if (ev->request_id < 1 || ev->request_id > MAX_REQUESTS) {
        stress_fail(st, "event for unknown request %llu", (unsigned long long)ev->request_id);
        return;
    }
    expected_request *x = &st->x[ev->request_id];
    if (!x->active) {
        stress_fail(st, "event %d for inactive request %llu", ev->kind,
                    (unsigned long long)ev->request_id);
        return;
    }
    if ((uintptr_t)ev->user != ev->request_id) stress_fail(st, "user pointer not handed back");
    if (ev->kind == SCHED_EVENT_PROGRESS) {
        st->progress_tokens += ev->count;
        for (int i = 0; i < ev->count; i++)
            if (ev->candidates[i] < 0 || ev->candidates[i] >= x->M)
                stress_fail(st, "progress for candidate %d", ev->candidates[i]);
        return;
    }
    if (ev->kind == SCHED_EVENT_CANDIDATE) {
        if (ev->candidate < 0 || ev->candidate >= x->M) {
            stress_fail(st, "candidate %d of %d", ev->candidate, x->M);
            return;
        }
        expected_candidate *ec = &x->cand[ev->candidate];
        if (ec->seen) stress_fail(st, "candidate %d reported twice", ev->candidate);
        ec->seen = true;
        st->candidates_seen++;
        if (ev->count != ec->count || memcmp(ev->tokens, ec->tokens, (size_t)ec->count * 4))
            stress_fail(st, "request %llu candidate %d: %d tokens differ from the %d expected",
                        (unsigned long long)ev->request_id, ev->candidate, ev->count, ec->count);
        else if ((x->scoring ? !(fabs(ev->logprob_sum - ec->logprob_sum) <=
                                 1e-9 * (1 + fabs(ec->logprob_sum)))
                             : ev->logprob_sum != ec->logprob_sum) ||
                 ev->finish_reason != ec->reason)
            stress_fail(st, "request %llu candidate %d: logprob %.9g vs %.9g, reason %d vs %d",
                        (unsigned long long)ev->request_id, ev->candidate, ev->logprob_sum,
                        ec->logprob_sum, ev->finish_reason, ec->reason);
        else if (x->want_hidden && (!ev->hidden || memcmp(ev->hidden, ec->hidden, sizeof ec->hidden)))
            stress_fail(st, "request %llu candidate %d: hidden state differs",
                        (unsigned long long)ev->request_id, ev->candidate);
        return;
    }
    /* DONE */
    if (ev->status) {
        stress_fail(st, "request %llu failed: %s", (unsigned long long)ev->request_id,
                    ev->message ? ev->message : "?");
    } else if (ev->cancelled) {
        st->cancelled++;
    } else {
        for (int c = 0; c < x->M; c++)
            if (!x->cand[c].seen)
                stress_fail(st, "request %llu done without candidate %d",
                            (unsigned long long)ev->request_id, c);
        if (x->want_hidden && (!ev->prompt_hidden ||
                               memcmp(ev->prompt_hidden, x->prompt_hidden, sizeof x->prompt_hidden)))
            stress_fail(st, "request %llu: prompt hidden state differs",
                        (unsigned long long)ev->request_id);
        const sched_request_stats *s = ev->stats;
        x->arrival = s->arrival;
        if (s->prompt_tokens != x->prompt_len ||
            (x->scoring ? s->generated_tokens != 0 : s->generated_tokens < x->M) ||
            s->prompt_computed < x->runs * x->prompt_len - s->cached_tokens ||
            s->done_time < s->submit_time)
            stress_fail(st, "request %llu: inconsistent stats", (unsigned long long)ev->request_id);
        if (s->preemptions == 0 && s->prompt_computed != x->runs * x->prompt_len - s->cached_tokens)
            stress_fail(st, "request %llu: prompt computed %lld times without preemption (%d "
                            "tokens, %lld cached)",
                        (unsigned long long)ev->request_id, (long long)s->prompt_computed,
                        x->prompt_len, (long long)s->cached_tokens);
        st->done++;
    }
    x->active = false;
    x->done = true;
}

static void run_stress(int n_requests, int block_size, int num_blocks, int budget,
                       int max_running, int hash_bits, uint64_t seed, bool expect_preemption) {
    kv_pool_params pp = {.num_layers = FAKE_LAYERS, .num_kv_heads = 1, .head_dim = FAKE_HEAD_DIM,
                         .block_size = block_size, .num_blocks = num_blocks,
                         .allocate_storage = true, .hash_bits = hash_bits};
    kv_pool *pool = NULL;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&pp, &pool, &err), 0);
    const int max_context = 64;
    sched_model_info models[2] = {{&fake_arms[0], 11, FAKE_VOCAB, FAKE_HIDDEN, max_context},
                                  {&fake_arms[1], 22, FAKE_VOCAB, FAKE_HIDDEN, max_context}};
    sched_params sp = {.max_batch_tokens = budget, .max_running = max_running,
                       .max_candidates = 5};
    fake_ctx fctx;
    fake_init(&fctx);
    scheduler *s = NULL;
    assert_int_equal(sched_create(&sp, pool, models, 2, &fctx.base, &s, &err), 0);
    stress st = {.x = calloc(MAX_REQUESTS + 1, sizeof(expected_request)),
                 .max_context = max_context};
    assert_true(n_requests <= MAX_REQUESTS);
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    int submitted = 0, steps = 0, cancels = 0, bad_cancels = 0, with_ref = 0, step_calls = 0,
        scoring = 0, continued = 0;
    const int32_t stops[2] = {0, 1};
    while (submitted < n_requests || sched_has_work(s)) {
        /* Keep a few dozen requests in flight. */
        sched_stats ss;
        sched_stats_get(s, &ss);
        int burst = (int)duel_rng_below(&rng, 4);
        for (int b = 0; b < burst && submitted < n_requests && ss.active_requests < 24; b++) {
            int32_t prompt[128];
            int len = 0;
            /* Multi-turn: extend an earlier prompt with one of its answers and a new turn. */
            if (submitted > 0 && duel_rng_uniform(&rng) < 0.35) {
                const expected_request *prev =
                    &st.x[1 + duel_rng_below(&rng, (uint64_t)submitted)];
                if (prev->done && !prev->cancelled && prev->model == 0) {
                    memcpy(prompt, prev->prompt, (size_t)prev->prompt_len * 4);
                    len = prev->prompt_len;
                    const expected_candidate *c0 = &prev->cand[0];
                    for (int i = 0; i < c0->count && len < 50; i++) prompt[len++] = c0->tokens[i];
                }
            }
            /* A lockstep reference: its candidate needs twice the blocks, so it is kept short
             * enough (40 tokens) for two sequences to fit the tiny pool. */
            bool ref = duel_rng_uniform(&rng) < 0.2;
            if (ref) len = len < 8 ? len : 8;
            int extra = 1 + (int)duel_rng_below(&rng, ref ? 12 : 30);
            for (int i = 0; i < extra && len < 56; i++)
                prompt[len++] = (int32_t)(2 + duel_rng_below(&rng, FAKE_VOCAB - 2));
            sched_request_params rp = {
                .model = duel_rng_uniform(&rng) < 0.8 ? 0 : 1,
                .prompt = prompt,
                .prompt_len = len,
                .num_candidates = 1 + (int)duel_rng_below(&rng, 5),
                .sampling = {duel_rng_uniform(&rng) < 0.5 ? 0.0f : 0.9f, 0.95f, 10},
                .seed = duel_rng_next_u64(&rng),
                .max_new_tokens = 1 + (int)duel_rng_below(&rng, 40),
                .stop_tokens = stops,
                .num_stop_tokens = (int)duel_rng_below(&rng, 3),
                .want_hidden = duel_rng_uniform(&rng) < 0.5,
                .want_progress = duel_rng_uniform(&rng) < 0.5,
                .user = (void *)(uintptr_t)(submitted + 1),
            };
            if (ref) {
                rp.use_ref_model = true;
                rp.ref_model = duel_rng_uniform(&rng) < 0.75 ? 1 - rp.model : rp.model;
                rp.logits_step = stress_logits_step;
                rp.logits_ctx = &step_calls;
                if (rp.max_new_tokens > 20) rp.max_new_tokens = 20;
                with_ref++;
            }
            /* A scoring request: forced candidates of 1..24 tokens within the context. */
            int32_t forced_tokens[5][24];
            const int32_t *forced[5];
            int forced_counts[5];
            if (!ref && duel_rng_uniform(&rng) < 0.18) {
                for (int c = 0; c < rp.num_candidates; c++) {
                    int room = max_context - len < 24 ? max_context - len : 24;
                    forced_counts[c] = 1 + (int)duel_rng_below(&rng, (uint64_t)room);
                    for (int j = 0; j < forced_counts[c]; j++)
                        forced_tokens[c][j] = (int32_t)duel_rng_below(&rng, FAKE_VOCAB);
                    forced[c] = forced_tokens[c];
                }
                rp.forced = forced;
                rp.forced_counts = forced_counts;
                rp.want_hidden = true;
                scoring++;
                /* Half keep an ended request's place (an arrival no active request holds). */
                if (submitted && duel_rng_uniform(&rng) < 0.5) {
                    const expected_request *prev = &st.x[1 + duel_rng_below(&rng, (uint64_t)submitted)];
                    bool taken = !prev->done || !prev->arrival;
                    for (uint64_t k = 1; !taken && k <= (uint64_t)submitted; k++)
                        taken = st.x[k].active && st.x[k].arrival == prev->arrival;
                    if (!taken) {
                        rp.arrival = prev->arrival;
                        continued++;
                    }
                }
            }
            uint64_t id = 0;
            if (sched_submit(s, &rp, &id, &err)) fail_msg("submit: %s", err.message);
            assert_int_equal(id, (uint64_t)submitted + 1);
            expected_request *x = &st.x[id];
            simulate(&rp, max_context, x);
            x->active = true;
            submitted++;
        }
        /* Cancel now and then: active ones, and some that are not active any more. */
        if (submitted && duel_rng_uniform(&rng) < 0.03) {
            uint64_t id = 1 + duel_rng_below(&rng, (uint64_t)submitted);
            bool was_active = st.x[id].active;
            int rc = sched_cancel(s, id, on_event, &st, &err);
            if (was_active) {
                assert_int_equal(rc, 0);
                assert_false(st.x[id].active);
                st.x[id].cancelled = true;
                cancels++;
            } else {
                assert_int_equal(rc, DUEL_ENOTFOUND);
                assert_non_null(strstr(err.message, "not active"));
                bad_cancels++;
            }
        }
        int rc = sched_step(s, on_event, &st, &err);
        if (rc < 0) fail_msg("step %d: %s", steps, err.message);
        steps++;
        if (sched_check(s, &err)) fail_msg("after step %d: %s", steps, err.message);
        if (st.failure[0]) fail_msg("after step %d: %s", steps, st.failure);
        if (fctx.failures) fail_msg("corrupted KV: %s", fctx.failure);
    }
    sched_stats ss;
    sched_stats_get(s, &ss);
    kv_pool_stats ps;
    kv_pool_stats_get(pool, &ps);
    printf("stress (%d blocks of %d, budget %d, hash bits %d): %d requests, %d steps, %llu "
           "preemptions, %d done, %d cancelled (%d cancels of inactive ids), %llu tokens run, "
           "%llu cached tokens, %d progress tokens, %llu cow copies, %llu evictions; %d with a "
           "lockstep reference (%d logits steps); %d scoring (%d in an ended one's place)\n",
           num_blocks, block_size, budget, hash_bits, submitted, steps,
           (unsigned long long)ss.preemptions, st.done, st.cancelled, bad_cancels,
           (unsigned long long)ss.tokens, (unsigned long long)ss.cached_tokens, st.progress_tokens,
           (unsigned long long)ps.cow_copies, (unsigned long long)ps.evictions, with_ref,
           step_calls, scoring, continued);
    assert_true(with_ref > n_requests / 10);
    assert_true(scoring > n_requests / 10 && continued > scoring / 4);
    assert_true(step_calls >= with_ref);
    assert_int_equal(st.done + st.cancelled, n_requests);
    assert_int_equal(st.cancelled, cancels);
    assert_int_equal(ss.requests_finished, (uint64_t)st.done);
    assert_int_equal(ss.requests_failed, 0);
    assert_int_equal(ss.running + ss.waiting + ss.active_requests, 0);
    if (expect_preemption) assert_true(ss.preemptions > 100);
    assert_true(ss.cached_tokens > 0);
    /* Nothing referenced any more; every block is free or cached, and dropping the cache frees
     * the whole pool. */
    assert_int_equal(ps.used_blocks, 0);
    assert_int_equal(ps.free_blocks + ps.cached_blocks, num_blocks);
    assert_int_equal(kv_pool_check(pool, NULL, 0, &err), 0);
    kv_pool_drop_cached(pool);
    kv_pool_stats_get(pool, &ps);
    assert_int_equal(ps.free_blocks, num_blocks);
    sched_destroy(s);
    fake_fini(&fctx);
    kv_pool_destroy(pool);
    free(st.x);
}

/* A pool of 20 blocks of 4 slots: one candidate of up to 64 tokens needs 16 of them, so two
 * candidates rarely fit at once and preemption is constant. */
static void test_stress_tiny_pool(void **state) {
    (void)state;
    run_stress(2000, 4, 20, 12, 64, 0, 1, true);
}

/* Forced hash collisions (6-bit block hashes) in the prefix cache, a larger budget. */
static void test_stress_hash_collisions(void **state) {
    (void)state;
    run_stress(1000, 4, 40, 48, 8, 6, 2, true);
}

/* Default-sized blocks, a larger pool and budget: fewer, larger steps; the same outputs. */
static void test_stress_roomy_pool(void **state) {
    (void)state;
    run_stress(1000, 16, 64, 256, 256, 0, 3, false);
}

typedef struct done_log {
    int done, failed;
    char message[256];
} done_log;

static void log_done(void *vctx, const sched_event *ev);

/* ---- lockstep reference ------------------------------------------------------------------- */

static int failing_logits_step(void *ctx, int candidate, const float *logits,
                               const float *ref_logits, int vocab, float *out, duel_error *err) {
    (void)ctx, (void)candidate, (void)logits, (void)ref_logits, (void)vocab, (void)out;
    return duel_error_set(err, DUEL_EINVAL, "logits step refused");
}

/* Runs the scheduler until idle, checking its invariants after every step. */
static void run_until_idle(scheduler *s, stress *st, fake_ctx *fctx) {
    duel_error err = {0};
    for (int steps = 0; sched_has_work(s); steps++) {
        if (sched_step(s, on_event, st, &err) < 0) fail_msg("step %d: %s", steps, err.message);
        if (sched_check(s, &err)) fail_msg("after step %d: %s", steps, err.message);
        if (st->failure[0]) fail_msg("after step %d: %s", steps, st->failure);
        if (fctx->failures) fail_msg("corrupted KV: %s", fctx->failure);
    }
}

/* A request with a lockstep reference: its bad inputs; a prompt whose blocks are cached for the
 * model but not for the reference (both sequences then start from the shorter match, 0) and
 * the same prompt again (both attach it: 2 x 12 positions cached); a reference with the smaller
 * context ends the candidates there; a failing logits step fails only its request; the pool is
 * whole at the end. Every candidate equals the simulator's, which mixes the two models' logits
 * as the logits step does. */
static void test_lockstep_reference(void **state) {
    (void)state;
    kv_pool_params pp = {.num_layers = FAKE_LAYERS, .num_kv_heads = 1, .head_dim = FAKE_HEAD_DIM,
                         .block_size = 4, .num_blocks = 48, .allocate_storage = true};
    kv_pool *pool = NULL;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&pp, &pool, &err), 0);
    sched_model_info models[3] = {{&fake_arms[0], 31, FAKE_VOCAB, FAKE_HIDDEN, 48},
                                  {&fake_arms[1], 32, FAKE_VOCAB, FAKE_HIDDEN, 24},
                                  {&fake_arms[2], 33, FAKE_VOCAB + 1, FAKE_HIDDEN, 48}};
    sched_params sp = {.max_batch_tokens = 10, .max_candidates = 4};
    fake_ctx fctx;
    fake_init(&fctx);
    scheduler *s = NULL;
    assert_int_equal(sched_create(&sp, pool, models, 3, &fctx.base, &s, &err), 0);
    stress st = {.x = calloc(MAX_REQUESTS + 1, sizeof(expected_request))};
    int calls = 0;
    int32_t prompt[16];
    for (int i = 0; i < 16; i++) prompt[i] = (int32_t)(2 + (i * 7) % (FAKE_VOCAB - 2));
    sched_request_params plain = {.model = 0, .prompt = prompt, .prompt_len = 15,
                                  .num_candidates = 1, .sampling = {0.9f, 1, 0}, .seed = 5,
                                  .max_new_tokens = 2, .user = (void *)(uintptr_t)1};
    sched_request_params ref = plain;
    ref.num_candidates = 3;
    ref.max_new_tokens = 6;
    ref.use_ref_model = true;
    ref.ref_model = 1;
    ref.logits_step = stress_logits_step;
    ref.logits_ctx = &calls;

    /* Refused at submit, nothing queued. */
    uint64_t id = 0;
    sched_request_params bad = ref;
    bad.ref_model = 3;
    assert_int_equal(sched_submit(s, &bad, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "unknown reference model index 3"));
    bad.ref_model = 2;
    assert_int_equal(sched_submit(s, &bad, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "same vocabulary"));
    bad = ref;
    bad.logits_step = NULL;
    assert_int_equal(sched_submit(s, &bad, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "needs a logits step"));
    bad = ref;
    int32_t long_prompt[30] = {0};
    bad.prompt = long_prompt;
    bad.prompt_len = 30; /* fits the model's 48, not the reference's 24 */
    assert_int_equal(sched_submit(s, &bad, &id, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "the reference model's context of 24"));
    bad = ref;
    bad.ref_model = 0; /* two sequences of up to 48 tokens: 24 blocks, more than a pool of 20 */
    bad.max_new_tokens = 33;
    kv_pool_params small = pp;
    small.num_blocks = 20;
    kv_pool *small_pool = NULL;
    assert_int_equal(kv_pool_create(&small, &small_pool, &err), 0);
    scheduler *s2 = NULL;
    assert_int_equal(sched_create(&sp, small_pool, models, 3, &fctx.base, &s2, &err), 0);
    assert_int_equal(sched_submit(s2, &bad, &id, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "with its reference sequence"));
    bad.use_ref_model = false; /* alone it fits */
    assert_int_equal(sched_submit(s2, &bad, &id, &err), 0);
    sched_destroy(s2);
    kv_pool_destroy(small_pool);
    assert_false(sched_has_work(s));

    /* The model's blocks of the prompt cached, the reference's not. */
    assert_int_equal(sched_submit(s, &plain, &id, &err), 0);
    simulate(&plain, 48, &st.x[id]);
    st.x[id].active = true;
    run_until_idle(s, &st, &fctx);
    sched_stats before;
    sched_stats_get(s, &before);
    assert_true(before.cached_tokens == 0);
    ref.user = (void *)(uintptr_t)2;
    assert_int_equal(sched_submit(s, &ref, &id, &err), 0);
    assert_int_equal(id, 2);
    simulate(&ref, 24, &st.x[id]);
    st.x[id].active = true;
    run_until_idle(s, &st, &fctx);
    sched_stats after;
    sched_stats_get(s, &after);
    assert_int_equal(after.cached_tokens, 0); /* the reference had nothing: neither attaches */
    assert_true(calls >= 3);
    /* Again: now both models' blocks are cached. */
    ref.user = (void *)(uintptr_t)3;
    ref.seed = 6;
    assert_int_equal(sched_submit(s, &ref, &id, &err), 0);
    simulate(&ref, 24, &st.x[id]);
    st.x[id].active = true;
    run_until_idle(s, &st, &fctx);
    sched_stats_get(s, &after);
    assert_int_equal(after.cached_tokens, 2 * 12);
    /* The reference's smaller context ends the candidates there. */
    ref.user = (void *)(uintptr_t)4;
    ref.max_new_tokens = 40;
    assert_int_equal(sched_submit(s, &ref, &id, &err), 0);
    simulate(&ref, 24, &st.x[id]);
    st.x[id].active = true;
    for (int c = 0; c < 3; c++) {
        assert_int_equal(st.x[id].cand[c].reason, SCHED_FINISH_CONTEXT);
        assert_int_equal(st.x[id].cand[c].count, 24 - 15);
    }
    run_until_idle(s, &st, &fctx);
    assert_int_equal(st.done, 4);
    /* A failing logits step fails its own request only. */
    sched_request_params fails = ref;
    fails.logits_step = failing_logits_step;
    fails.user = (void *)(uintptr_t)5;
    done_log log = {0};
    assert_int_equal(sched_submit(s, &fails, &id, &err), 0);
    while (sched_has_work(s)) assert_true(sched_step(s, log_done, &log, &err) >= 0);
    assert_int_equal(log.failed, 1);
    assert_string_equal(log.message, "logits step refused");
    kv_pool_stats ps;
    kv_pool_stats_get(pool, &ps);
    assert_int_equal(ps.used_blocks, 0);
    assert_int_equal(kv_pool_check(pool, NULL, 0, &err), 0);
    sched_destroy(s);
    fake_fini(&fctx);
    kv_pool_destroy(pool);
    free(st.x);
}

/* ---- bad input ---------------------------------------------------------------------------- */

static void test_submit_and_cancel_errors(void **state) {
    (void)state;
    kv_pool_params pp = {.num_layers = FAKE_LAYERS, .num_kv_heads = 1, .head_dim = FAKE_HEAD_DIM,
                         .block_size = 4, .num_blocks = 8, .allocate_storage = true};
    kv_pool *pool = NULL;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&pp, &pool, &err), 0);
    sched_model_info models[1] = {{&fake_arms[0], 5, FAKE_VOCAB, FAKE_HIDDEN, 24}};
    sched_params sp = {.max_candidates = 4};
    fake_ctx fctx;
    fake_init(&fctx);
    scheduler *s = NULL;
    assert_int_equal(sched_create(&sp, pool, models, 1, &fctx.base, &s, &err), 0);
    int32_t prompt[40];
    for (int i = 0; i < 40; i++) prompt[i] = (int32_t)(i % FAKE_VOCAB);
    sched_request_params good = {.model = 0, .prompt = prompt, .prompt_len = 5,
                                 .num_candidates = 2, .sampling = {0, 1, 0}, .seed = 1,
                                 .max_new_tokens = 4};
    uint64_t id = 99;
    struct {
        const char *what, *message;
        int code;
        sched_request_params p;
    } cases[] = {
        {"M = 0", "M = 0", DUEL_EINVAL, good},
        {"M above the limit", "outside 1..4", DUEL_EINVAL, good},
        {"unknown model", "unknown model index", DUEL_EINVAL, good},
        {"negative model", "unknown model index", DUEL_EINVAL, good},
        {"empty prompt", "empty prompt", DUEL_EINVAL, good},
        {"prompt as long as the context", "does not fit the model's context", DUEL_ELIMIT, good},
        {"token id out of range", "outside the vocabulary", DUEL_EINVAL, good},
        {"max_new_tokens 0", "max_new_tokens", DUEL_EINVAL, good},
        {"bad temperature", "temperature", DUEL_EINVAL, good},
        {"stop token out of range", "stop token", DUEL_EINVAL, good},
        {"too many stop tokens", "stop tokens", DUEL_EINVAL, good},
        {"larger than the pool", "KV blocks", DUEL_ELIMIT, good},
    };
    int32_t bad_prompt[2] = {3, FAKE_VOCAB};
    int32_t bad_stop[1] = {-1};
    cases[0].p.num_candidates = 0;
    cases[1].p.num_candidates = 5;
    cases[2].p.model = 1;
    cases[3].p.model = -1;
    cases[4].p.prompt_len = 0;
    cases[5].p.prompt_len = 24;
    cases[6].p.prompt = bad_prompt;
    cases[6].p.prompt_len = 2;
    cases[7].p.max_new_tokens = 0;
    cases[8].p.sampling.temperature = -1;
    cases[9].p.stop_tokens = bad_stop;
    cases[9].p.num_stop_tokens = 1;
    cases[10].p.stop_tokens = bad_stop;
    cases[10].p.num_stop_tokens = SCHED_MAX_STOP_TOKENS + 1;
    /* 23 tokens need 6 blocks of 4: fits this pool, not the 3-block pool below. */
    cases[11].p.prompt_len = 20;
    cases[11].p.max_new_tokens = 3;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0] - 1; i++) {
        memset(&err, 0, sizeof err);
        int rc = sched_submit(s, &cases[i].p, &id, &err);
        if (rc != cases[i].code || !strstr(err.message, cases[i].message))
            fail_msg("%s: rc %d, message '%s'", cases[i].what, rc, err.message);
        assert_int_equal(id, 0);
    }
    /* A pool too small for one candidate. */
    kv_pool_params small = pp;
    small.num_blocks = 3;
    kv_pool *small_pool = NULL;
    assert_int_equal(kv_pool_create(&small, &small_pool, &err), 0);
    scheduler *s2 = NULL;
    assert_int_equal(sched_create(&sp, small_pool, models, 1, &fctx.base, &s2, &err), 0);
    assert_int_equal(sched_submit(s2, &cases[11].p, &id, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, cases[11].message));
    sched_destroy(s2);
    kv_pool_destroy(small_pool);

    /* Scoring requests: forced tokens need counts, no reference, ids in the vocabulary, room in
     * the context; an arrival must have been issued. */
    int32_t f0[3] = {1, 2, 3}, f_bad[1] = {FAKE_VOCAB};
    const int32_t *forced[2] = {f0, f0};
    int counts[2] = {3, 3};
    sched_request_params scoring = good;
    scoring.forced = forced;
    assert_int_equal(sched_submit(s, &scoring, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "both tokens and counts"));
    scoring.forced_counts = counts;
    scoring.use_ref_model = true;
    scoring.logits_step = stress_logits_step;
    assert_int_equal(sched_submit(s, &scoring, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "no lockstep reference"));
    scoring.use_ref_model = false;
    scoring.logits_step = NULL;
    forced[1] = f_bad;
    counts[1] = 1;
    assert_int_equal(sched_submit(s, &scoring, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "forced candidate 1: token 0"));
    forced[1] = f0;
    counts[1] = 0;
    assert_int_equal(sched_submit(s, &scoring, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "forced candidate 1 has no tokens"));
    counts[1] = 3;
    scoring.prompt_len = 22; /* 22 + 3 > the context of 24 */
    assert_int_equal(sched_submit(s, &scoring, &id, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "exceed the model's context"));
    scoring.prompt_len = 5;
    scoring.arrival = 1000;
    assert_int_equal(sched_submit(s, &scoring, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "has not been issued"));

    /* Nothing was queued; a good request still runs to the end. */
    assert_false(sched_has_work(s));
    assert_int_equal(sched_submit(s, &good, &id, &err), 0);
    assert_int_equal(id, 1);
    /* Cancel of an unknown id. */
    assert_int_equal(sched_cancel(s, 77, NULL, NULL, &err), DUEL_ENOTFOUND);
    while (sched_has_work(s)) assert_true(sched_step(s, NULL, NULL, &err) > 0);
    /* Cancel of a finished request. */
    assert_int_equal(sched_cancel(s, 1, NULL, NULL, &err), DUEL_ENOTFOUND);
    assert_non_null(strstr(err.message, "request 1 is not active"));
    /* Idle step. */
    assert_int_equal(sched_step(s, NULL, NULL, &err), 0);

    assert_int_equal(sched_submit(s, &good, &id, &err), 0); /* left queued for sched_destroy */
    sched_stats ss;
    sched_stats_get(s, &ss);
    assert_int_equal(ss.requests_finished, 1);

    /* Bad create arguments. */
    scheduler *s3 = NULL;
    assert_int_equal(sched_create(&sp, pool, models, 0, &fctx.base, &s3, &err),
                     DUEL_EINVAL);
    sched_model_info twins[2] = {models[0], models[0]};
    assert_int_equal(sched_create(&sp, pool, twins, 2, &fctx.base, &s3, &err),
                     DUEL_EINVAL);
    assert_non_null(strstr(err.message, "share model id"));
    sched_params bad = {.max_candidates = SCHED_MAX_CANDIDATES + 1};
    assert_int_equal(sched_create(&bad, pool, models, 1, &fctx.base, &s3, &err),
                     DUEL_EINVAL);
    assert_null(s3);
    sched_destroy(s); /* with a request still queued: its blocks go back */
    fake_fini(&fctx);
    kv_pool_stats ps;
    kv_pool_stats_get(pool, &ps);
    assert_int_equal(ps.used_blocks, 0);
    kv_pool_destroy(pool);
}

static void log_done(void *vctx, const sched_event *ev) {
    done_log *d = vctx;
    if (ev->kind != SCHED_EVENT_DONE) return;
    if (ev->status) {
        d->failed++;
        snprintf(d->message, sizeof d->message, "%s", ev->message);
    } else {
        d->done++;
    }
}

static void test_forward_failure_fails_requests(void **state) {
    (void)state;
    kv_pool_params pp = {.num_layers = FAKE_LAYERS, .num_kv_heads = 1, .head_dim = FAKE_HEAD_DIM,
                         .block_size = 4, .num_blocks = 32, .allocate_storage = true};
    kv_pool *pool = NULL;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&pp, &pool, &err), 0);
    sched_model_info models[1] = {{&fake_arms[0], 5, FAKE_VOCAB, FAKE_HIDDEN, 48}};
    /* A forward that fails (the second call): the requests of that step get DONE with the
     * error; others go on. */
    fake_ctx fctx;
    fake_init(&fctx);
    fctx.fail_call = 2;
    scheduler *s = NULL;
    assert_int_equal(sched_create(NULL, pool, models, 1, &fctx.base, &s, &err), 0);
    int32_t prompt[6] = {2, 3, 4, 5, 6, 7};
    sched_request_params rp = {.prompt = prompt, .prompt_len = 6, .num_candidates = 3,
                               .sampling = {0, 1, 0}, .max_new_tokens = 5};
    uint64_t id;
    done_log log = {0};
    assert_int_equal(sched_submit(s, &rp, &id, &err), 0);
    assert_true(sched_step(s, log_done, &log, &err) > 0);                 /* prefill, fork */
    assert_int_equal(sched_step(s, log_done, &log, &err), DUEL_ENOMEM);   /* fails */
    assert_int_equal(log.failed, 1);
    assert_non_null(strstr(log.message, "simulated out of memory"));
    assert_false(sched_has_work(s));
    assert_int_equal(sched_check(s, &err), 0);
    assert_int_equal(sched_submit(s, &rp, &id, &err), 0);
    while (sched_has_work(s)) assert_true(sched_step(s, log_done, &log, &err) > 0);
    assert_int_equal(log.done, 1);
    sched_destroy(s);
    fake_fini(&fctx);
    kv_pool_destroy(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_tiny_pool),
        cmocka_unit_test(test_stress_hash_collisions),
        cmocka_unit_test(test_stress_roomy_pool),
        cmocka_unit_test(test_lockstep_reference),
        cmocka_unit_test(test_submit_and_cancel_errors),
        cmocka_unit_test(test_forward_failure_fails_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
