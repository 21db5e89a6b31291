/* test_engine_duel.c: the engine's duel path (engine.h, request.duel) on the random models of
 * the fwd_make_models fixture with a seeded ERM:
 *   - reference features: for every selecting strategy, the DUEL_READY event's features equal
 *     model_forward of the reference arm (another model than the policy) over prompt and
 *     prompt + candidate run by hand (rel. err. < 1e-5), its rewards equal erm_score of those
 *     features, and its pair, side swap and R-hat equal duel_select + duel_place +
 *     duel_estimated_regret with the rng seeded seed ^ ENGINE_DUEL_SEED_SALT; its ref_logprobs
 *     equal the reference's log-probability of each candidate given the prompt, summed by hand
 *     from model_forward's logits of every position (rel. err. < 1e-5);
 *   - policy features: the serving arm's own hidden states (rel. err. < 1e-4 against
 *     model_forward: batched decode vs one sequence);
 *   - PILAF (decoded in the scheduler's batched steps): the mode, both candidates' tokens and
 *     log-probabilities and the placement equal a slow reference that decodes token by token
 *     from full forwards of policy and reference (duel_pilaf_mix_logits, sampler_sample with
 *     seed + i); both modes are seen; a PLAIN request equals the same request without duel;
 *     beta = 4 changes the mixed candidates against beta = 0; the reference's KV is in the
 *     shared pool (its prompt blocks are found by the prefix cache the second time; a request
 *     that does not fit with its reference is refused) and back in the pool after each request
 *     and after a cancel mid-decode; the policy as its own reference gives the plain samples;
 *     with max_pilaf_jobs = 1 MIXED requests run one after another and a waiting one can be
 *     cancelled;
 *   - a duel cancelled during its reference pass (the scheduler's scoring request) ends with
 *     CANCELLED, leaves no block used, and the engine serves the next duel;
 *   - bad inputs: a strategy duel_select refuses (arena) and NaN rewards are ERROR events after
 *     which the engine still serves; an out-of-range strategy, M < 2, pilaf with M != 2 or a
 *     bad beta, no ERM, an ERM of the wrong width, an unknown reference arm and a max_pilaf_jobs
 *     out of range are refused synchronously. */
#include "test_helpers.h"

#include <math.h>
#include <unistd.h>

#include "duel.h"
#include "engine.h"
#include "erm.h"
#include "model.h"
#include "sampler.h"

enum { M = 4, NEW = 6, HEADS = 5, PILAF_NEW = NEW };

static model *load_model(const char *name) {
    const char *build = test_env("DUEL_BUILD_DIR", NULL);
    if (!build) fail_msg("DUEL_BUILD_DIR is not set (run through ctest)");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/test-models/%s", build, name);
    model *m = NULL;
    duel_error err = {0};
    if (model_load(dir, &m, &err)) fail_msg("model_load %s: %s", name, err.message);
    return m;
}

static erm *make_erm(int d_feat, uint64_t seed) {
    erm_config c = {.num_heads = HEADS, .d_feat = d_feat, .hidden = 16};
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    erm *r = NULL;
    duel_error err = {0};
    if (erm_create(&c, &rng, &r, &err)) fail_msg("erm_create: %s", err.message);
    /* Non-zero biases so that no reward is exactly tied. */
    for (int e = 0; e < HEADS; e++) r->params.fc3_bias[e] = 0.01f * (float)(e + 1);
    return r;
}

typedef struct engine_fx {
    model *policy, *ref;   /* the engine's arms */
    model *ref_hand;       /* the reference loaded again, for the by-hand features */
    model *policy_hand;
    erm *erm;
    engine *e;
    int H;
} engine_fx;

static void fx_open_bounded(engine_fx *f, engine_feature_source features, int max_pilaf_jobs) {
    memset(f, 0, sizeof *f);
    f->policy = load_model("tiny-llama-f32");
    f->ref = load_model("tiny-llama-bf16"); /* same shape, the weights rounded to bf16 */
    f->ref_hand = load_model("tiny-llama-bf16");
    f->policy_hand = load_model("tiny-llama-f32");
    f->H = model_get_config(f->policy)->hidden_size;
    f->erm = make_erm(2 * f->H, 77);
    engine_model_params mp[2] = {{"policy", f->policy, NULL}, {"ref", f->ref, NULL}};
    engine_params ep = {.models = mp, .num_models = 2, .kv_memory_bytes = (size_t)4 << 20,
                        .max_candidates = 16, .erm = f->erm, .reference_arm = "ref",
                        .features = features, .max_pilaf_jobs = max_pilaf_jobs};
    duel_error err = {0};
    if (engine_create(&ep, &f->e, &err)) fail_msg("engine_create: %s", err.message);
}

static void fx_open(engine_fx *f, engine_feature_source features) {
    fx_open_bounded(f, features, 0);
}

static void fx_close(engine_fx *f) {
    engine_destroy(f->e);
    model_free(f->policy);
    model_free(f->ref);
    model_free(f->ref_hand);
    model_free(f->policy_hand);
    erm_free(f->erm);
}

static engine_event *wait_event(engine *e) {
    engine_event *ev = NULL;
    engine_poll(e, 30.0, &ev);
    if (!ev) fail_msg("no engine event within 30 s");
    return ev;
}

static const int32_t PROMPT[] = {5, 17, 3, 42, 8, 11, 29};
#define PROMPT_LEN ((int)(sizeof PROMPT / sizeof PROMPT[0]))

static engine_request duel_request(duel_strategy s, uint64_t seed) {
    return (engine_request){.arm = "policy", .tokens = PROMPT, .num_tokens = PROMPT_LEN,
                            .num_candidates = M, .sampling = {3.0f, 1.0f, 0}, .seed = seed,
                            .max_new_tokens = NEW, .duel = true, .strategy = s};
}

/* Runs one duel request; fills tokens/counts and returns the DUEL_READY event (NULL when the
 * request ended in ERROR, whose message goes to *error_message). */
static engine_event *run_duel(engine_fx *f, const engine_request *req,
                              int32_t tokens[M][NEW], int counts[M], char **error_message) {
    uint64_t id;
    duel_error err = {0};
    if (engine_submit(f->e, req, &id, &err)) fail_msg("engine_submit: %s", err.message);
    engine_event *ready = NULL;
    *error_message = NULL;
    for (;;) {
        engine_event *ev = wait_event(f->e);
        assert_int_equal(ev->request_id, id);
        if (ev->kind == ENGINE_EVENT_CANDIDATE) {
            assert_true(ev->candidate >= 0 && ev->candidate < M);
            assert_true(ev->count >= 1 && ev->count <= NEW);
            memcpy(tokens[ev->candidate], ev->tokens, (size_t)ev->count * sizeof(int32_t));
            counts[ev->candidate] = ev->count;
            assert_null(ev->hidden); /* want_hidden was not asked */
        } else if (ev->kind == ENGINE_EVENT_DUEL_READY) {
            assert_null(ready);
            ready = ev;
            continue;
        } else if (ev->kind == ENGINE_EVENT_FINISHED) {
            assert_non_null(ready); /* DUEL_READY comes first */
            engine_event_free(ev);
            return ready;
        } else if (ev->kind == ENGINE_EVENT_ERROR) {
            assert_null(ready);
            *error_message = strdup(ev->message);
            engine_event_free(ev);
            return NULL;
        } else {
            fail_msg("unexpected event kind %d", (int)ev->kind);
        }
        engine_event_free(ev);
    }
}

static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    if (!(den > 0)) return INFINITY;
    double r = sqrt(num / den);
    return r == r ? r : INFINITY;
}

/* [M][2H] features by hand: the last prompt token's and the candidate's last token's final-norm
 * hidden states, each from a fresh cache. */
static void features_by_hand(model *m, int32_t tokens[M][NEW], const int counts[M], float *out) {
    int H = model_get_config(m)->hidden_size;
    duel_error err = {0};
    float *prompt_h = malloc((size_t)H * sizeof *prompt_h);
    model_kv_cache *kv = NULL;
    assert_int_equal(model_kv_cache_create(m, PROMPT_LEN + NEW, &kv, &err), 0);
    assert_int_equal(model_forward(m, kv, PROMPT, PROMPT_LEN, NULL, false, prompt_h, &err), 0);
    for (int i = 0; i < M; i++) {
        int32_t seq[PROMPT_LEN + NEW];
        memcpy(seq, PROMPT, sizeof PROMPT);
        memcpy(seq + PROMPT_LEN, tokens[i], (size_t)counts[i] * sizeof(int32_t));
        model_kv_cache_reset(kv);
        memcpy(out + (size_t)i * 2 * H, prompt_h, (size_t)H * sizeof(float));
        assert_int_equal(model_forward(m, kv, seq, PROMPT_LEN + counts[i], NULL, false,
                                       out + (size_t)i * 2 * H + H, &err),
                         0);
    }
    model_kv_cache_free(kv);
    free(prompt_h);
}

/* log pi(candidate i | prompt) by hand: model_forward's logits at every position of prompt +
 * candidate, log softmax in double at the positions that predict the candidate's tokens. */
static void ref_logprobs_by_hand(model *m, int32_t tokens[M][NEW], const int counts[M], double *out) {
    const int V = model_output_size(m), T = PROMPT_LEN + NEW;
    duel_error err = {0};
    float *logits = malloc((size_t)T * V * sizeof *logits);
    model_kv_cache *kv = NULL;
    assert_int_equal(model_kv_cache_create(m, T, &kv, &err), 0);
    for (int i = 0; i < M; i++) {
        int32_t seq[PROMPT_LEN + NEW];
        memcpy(seq, PROMPT, sizeof PROMPT);
        memcpy(seq + PROMPT_LEN, tokens[i], (size_t)counts[i] * sizeof(int32_t));
        model_kv_cache_reset(kv);
        assert_int_equal(model_forward(m, kv, seq, PROMPT_LEN + counts[i], logits, true, NULL, &err), 0);
        out[i] = 0;
        for (int t = 0; t < counts[i]; t++) {
            const float *row = logits + (size_t)(PROMPT_LEN - 1 + t) * V;
            double mx = row[0], sum = 0;
            for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < V; v++) sum += exp(row[v] - mx);
            out[i] += row[tokens[i][t]] - mx - log(sum);
        }
    }
    model_kv_cache_free(kv);
    free(logits);
}

/* Whether two candidates' rewards under some head are within rounding of each other (identical
 * candidates, say): the batched and the by-hand features may then order them differently. */
static bool near_tie(const float *r) {
    for (int i = 0; i < M; i++)
        for (int j = i + 1; j < M; j++)
            for (int e = 0; e < HEADS; e++) {
                double a = r[i * HEADS + e], b = r[j * HEADS + e];
                if (fabs(a - b) <= 1e-5 * (1 + fabs(a))) return true;
            }
    return false;
}

/* Returns whether the pair was compared with the by-hand features' selection (no near-tie);
 * otherwise the selection is checked on the event's own rewards. */
static bool check_against_hand(engine_fx *f, model *hand, const engine_event *ready,
                               duel_strategy s, uint64_t seed, int32_t tokens[M][NEW],
                               const int counts[M], double feature_tol, bool exact_pair) {
    int D = 2 * f->H;
    assert_int_equal(ready->count, M);
    assert_int_equal(ready->d_feat, D);
    assert_int_equal(ready->num_heads, HEADS);
    assert_int_equal((int)ready->strategy, (int)s);
    float feats[M * 2 * 64];
    assert_true(D <= 2 * 64);
    features_by_hand(hand, tokens, counts, feats);
    double fe = rel_err(ready->features, feats, (size_t)M * D);
    if (!(fe < feature_tol)) fail_msg("%s: features rel. err. %g", duel_strategy_name(s), fe);
    /* Rewards of the event's own features equal erm_score (exactly: same call). */
    float rewards[M * HEADS];
    duel_error err = {0};
    assert_int_equal(erm_score(f->erm, ready->features, M, rewards, &err), 0);
    assert_memory_equal(rewards, ready->rewards, sizeof rewards);
    /* And of the by-hand features, within the features' error. */
    float hand_rewards[M * HEADS];
    assert_int_equal(erm_score(f->erm, feats, M, hand_rewards, &err), 0);
    double re = rel_err(ready->rewards, hand_rewards, (size_t)M * HEADS);
    if (!(re < feature_tol * 100)) fail_msg("rewards rel. err. %g", re);
    /* The selection, by hand. */
    duel_rng rng;
    duel_rng_seed(&rng, seed ^ ENGINE_DUEL_SEED_SALT);
    duel_pair pair;
    duel_placement place;
    exact_pair = exact_pair && !near_tie(hand_rewards);
    const float *sel = exact_pair ? hand_rewards : ready->rewards;
    assert_int_equal(duel_select(s, sel, M, HEADS, &rng, &pair, &err), 0);
    duel_place(&pair, &rng, &place);
    assert_int_equal(pair.first, ready->pair.first);
    assert_int_equal(pair.second, ready->pair.second);
    assert_int_equal(pair.head_first, ready->pair.head_first);
    assert_int_equal(place.a, ready->placement.a);
    assert_int_equal(place.b, ready->placement.b);
    assert_int_equal(place.side_swap, ready->placement.side_swap);
    assert_true(ready->placement.a != ready->placement.b);
    double rhat;
    assert_int_equal(duel_estimated_regret(ready->rewards, M, HEADS, place.a, place.b, &rhat, &err),
                     0);
    assert_true(fabs(rhat - ready->regret_estimate) <= 1e-12);
    assert_true(ready->regret_estimate >= 0);
    assert_true(ready->decode_ms > 0 && ready->score_ms >= 0 && ready->select_ms >= 0);
    return exact_pair;
}

static void test_duel_reference_features(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_REFERENCE);
    const duel_strategy strategies[] = {DUEL_STRATEGY_EE_TS, DUEL_STRATEGY_BAI_TS,
                                        DUEL_STRATEGY_UNCERTAINTY, DUEL_STRATEGY_PASSIVE,
                                        DUEL_STRATEGY_BON};
    bool swapped[2] = {false, false};
    int strict = 0;
    for (int k = 0; k < 5; k++) {
        for (uint64_t seed = 100; seed < 104; seed++) {
            engine_request req = duel_request(strategies[k], seed);
            int32_t tokens[M][NEW];
            int counts[M] = {0};
            char *msg = NULL;
            engine_event *ready = run_duel(&f, &req, tokens, counts, &msg);
            if (!ready) fail_msg("duel failed: %s", msg);
            assert_true(ready->features_ms > 0);
            assert_non_null(ready->ref_logprobs);
            double want[M];
            ref_logprobs_by_hand(f.ref_hand, tokens, counts, want);
            for (int i = 0; i < M; i++)
                if (!(fabs(ready->ref_logprobs[i] - want[i]) <= 1e-5 * fabs(want[i])))
                    fail_msg("candidate %d: reference log-probability %.9g, by hand %.9g", i,
                             ready->ref_logprobs[i], want[i]);
            strict += check_against_hand(&f, f.ref_hand, ready, strategies[k], seed, tokens,
                                         counts, 1e-5, true);
            swapped[ready->placement.side_swap] = true;
            engine_event_free(ready);
        }
    }
    assert_true(swapped[0] && swapped[1]); /* 20 placements: both sides seen */
    if (strict < 10) fail_msg("only %d of 20 duels free of near-ties: the test is too weak", strict);
    fx_close(&f);
}

static void test_duel_policy_features(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_POLICY);
    engine_request req = duel_request(DUEL_STRATEGY_EE_TS, 9);
    int32_t tokens[M][NEW];
    int counts[M] = {0};
    char *msg = NULL;
    engine_event *ready = run_duel(&f, &req, tokens, counts, &msg);
    if (!ready) fail_msg("duel failed: %s", msg);
    assert_true(ready->features_ms == 0);
    assert_null(ready->ref_logprobs); /* no reference pass */
    check_against_hand(&f, f.policy_hand, ready, DUEL_STRATEGY_EE_TS, 9, tokens, counts, 1e-4,
                       false);
    /* Not the reference's features (the bf16 copy of the weights: about 1e-3 apart, well above
     * both tolerances, so each test notices the other source being used). */
    float ref_feats[M * 2 * 64];
    features_by_hand(f.ref_hand, tokens, counts, ref_feats);
    double other = rel_err(ready->features, ref_feats, (size_t)M * 2 * f.H);
    if (!(other > 3e-4)) fail_msg("policy features within %g of the reference's", other);
    engine_event_free(ready);
    fx_close(&f);
}

static void test_duel_errors_keep_serving(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_REFERENCE);
    int32_t tokens[M][NEW];
    int counts[M] = {0};
    char *msg = NULL;
    /* NaN rewards: ERROR naming the reward. */
    float saved = f.erm->params.fc3_bias[2];
    f.erm->params.fc3_bias[2] = NAN;
    engine_request req = duel_request(DUEL_STRATEGY_EE_TS, 2);
    assert_null(run_duel(&f, &req, tokens, counts, &msg));
    assert_non_null(strstr(msg, "NaN"));
    free(msg);
    f.erm->params.fc3_bias[2] = saved;
    /* Still serving. */
    req = duel_request(DUEL_STRATEGY_BON, 3);
    engine_event *ready = run_duel(&f, &req, tokens, counts, &msg);
    if (!ready) fail_msg("duel after errors failed: %s", msg);
    engine_event_free(ready);
    /* Refused at submit. */
    uint64_t id;
    duel_error err = {0};
    req = duel_request((duel_strategy)99, 4);
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "strategy"));
    req = duel_request(DUEL_STRATEGY_EE_TS, 4);
    req.num_candidates = 1;
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "at least 2"));
    req = duel_request(DUEL_STRATEGY_PILAF, 4); /* M = 4 */
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "exactly 2"));
    req.num_candidates = 2;
    req.pilaf_beta = -0.5;
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "beta"));
    req.pilaf_beta = NAN;
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    /* arena: a second arm is needed, another one, known, and an even M. */
    req = duel_request(DUEL_STRATEGY_ARENA, 1);
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "no arena_arm"));
    req.arena_arm = "policy";
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "arm \"policy\" twice"));
    req.arena_arm = "v9";
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_ENOTFOUND);
    assert_non_null(strstr(err.message, "arena arm \"v9\""));
    req.arena_arm = "ref";
    req.num_candidates = 3;
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "an even number"));
    engine_stats st;
    engine_stats_get(f.e, &st);
    assert_int_equal(st.requests_submitted, 4); /* two duels, each with its reference pass */
    fx_close(&f);
}

static engine_stats stats_when_idle(engine *e, uint64_t cancelled);

/* A duel cancelled once its candidates are done, while its reference pass (the scheduler's
 * scoring request) is queued or running: CANCELLED ends it (or, if the pass won the race,
 * DUEL_READY and FINISHED), no block stays used, and the next duel is served. */
static void test_duel_cancel_during_reference_pass(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_REFERENCE);
    /* One token per step: the reference pass takes dozens of steps, so the cancel, sent as the
     * last candidate's event arrives, nearly always finds it running. */
    engine_destroy(f.e);
    engine_model_params mp[2] = {{"policy", f.policy, NULL}, {"ref", f.ref, NULL}};
    engine_params ep = {.models = mp, .num_models = 2, .kv_memory_bytes = (size_t)4 << 20,
                        .max_candidates = 16, .erm = f.erm, .reference_arm = "ref",
                        .max_batch_tokens = 1};
    duel_error cerr = {0};
    if (engine_create(&ep, &f.e, &cerr)) fail_msg("engine_create: %s", cerr.message);
    int cancelled = 0, finished = 0;
    for (uint64_t seed = 1; seed <= 6; seed++) {
        engine_request req = duel_request(DUEL_STRATEGY_EE_TS, seed);
        uint64_t id;
        duel_error err = {0};
        if (engine_submit(f.e, &req, &id, &err)) fail_msg("engine_submit: %s", err.message);
        int candidates = 0;
        for (;;) {
            engine_event *ev = wait_event(f.e);
            engine_event_kind k = ev->kind;
            engine_event_free(ev);
            if (k == ENGINE_EVENT_CANDIDATE && ++candidates == M) {
                /* every candidate is out: the request is in its reference pass now */
                int rc = engine_cancel(f.e, id, &err);
                assert_true(rc == DUEL_OK || rc == DUEL_EINVAL);
            }
            if (k == ENGINE_EVENT_CANCELLED) {
                cancelled++;
                break;
            }
            if (k == ENGINE_EVENT_FINISHED) {
                finished++;
                break;
            }
            assert_true(k == ENGINE_EVENT_CANDIDATE || k == ENGINE_EVENT_DUEL_READY);
        }
        assert_int_equal(engine_cancel(f.e, id, &err), DUEL_EINVAL); /* ended */
    }
    /* The pass runs dozens of steps: a cancel losing the race six times in a row would mean the
     * pass ignores it. */
    assert_true(cancelled >= 1);
    engine_stats st = stats_when_idle(f.e, (uint64_t)cancelled);
    assert_int_equal(st.kv_used_blocks, 0);
    int32_t tokens[M][NEW];
    int counts[M] = {0};
    char *msg = NULL;
    engine_request req = duel_request(DUEL_STRATEGY_EE_TS, 99);
    engine_event *ready = run_duel(&f, &req, tokens, counts, &msg);
    if (!ready) fail_msg("duel after the cancels failed: %s", msg);
    engine_event_free(ready);
    printf("cancelled during the reference pass: %d of %d (%d finished first)\n", cancelled,
           cancelled + finished, finished);
    fx_close(&f);
}

/* Runs a plain (non-duel) request of n candidates on arm with seed; tokens into out. */
static void run_alone(engine_fx *f, const char *arm, int n, uint64_t seed, int32_t out[][NEW],
                      int counts[]) {
    engine_request req = {.arm = arm, .tokens = PROMPT, .num_tokens = PROMPT_LEN,
                          .num_candidates = n, .sampling = {3.0f, 1.0f, 0}, .seed = seed,
                          .max_new_tokens = NEW};
    uint64_t id;
    duel_error err = {0};
    if (engine_submit(f->e, &req, &id, &err)) fail_msg("engine_submit: %s", err.message);
    for (;;) {
        engine_event *ev = wait_event(f->e);
        engine_event_kind k = ev->kind;
        if (k == ENGINE_EVENT_CANDIDATE) {
            memcpy(out[ev->candidate], ev->tokens, (size_t)ev->count * sizeof(int32_t));
            counts[ev->candidate] = ev->count;
        }
        engine_event_free(ev);
        if (k == ENGINE_EVENT_FINISHED) return;
        assert_int_equal(k, ENGINE_EVENT_CANDIDATE);
    }
}

/* arena: M/2 candidates from each arm, each half equal to that arm alone with the same seeds;
 * features of all M from the reference; each half scored by the ERM; the pair is each arm's best
 * by ensemble mean (duel_select_arena), placed by duel_place on the selection rng. */
static void test_duel_arena(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_REFERENCE);
    bool swapped[2] = {false, false};
    for (uint64_t seed = 300; seed < 306; seed++) {
        engine_request req = duel_request(DUEL_STRATEGY_ARENA, seed);
        req.arena_arm = "ref";
        uint64_t id;
        duel_error err = {0};
        if (engine_submit(f.e, &req, &id, &err)) fail_msg("engine_submit: %s", err.message);
        int32_t tokens[M][NEW];
        int counts[M] = {0}, seen = 0;
        engine_event *ready = NULL;
        for (;;) {
            engine_event *ev = wait_event(f.e);
            assert_int_equal(ev->request_id, id);
            if (ev->kind == ENGINE_EVENT_CANDIDATE) {
                int c = ev->candidate;
                assert_true(c >= 0 && c < M);
                assert_non_null(ev->arm);
                assert_string_equal(ev->arm, c < M / 2 ? "policy" : "ref");
                memcpy(tokens[c], ev->tokens, (size_t)ev->count * sizeof(int32_t));
                counts[c] = ev->count;
                seen++;
            } else if (ev->kind == ENGINE_EVENT_DUEL_READY) {
                ready = ev;
                continue;
            } else {
                if (ev->kind != ENGINE_EVENT_FINISHED)
                    fail_msg("arena: event %d %s", ev->kind, ev->message ? ev->message : "");
                assert_non_null(ready);
                assert_int_equal(ev->counts.generated_tokens, M * NEW);
                assert_int_equal(ev->counts.prompt_computed, 2 * PROMPT_LEN); /* once per arm */
                engine_event_free(ev);
                break;
            }
            engine_event_free(ev);
        }
        assert_int_equal(seen, M);
        /* Each half equals its arm alone: policy with seed, ref with seed + M/2. */
        int32_t alone[M][NEW];
        int alone_counts[M] = {0};
        run_alone(&f, "policy", M / 2, seed, alone, alone_counts);
        run_alone(&f, "ref", M / 2, seed + M / 2, alone + M / 2, alone_counts + M / 2);
        for (int c = 0; c < M; c++) {
            assert_int_equal(counts[c], alone_counts[c]);
            assert_memory_equal(tokens[c], alone[c], (size_t)counts[c] * sizeof(int32_t));
        }
        /* Features of all M on the reference, rewards by the ERM, each arm's best. */
        int D = 2 * f.H;
        assert_int_equal(ready->count, M);
        assert_int_equal(ready->arena_split, M / 2);
        assert_int_equal((int)ready->strategy, (int)DUEL_STRATEGY_ARENA);
        float feats[M * 2 * 64];
        features_by_hand(f.ref_hand, tokens, counts, feats);
        double fe = rel_err(ready->features, feats, (size_t)M * D);
        if (!(fe < 1e-5)) fail_msg("arena: features rel. err. %g", fe);
        float rewards[M * HEADS];
        /* Each half scored on its own (by its arm's ERM; here both use the engine's). */
        assert_int_equal(erm_score(f.erm, ready->features, M / 2, rewards, &err), 0);
        assert_int_equal(erm_score(f.erm, ready->features + (M / 2) * D, M / 2,
                                   rewards + (M / 2) * HEADS, &err),
                         0);
        assert_memory_equal(rewards, ready->rewards, sizeof rewards);
        int first = -1, second = -1;
        assert_int_equal(duel_select_arena(rewards, M / 2, HEADS, rewards + (M / 2) * HEADS,
                                           M / 2, HEADS, &first, &second, &err),
                         0);
        assert_int_equal(ready->pair.first, first);
        assert_int_equal(ready->pair.second, M / 2 + second);
        assert_true(ready->pair.first < M / 2 && ready->pair.second >= M / 2);
        duel_rng rng;
        duel_rng_seed(&rng, seed ^ ENGINE_DUEL_SEED_SALT);
        duel_placement place;
        duel_place(&ready->pair, &rng, &place);
        assert_int_equal(place.a, ready->placement.a);
        assert_int_equal(place.b, ready->placement.b);
        swapped[place.side_swap] = true;
        engine_event_free(ready);
    }
    assert_true(swapped[0] && swapped[1]);
    /* A cancelled arena request ends with one CANCELLED event and frees both halves. */
    engine_request req = duel_request(DUEL_STRATEGY_ARENA, 9);
    req.arena_arm = "ref";
    req.max_new_tokens = 400;
    uint64_t id;
    duel_error err = {0};
    assert_int_equal(engine_submit(f.e, &req, &id, &err), 0);
    assert_int_equal(engine_cancel(f.e, id, &err), 0);
    for (;;) {
        engine_event *ev = wait_event(f.e);
        engine_event_kind k = ev->kind;
        engine_event_free(ev);
        if (k == ENGINE_EVENT_CANCELLED) break;
        assert_true(k == ENGINE_EVENT_CANDIDATE);
    }
    engine_event *extra = NULL;
    engine_poll(f.e, 0.3, &extra);
    assert_null(extra);
    engine_stats st;
    engine_stats_get(f.e, &st);
    assert_int_equal(st.kv_used_blocks, 0);
    assert_int_equal(st.active_requests, 0);
    fx_close(&f);
    /* Policy features cannot compare two arms' candidates. */
    fx_open(&f, ENGINE_FEATURES_POLICY);
    req = duel_request(DUEL_STRATEGY_ARENA, 9);
    req.arena_arm = "ref";
    assert_int_equal(engine_submit(f.e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "reference features"));
    fx_close(&f);
}

/* ---- PILAF -------------------------------------------------------------------------------- */

/* Whether a PILAF request of this seed draws the MIXED mode (the selection rng's first draw). */
static bool mode_is_mixed(uint64_t seed) {
    duel_rng sel;
    duel_rng_seed(&sel, seed ^ ENGINE_DUEL_SEED_SALT);
    return duel_pilaf_draw_mode(&sel) == DUEL_PILAF_MIXED;
}

/* A PILAF request's outcome, as its events told it. */
typedef struct pilaf_run {
    int32_t tokens[2][PILAF_NEW];
    int counts[2];
    double logprob[2];
    bool mixed;
    duel_placement placement;
    duel_pair pair;
    engine_counts finished;
} pilaf_run;

static engine_request pilaf_request(uint64_t seed, double beta) {
    engine_request r = duel_request(DUEL_STRATEGY_PILAF, seed);
    r.num_candidates = 2;
    r.pilaf_beta = beta;
    return r;
}

/* Runs one PILAF request to its FINISHED event. */
static void run_pilaf(engine_fx *f, const engine_request *req, pilaf_run *out) {
    memset(out, 0, sizeof *out);
    uint64_t id;
    duel_error err = {0};
    if (engine_submit(f->e, req, &id, &err)) fail_msg("engine_submit: %s", err.message);
    bool ready = false;
    for (;;) {
        engine_event *ev = wait_event(f->e);
        assert_int_equal(ev->request_id, id);
        engine_event_kind k = ev->kind;
        if (k == ENGINE_EVENT_CANDIDATE) {
            assert_true(ev->candidate == 0 || ev->candidate == 1);
            assert_true(ev->count >= 1 && ev->count <= PILAF_NEW);
            memcpy(out->tokens[ev->candidate], ev->tokens, (size_t)ev->count * sizeof(int32_t));
            out->counts[ev->candidate] = ev->count;
            out->logprob[ev->candidate] = ev->logprob_sum;
        } else if (k == ENGINE_EVENT_DUEL_READY) {
            ready = true;
            assert_int_equal(ev->count, 2);
            assert_int_equal((int)ev->strategy, (int)DUEL_STRATEGY_PILAF);
            assert_null(ev->rewards);
            assert_null(ev->features);
            out->mixed = ev->pilaf_mixed;
            out->pair = ev->pair;
            out->placement = ev->placement;
        } else if (k == ENGINE_EVENT_FINISHED) {
            assert_true(ready); /* DUEL_READY comes first */
            out->finished = ev->counts;
            engine_event_free(ev);
            return;
        } else if (k != ENGINE_EVENT_PROGRESS) {
            fail_msg("pilaf: event %d %s", (int)k, ev->message ? ev->message : "");
        }
        engine_event_free(ev);
    }
}

/* The last position's logits of prompt + tokens[0..n), by a full forward from an empty cache
 * (no cache reuse at all: the obviously correct way). */
static void full_forward_logits(model *m, model_kv_cache *kv, const int32_t *prompt, int prompt_len,
                                const int32_t *tokens, int n, float *logits) {
    int32_t seq[128];
    assert_true(prompt_len + n <= 128);
    memcpy(seq, prompt, (size_t)prompt_len * sizeof(int32_t));
    memcpy(seq + prompt_len, tokens, (size_t)n * sizeof(int32_t));
    model_kv_cache_reset(kv);
    duel_error err = {0};
    assert_int_equal(model_forward(m, kv, seq, prompt_len + n, logits, false, NULL, &err), 0);
}

/* PILAF, slowly: the mode from the selection rng; then each candidate, one token at a time, from
 * full forwards of the policy and (mixed) the reference over prompt + the tokens so far, the
 * logits mixed by duel_pilaf_mix_logits (plus for candidate 0, minus for 1) and sampled with
 * seed + i; no stop tokens, so each candidate has exactly max_new tokens. */
static void pilaf_slow_reference(engine_fx *f, const engine_request *req, pilaf_run *out) {
    memset(out, 0, sizeof *out);
    out->mixed = mode_is_mixed(req->seed);
    int V = model_output_size(f->policy_hand), T = req->num_tokens + req->max_new_tokens;
    float *lp = malloc((size_t)V * sizeof *lp), *lr = malloc((size_t)V * sizeof *lr);
    float *mix = malloc((size_t)V * sizeof *mix);
    model_kv_cache *kp = NULL, *kr = NULL;
    duel_error err = {0};
    assert_int_equal(model_kv_cache_create(f->policy_hand, T, &kp, &err), 0);
    assert_int_equal(model_kv_cache_create(f->ref_hand, T, &kr, &err), 0);
    for (int i = 0; i < 2; i++) {
        duel_rng rng;
        duel_rng_seed(&rng, req->seed + (uint64_t)i);
        for (int t = 0; t < req->max_new_tokens; t++) {
            full_forward_logits(f->policy_hand, kp, req->tokens, req->num_tokens, out->tokens[i],
                                t, lp);
            const float *logits = lp;
            if (out->mixed) {
                full_forward_logits(f->ref_hand, kr, req->tokens, req->num_tokens,
                                    out->tokens[i], t, lr);
                assert_int_equal(duel_pilaf_mix_logits(lp, lr, V, req->pilaf_beta,
                                                       i == 0 ? mix : NULL, i == 1 ? mix : NULL,
                                                       &err),
                                 0);
                logits = mix;
            }
            float l = 0;
            int32_t tok = sampler_sample(logits, V, &req->sampling, &rng, &l, &err);
            assert_true(tok >= 0);
            out->tokens[i][out->counts[i]++] = tok;
            out->logprob[i] += l;
        }
    }
    model_kv_cache_free(kp);
    model_kv_cache_free(kr);
    free(lp);
    free(lr);
    free(mix);
}

/* Seeds whose PILAF mode is MIXED (want true) or PLAIN, from start on. */
static uint64_t pilaf_seed(uint64_t start, bool want_mixed) {
    for (uint64_t s = start;; s++)
        if (mode_is_mixed(s) == want_mixed) return s;
}

/* Waits until the engine's stats snapshot was taken after every request ended (cancelled >=
 * the count given, nothing active), then returns it. */
static engine_stats stats_when_idle(engine *e, uint64_t cancelled) {
    engine_stats st;
    for (int i = 0; i < 30000; i++) {
        engine_stats_get(e, &st);
        if (st.requests_cancelled >= cancelled && st.active_requests == 0 &&
            st.pilaf_running == 0 && st.pilaf_queued == 0)
            return st;
        usleep(1000);
    }
    fail_msg("the engine did not become idle in 30 s");
    return st;
}

/* PILAF against the slow reference: for 8 seeds (both modes seen), the mode, both candidates'
 * tokens and log-probabilities (under the distribution each sampled from) and the placement
 * equal pilaf_slow_reference; a PLAIN request's candidates equal the same request without duel;
 * a MIXED request prefills the prompt once per model (prompt positions computed + cached = 2 x
 * the prompt); beta = 4 changes some mixed candidates against beta = 0. */
static void test_duel_pilaf_equals_slow_reference(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_REFERENCE);
    int modes[2] = {0, 0}, differ_from_plain = 0;
    for (uint64_t seed = 20; seed < 28; seed++) {
        engine_request req = pilaf_request(seed, 4.0); /* large: y+ and y- visibly differ */
        pilaf_run got, want;
        run_pilaf(&f, &req, &got);
        pilaf_slow_reference(&f, &req, &want);
        assert_int_equal(got.mixed, want.mixed);
        modes[got.mixed]++;
        for (int i = 0; i < 2; i++) {
            assert_int_equal(got.counts[i], PILAF_NEW);
            assert_memory_equal(got.tokens[i], want.tokens[i], PILAF_NEW * sizeof(int32_t));
            if (!(fabs(got.logprob[i] - want.logprob[i]) <= 1e-4 * fabs(want.logprob[i])))
                fail_msg("seed %llu candidate %d: log-probability %.9g, slowly %.9g",
                         (unsigned long long)seed, i, got.logprob[i], want.logprob[i]);
        }
        assert_int_equal(got.pair.first, 0);
        assert_int_equal(got.pair.second, 1);
        duel_rng sel;
        duel_rng_seed(&sel, seed ^ ENGINE_DUEL_SEED_SALT);
        duel_pilaf_draw_mode(&sel);
        duel_placement place;
        duel_place(&got.pair, &sel, &place);
        assert_int_equal(place.a, got.placement.a);
        assert_int_equal(place.side_swap, got.placement.side_swap);
        int runs = got.mixed ? 2 : 1; /* models the prompt runs on */
        assert_int_equal(got.finished.prompt_computed + got.finished.cached_tokens,
                         runs * PROMPT_LEN);
        assert_int_equal(got.finished.generated_tokens, 2 * PILAF_NEW);
        if (!got.mixed) {
            int32_t alone[2][NEW];
            int alone_counts[2] = {0};
            run_alone(&f, "policy", 2, seed, alone, alone_counts);
            for (int i = 0; i < 2; i++)
                assert_memory_equal(alone[i], got.tokens[i], PILAF_NEW * sizeof(int32_t));
        } else {
            engine_request p0 = pilaf_request(seed, 0.0);
            pilaf_run r0;
            run_pilaf(&f, &p0, &r0);
            for (int i = 0; i < 2; i++)
                differ_from_plain +=
                    memcmp(r0.tokens[i], got.tokens[i], PILAF_NEW * sizeof(int32_t)) != 0;
        }
    }
    if (!modes[0] || !modes[1]) fail_msg("8 seeds drew modes plain %d, mixed %d", modes[0], modes[1]);
    assert_true(differ_from_plain > 0);
    fx_close(&f);
}

/* The reference's KV lives in the engine's shared pool: a MIXED request of a 40-token prompt
 * run twice attaches both models' two full prompt blocks from the prefix cache the second time
 * (2 x 32 positions cached), and every block is back in the pool after each. A MIXED request
 * cancelled mid-decode (after its first progress) ends with one CANCELLED event, no further
 * event, and its blocks (policy and reference) back in the pool; the engine serves on. A PILAF
 * request whose candidate and reference sequence do not fit the pool together is refused at
 * submit (the same request without duel fits). */
static void test_duel_pilaf_kv_and_cancel(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_REFERENCE);
    int32_t prompt[40];
    for (int i = 0; i < 40; i++) prompt[i] = (int32_t)(3 + (i * 37) % 500);
    uint64_t s1 = pilaf_seed(40, true), s2 = pilaf_seed(s1 + 1, true);
    engine_request req = pilaf_request(s1, 0.5);
    req.tokens = prompt;
    req.num_tokens = 40;
    pilaf_run first, second;
    run_pilaf(&f, &req, &first);
    assert_true(first.mixed);
    assert_int_equal(first.finished.cached_tokens, 0);
    assert_int_equal(first.finished.prompt_computed, 2 * 40);
    engine_stats st = stats_when_idle(f.e, 0);
    assert_int_equal(st.kv_used_blocks, 0);
    assert_true(st.kv_cached_blocks >= 4); /* both models' prompt blocks, at least */
    req.seed = s2;
    run_pilaf(&f, &req, &second);
    assert_int_equal(second.finished.cached_tokens, 2 * 32);
    assert_int_equal(second.finished.prompt_computed, 2 * 40 - 2 * 32);
    st = stats_when_idle(f.e, 0);
    assert_int_equal(st.kv_used_blocks, 0);

    /* Cancel mid-decode. */
    req = pilaf_request(pilaf_seed(s2 + 1, true), 1.0);
    req.max_new_tokens = 1000;
    req.want_progress = true;
    uint64_t id;
    duel_error err = {0};
    assert_int_equal(engine_submit(f.e, &req, &id, &err), 0);
    engine_event *ev = wait_event(f.e);
    assert_int_equal(ev->kind, ENGINE_EVENT_PROGRESS); /* decoding */
    engine_event_free(ev);
    assert_int_equal(engine_cancel(f.e, id, &err), 0);
    for (;;) {
        ev = wait_event(f.e);
        engine_event_kind k = ev->kind;
        engine_event_free(ev);
        if (k == ENGINE_EVENT_CANCELLED) break;
        assert_int_equal(k, ENGINE_EVENT_PROGRESS);
    }
    engine_event *extra = NULL;
    engine_poll(f.e, 0.1, &extra);
    assert_null(extra);
    st = stats_when_idle(f.e, 1);
    assert_int_equal(st.kv_used_blocks, 0);
    assert_int_equal(st.requests_cancelled, 1);
    assert_int_equal(engine_cancel(f.e, id, &err), DUEL_EINVAL); /* already ended */
    pilaf_run after;
    req = pilaf_request(s1, 0.5);
    run_pilaf(&f, &req, &after); /* still serving */
    fx_close(&f);

    /* A pool of 12 blocks of 16: a candidate of 7 + 100 tokens needs 7, with its reference 14. */
    model *m = load_model("tiny-llama-f32");
    const model_config *c = model_get_config(m);
    size_t block_bytes = (size_t)2 * c->num_layers * c->num_kv_heads * c->head_dim * 16 * 4;
    engine_model_params mp = {"policy", m, NULL};
    engine_params ep = {.models = &mp, .num_models = 1, .kv_memory_bytes = 12 * block_bytes};
    engine *e = NULL;
    assert_int_equal(engine_create(&ep, &e, &err), 0);
    engine_stats es;
    engine_stats_get(e, &es);
    assert_int_equal(es.kv_blocks, 12);
    req = pilaf_request(s1, 0.5);
    req.arm = NULL;
    req.max_new_tokens = 100;
    assert_int_equal(engine_submit(e, &req, &id, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "with its reference sequence"));
    req.duel = false;
    assert_int_equal(engine_submit(e, &req, &id, &err), 0);
    /* The policy as its own reference (one arm): both sequences of a candidate are the same
     * model's, so their full blocks are the same blocks (deduplicated at commit); (1 + b) h -
     * b h = h, so the MIXED candidates are the plain samples of the same seed. */
    engine_request mixed = pilaf_request(pilaf_seed(s1, true), 0.5);
    mixed.arm = NULL;
    mixed.tokens = prompt;
    mixed.num_tokens = 40;
    engine_request plain_twin = mixed;
    plain_twin.duel = false;
    engine_fx one = {.e = e};
    pilaf_run got, twin;
    for (;;) { /* drain the request above */
        engine_event *d = wait_event(e);
        engine_event_kind k = d->kind;
        engine_event_free(d);
        if (k == ENGINE_EVENT_FINISHED) break;
    }
    run_pilaf(&one, &mixed, &got);
    assert_true(got.mixed);
    assert_int_equal(got.finished.prompt_computed + got.finished.cached_tokens, 2 * 40);
    assert_int_equal(engine_submit(e, &plain_twin, &id, &err), 0);
    for (;;) {
        engine_event *d = wait_event(e);
        engine_event_kind k = d->kind;
        if (k == ENGINE_EVENT_CANDIDATE) {
            memcpy(twin.tokens[d->candidate], d->tokens, (size_t)d->count * sizeof(int32_t));
            twin.counts[d->candidate] = d->count;
        }
        engine_event_free(d);
        if (k == ENGINE_EVENT_FINISHED) break;
    }
    for (int i = 0; i < 2; i++) {
        assert_int_equal(twin.counts[i], got.counts[i]);
        assert_memory_equal(twin.tokens[i], got.tokens[i], (size_t)got.counts[i] * sizeof(int32_t));
    }
    st = stats_when_idle(e, 0);
    assert_int_equal(st.kv_used_blocks, 0);
    engine_destroy(e);
    model_free(m);
}

/* max_pilaf_jobs = 1: four MIXED requests submitted together; the first decodes, the others
 * wait. The third is cancelled while it waits (one CANCELLED event, nothing before it); each of
 * the others has its first event only after the previous one's FINISHED (one at a time, in
 * submission order) and their candidates equal the slow reference. PLAIN requests do not count:
 * one runs while a MIXED one holds the slot. */
static void test_duel_pilaf_job_bound(void **state) {
    (void)state;
    enum { JOBS = 4, CANCELLED_JOB = 2 };
    engine_fx f;
    fx_open_bounded(&f, ENGINE_FEATURES_REFERENCE, 1);
    uint64_t seeds[JOBS], ids[JOBS];
    duel_error err = {0};
    for (int k = 0; k < JOBS; k++) {
        seeds[k] = pilaf_seed(k ? seeds[k - 1] + 1 : 60, true);
        engine_request req = pilaf_request(seeds[k], 0.5);
        req.want_progress = true;
        if (k == 0) req.max_new_tokens = 200; /* long, so that the others wait behind it */
        if (engine_submit(f.e, &req, &ids[k], &err)) fail_msg("submit: %s", err.message);
    }
    /* The others wait (stats are published after every step). */
    for (int i = 0;; i++) {
        engine_stats st;
        engine_stats_get(f.e, &st);
        if (st.pilaf_queued == JOBS - 1 && st.pilaf_running == 1) break;
        if (i == 30000) fail_msg("never saw 1 running and %d queued pilaf requests", JOBS - 1);
        usleep(1000);
    }
    assert_int_equal(engine_cancel(f.e, ids[CANCELLED_JOB], &err), 0);
    /* A PLAIN request is not held back by the bound (it may finish before the first). */
    engine_request plain = pilaf_request(pilaf_seed(seeds[JOBS - 1] + 1, false), 0.5);
    uint64_t plain_id;
    assert_int_equal(engine_submit(f.e, &plain, &plain_id, &err), 0);
    bool finished[JOBS] = {false}, plain_done = false, cancelled = false;
    pilaf_run got[JOBS];
    memset(got, 0, sizeof got);
    int last_finished = -1, left = JOBS; /* the cancelled one counts when its event comes */
    while (left > 0 || !plain_done) {
        engine_event *ev = wait_event(f.e);
        if (ev->request_id == plain_id) {
            plain_done |= ev->kind == ENGINE_EVENT_FINISHED;
            engine_event_free(ev);
            continue;
        }
        int k = 0;
        while (k < JOBS && ids[k] != ev->request_id) k++;
        assert_true(k < JOBS);
        if (k == CANCELLED_JOB) {
            assert_int_equal(ev->kind, ENGINE_EVENT_CANCELLED);
            assert_false(finished[0]); /* cancelled while the first still decoded */
            cancelled = true;
            left--;
        } else {
            /* The previous MIXED request (the cancelled one skipped) has finished. */
            int prev = k - 1 == CANCELLED_JOB ? k - 2 : k - 1;
            if (prev >= 0 && !finished[prev])
                fail_msg("request %d had event %d before request %d finished", k + 1, ev->kind,
                         prev + 1);
            assert_true(ev->kind != ENGINE_EVENT_ERROR && ev->kind != ENGINE_EVENT_CANCELLED);
            if (ev->kind == ENGINE_EVENT_CANDIDATE && ev->count <= PILAF_NEW) {
                memcpy(got[k].tokens[ev->candidate], ev->tokens,
                       (size_t)ev->count * sizeof(int32_t));
                got[k].counts[ev->candidate] = ev->count;
            }
            if (ev->kind == ENGINE_EVENT_FINISHED) {
                finished[k] = true;
                assert_true(k > last_finished); /* in submission order */
                last_finished = k;
                left--;
            }
        }
        engine_event_free(ev);
    }
    assert_true(cancelled);
    for (int k = 1; k < JOBS; k++) {
        if (k == CANCELLED_JOB) continue;
        pilaf_run want;
        engine_request req = pilaf_request(seeds[k], 0.5);
        pilaf_slow_reference(&f, &req, &want);
        for (int i = 0; i < 2; i++) {
            assert_int_equal(got[k].counts[i], PILAF_NEW);
            assert_memory_equal(got[k].tokens[i], want.tokens[i], PILAF_NEW * sizeof(int32_t));
        }
    }
    engine_stats st = stats_when_idle(f.e, 1);
    assert_int_equal(st.kv_used_blocks, 0);
    assert_int_equal(st.requests_finished, JOBS - 1 + 1); /* and the plain one */
    fx_close(&f);
}

static void test_duel_bad_engine_params(void **state) {
    (void)state;
    model *m = load_model("tiny-llama-f32");
    int H = model_get_config(m)->hidden_size;
    erm *wrong = make_erm(2 * H + 1, 1);
    erm *right = make_erm(2 * H, 1);
    engine_model_params mp = {"policy", m, NULL};
    engine_params ep = {.models = &mp, .num_models = 1, .kv_memory_bytes = (size_t)1 << 20};
    engine *e = NULL;
    duel_error err = {0};
    ep.erm = wrong;
    assert_int_equal(engine_create(&ep, &e, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "ERM takes"));
    assert_null(e);
    ep.erm = right;
    ep.reference_arm = "nope";
    assert_int_equal(engine_create(&ep, &e, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "nope"));
    ep.reference_arm = NULL;
    ep.features = (engine_feature_source)7;
    assert_int_equal(engine_create(&ep, &e, &err), DUEL_EINVAL);
    ep.features = ENGINE_FEATURES_REFERENCE;
    ep.max_pilaf_jobs = -1;
    assert_int_equal(engine_create(&ep, &e, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "max_pilaf_jobs -1"));
    ep.max_pilaf_jobs = ENGINE_MAX_PILAF_JOBS + 1;
    assert_int_equal(engine_create(&ep, &e, &err), DUEL_EINVAL);
    assert_null(e);
    ep.max_pilaf_jobs = 0;
    /* No ERM: duel requests are refused, plain ones served. */
    ep.features = ENGINE_FEATURES_REFERENCE;
    ep.erm = NULL;
    assert_int_equal(engine_create(&ep, &e, &err), 0);
    engine_request req = duel_request(DUEL_STRATEGY_EE_TS, 1);
    uint64_t id;
    assert_int_equal(engine_submit(e, &req, &id, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "no ERM"));
    engine_destroy(e);
    erm_free(wrong);
    erm_free(right);
    model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duel_reference_features),
        cmocka_unit_test(test_duel_cancel_during_reference_pass),
        cmocka_unit_test(test_duel_policy_features),
        cmocka_unit_test(test_duel_errors_keep_serving),
        cmocka_unit_test(test_duel_pilaf_equals_slow_reference),
        cmocka_unit_test(test_duel_pilaf_kv_and_cancel),
        cmocka_unit_test(test_duel_pilaf_job_bound),
        cmocka_unit_test(test_duel_bad_engine_params),
        cmocka_unit_test(test_duel_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
