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
 *   - PILAF: the mode, both candidates' tokens and the placement equal a by-hand lockstep decode
 *     (model_forward on policy and reference, duel_pilaf_mix_logits, sampler_sample with
 *     seed + i); both modes are seen; beta = 4 changes the mixed candidates against beta = 0;
 *   - bad inputs: a strategy duel_select refuses (arena) and NaN rewards are ERROR events after
 *     which the engine still serves; an out-of-range strategy, M < 2, pilaf with M != 2 or a bad beta, no ERM, an ERM of the wrong
 *     width and an unknown reference arm are refused synchronously. */
#include "test_helpers.h"

#include <math.h>

#include "duel.h"
#include "engine.h"
#include "erm.h"
#include "model.h"
#include "sampler.h"

enum { M = 4, NEW = 6, HEADS = 5 };

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

static void fx_open(engine_fx *f, engine_feature_source features) {
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
                        .features = features};
    duel_error err = {0};
    if (engine_create(&ep, &f->e, &err)) fail_msg("engine_create: %s", err.message);
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
    assert_int_equal(st.requests_submitted, 2);
    fx_close(&f);
}

/* PILAF by hand: the mode from the selection rng, then each candidate decoded in lockstep on
 * the policy and the reference with model_forward, its logits mixed by duel_pilaf_mix_logits
 * (MIXED) and sampled with seed + i. */
static bool pilaf_by_hand(engine_fx *f, uint64_t seed, double beta, int32_t out[2][NEW],
                          int counts[2], double logprob[2]) {
    duel_rng sel;
    duel_rng_seed(&sel, seed ^ ENGINE_DUEL_SEED_SALT);
    bool mixed = duel_pilaf_draw_mode(&sel) == DUEL_PILAF_MIXED;
    int V = model_output_size(f->policy_hand);
    float *lp = malloc((size_t)V * sizeof *lp), *lr = malloc((size_t)V * sizeof *lr);
    float *mix = malloc((size_t)V * sizeof *mix);
    duel_error err = {0};
    sampler_params sp = {3.0f, 1.0f, 0};
    for (int i = 0; i < 2; i++) {
        model_kv_cache *kp = NULL, *kr = NULL;
        assert_int_equal(model_kv_cache_create(f->policy_hand, PROMPT_LEN + NEW, &kp, &err), 0);
        assert_int_equal(model_kv_cache_create(f->ref_hand, PROMPT_LEN + NEW, &kr, &err), 0);
        assert_int_equal(model_forward(f->policy_hand, kp, PROMPT, PROMPT_LEN, lp, false, NULL, &err), 0);
        assert_int_equal(model_forward(f->ref_hand, kr, PROMPT, PROMPT_LEN, lr, false, NULL, &err), 0);
        duel_rng rng;
        duel_rng_seed(&rng, seed + (uint64_t)i);
        logprob[i] = 0;
        for (counts[i] = 0; counts[i] < NEW;) {
            const float *logits = lp;
            if (mixed) {
                assert_int_equal(duel_pilaf_mix_logits(lp, lr, V, beta, i == 0 ? mix : NULL,
                                                       i == 1 ? mix : NULL, &err), 0);
                logits = mix;
            }
            float l = 0;
            int32_t t = sampler_sample(logits, V, &sp, &rng, &l, &err);
            assert_true(t >= 0);
            out[i][counts[i]++] = t;
            logprob[i] += l;
            if (counts[i] == NEW) break;
            assert_int_equal(model_forward(f->policy_hand, kp, &t, 1, lp, false, NULL, &err), 0);
            assert_int_equal(model_forward(f->ref_hand, kr, &t, 1, lr, false, NULL, &err), 0);
        }
        model_kv_cache_free(kp);
        model_kv_cache_free(kr);
    }
    free(lp);
    free(lr);
    free(mix);
    return mixed;
}

static void test_duel_pilaf_equals_lockstep_by_hand(void **state) {
    (void)state;
    engine_fx f;
    fx_open(&f, ENGINE_FEATURES_REFERENCE);
    const double beta = 4.0; /* large, so that y+ and y- visibly differ from plain samples */
    int modes[2] = {0, 0}, differ_from_plain = 0;
    for (uint64_t seed = 20; seed < 28; seed++) {
        engine_request req = duel_request(DUEL_STRATEGY_PILAF, seed);
        req.num_candidates = 2;
        req.pilaf_beta = beta;
        int32_t tokens[M][NEW];
        int counts[M] = {0};
        char *msg = NULL;
        engine_event *ready = run_duel(&f, &req, tokens, counts, &msg);
        if (!ready) fail_msg("pilaf failed: %s", msg);
        int32_t hand[2][NEW];
        int hand_counts[2];
        double hand_lp[2];
        bool mixed = pilaf_by_hand(&f, seed, beta, hand, hand_counts, hand_lp);
        assert_int_equal(ready->pilaf_mixed, mixed);
        modes[mixed]++;
        for (int i = 0; i < 2; i++) {
            assert_int_equal(counts[i], hand_counts[i]);
            assert_memory_equal(tokens[i], hand[i], (size_t)counts[i] * sizeof(int32_t));
        }
        assert_int_equal(ready->pair.first, 0);
        assert_int_equal(ready->pair.second, 1);
        duel_rng sel;
        duel_rng_seed(&sel, seed ^ ENGINE_DUEL_SEED_SALT);
        duel_pilaf_draw_mode(&sel);
        duel_placement place;
        duel_place(&ready->pair, &sel, &place);
        assert_int_equal(place.a, ready->placement.a);
        assert_int_equal(place.side_swap, ready->placement.side_swap);
        assert_null(ready->rewards);
        engine_event_free(ready);
        if (mixed) {
            /* The same seeds with beta = 0 are the plain samples; beta = 4 must change some. */
            engine_request p0 = duel_request(DUEL_STRATEGY_PILAF, seed);
            p0.num_candidates = 2;
            p0.pilaf_beta = 0.0;
            int32_t t0[M][NEW];
            int c0[M] = {0};
            engine_event *r0 = run_duel(&f, &p0, t0, c0, &msg);
            if (!r0) fail_msg("pilaf beta 0 failed: %s", msg);
            for (int i = 0; i < 2; i++)
                differ_from_plain += c0[i] != counts[i] ||
                                     memcmp(t0[i], tokens[i], (size_t)c0[i] * sizeof(int32_t)) != 0;
            engine_event_free(r0);
        }
    }
    if (!modes[0] || !modes[1]) fail_msg("8 seeds drew modes plain %d, mixed %d", modes[0], modes[1]);
    assert_true(differ_from_plain > 0);
    /* Cancel: CANCELLED (or FINISHED when it won the race), then a second one left in flight
     * for engine_destroy to drop. */
    engine_request req = duel_request(DUEL_STRATEGY_PILAF, 5);
    req.num_candidates = 2;
    req.pilaf_beta = 1.0;
    req.max_new_tokens = NEW;
    uint64_t id;
    duel_error err = {0};
    assert_int_equal(engine_submit(f.e, &req, &id, &err), 0);
    assert_int_equal(engine_cancel(f.e, id, &err), 0);
    for (;;) {
        engine_event *ev = wait_event(f.e);
        engine_event_kind k = ev->kind;
        engine_event_free(ev);
        if (k == ENGINE_EVENT_CANCELLED || k == ENGINE_EVENT_FINISHED) break;
        assert_true(k == ENGINE_EVENT_CANDIDATE || k == ENGINE_EVENT_DUEL_READY);
    }
    assert_int_equal(engine_cancel(f.e, id, &err), DUEL_EINVAL); /* already ended */
    assert_int_equal(engine_submit(f.e, &req, &id, &err), 0);
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
        cmocka_unit_test(test_duel_policy_features),
        cmocka_unit_test(test_duel_errors_keep_serving),
        cmocka_unit_test(test_duel_pilaf_equals_lockstep_by_hand),
        cmocka_unit_test(test_duel_bad_engine_params),
        cmocka_unit_test(test_duel_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
