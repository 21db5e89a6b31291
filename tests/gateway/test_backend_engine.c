/* test_backend_engine.c: the engine adapter (gateway/backend_engine.c) with the shipped default
 * model (models/default): a duel request yields progress and one ready event whose pair, features
 * (2 x hidden_size per candidate), ERM rewards and token offsets are consistent; bad settings are
 * refused; and a whole duel through the gateway over a socket, voted into a real Redis, as
 * `duel serve` runs with a trainer (snapshots: reference features): the vote decodes under the
 * trainer's limits and carries the reference log-probabilities of its candidates, which equal
 * the trainer's own reference forward over the vote's tokens (relative error < 1e-5); a second
 * turn's prompt, built from the token ids the conversation kept, is exactly the encoding of the
 * whole conversation (what re-tokenizing the history would give); strategy pilaf through the
 * gateway: two streamed answers placed by the engine's rng, the vote an unscored duel the
 * trainer accepts; a bad pilaf_beta is refused. Skips
 * (exit 77) when models/default is missing. */
#include "gateway_test_util.h"
#include "vote_entry.h"

#include "chat_template.h"
#include "duel.h"
#include "duel_backend.h"
#include "engine.h"
#include "knobs.h"
#include "lm_trainer.h"
#include "train_model.h"

typedef struct sink_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int progress;
    duel_backend_result *ready;
    bool error;
    char message[256];
} sink_state;

static void sink(void *ctx, duel_backend_event *ev) {
    sink_state *s = ctx;
    pthread_mutex_lock(&s->mu);
    if (ev->kind == DUEL_BACKEND_PROGRESS) s->progress++;
    if (ev->kind == DUEL_BACKEND_READY) {
        s->ready = ev->result;
        ev->result = NULL;
    }
    if (ev->kind == DUEL_BACKEND_ERROR) {
        s->error = true;
        snprintf(s->message, sizeof s->message, "%s", ev->message);
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static char model_dir[1024];

static void engine_config(backend_engine_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->model_dir = model_dir;
    cfg->erm_seed = 7;
    cfg->num_candidates = 4;
    cfg->temperature = 1.0f;
    cfg->top_p = 1.0f;
    cfg->max_new_tokens = 24;
    cfg->kv_memory_bytes = 16u << 20;
}

/* The duel of req from a backend made with cfg (its PROGRESS events counted into *progress when
 * not NULL); fails the test on an error. The caller frees the result. */
static duel_backend_result *one_duel(const backend_engine_config *cfg, const duel_backend_request *req, int *progress) {
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(cfg, &b, &err)) fail_msg("%s", err.message);
    sink_state s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    assert_int_equal(b.start(b.impl, sink, &s, &err), 0);
    assert_int_equal(b.submit(b.impl, req, &err), 0);
    pthread_mutex_lock(&s.mu);
    double deadline = tu_now() + 60;
    while (!s.ready && !s.error && tu_now() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&s.cv, &s.mu, &ts);
    }
    pthread_mutex_unlock(&s.mu);
    b.destroy(b.impl);
    if (s.error) fail_msg("engine backend error: %s", s.message);
    assert_non_null(s.ready);
    if (progress) *progress = s.progress;
    return s.ready;
}

static void test_adapter_duel(void **state) {
    (void)state;
    backend_engine_config cfg;
    engine_config(&cfg);
    duel_error err = {0};
    duel_backend_turn hist[1] = {{"What is a cat?", "A small domesticated feline.", NULL, 0}};
    duel_backend_request req = {.request_id = 42, .history = hist, .n_history = 1,
                                .text = "What is a dog?", .arm_snapshot = -1, .seed = 123};
    int progress = 0;
    duel_backend_result *r = one_duel(&cfg, &req, &progress);
    assert_true(progress > 0);
    assert_int_equal(r->num_candidates, 4);
    assert_true(r->cand_a != r->cand_b);
    assert_true(r->cand_a >= 0 && r->cand_a < 4 && r->cand_b >= 0 && r->cand_b < 4);
    assert_int_equal(r->cand_offsets[0], 0);
    for (int i = 0; i < 4; i++) assert_true(r->cand_offsets[i + 1] >= r->cand_offsets[i]);
    assert_int_equal((size_t)r->cand_offsets[4], r->n_cand_tokens);
    assert_true(r->n_cand_tokens > 0);
    assert_true(r->n_prompt_tokens > 0);
    assert_non_null(strstr(r->prompt_text, "What is a dog?"));
    assert_non_null(strstr(r->prompt_text, "A small domesticated feline."));
    assert_true(r->d_feat > 0 && r->d_feat % 2 == 0);
    assert_int_equal(r->num_heads, 20);
    double fnorm = 0;
    for (int i = 0; i < 4 * r->d_feat; i++) {
        assert_false(isnan(r->features[i]) || isinf(r->features[i]));
        fnorm += (double)r->features[i] * r->features[i];
    }
    assert_true(fnorm > 0);
    for (int i = 0; i < 4 * r->num_heads; i++) assert_false(isnan(r->rewards[i]));
    /* Every candidate shares the prompt half of its features. */
    int h = r->d_feat / 2;
    for (int i = 1; i < 4; i++)
        assert_memory_equal(r->features, r->features + (size_t)i * r->d_feat, (size_t)h * 4);
    /* The pair shown is the one the strategy picks on these rewards with the engine's selection
     * seed, placed as duel_place says (the features and rewards feed the trainer). */
    duel_rng rng;
    duel_rng_seed(&rng, req.seed ^ ENGINE_DUEL_SEED_SALT);
    duel_pair pair;
    duel_placement place;
    assert_int_equal(duel_select(DUEL_STRATEGY_EE_TS, r->rewards, 4, r->num_heads, &rng, &pair, &err), 0);
    duel_place(&pair, &rng, &place);
    assert_int_equal(r->cand_a, place.a);
    assert_int_equal(r->cand_b, place.b);
    assert_int_equal(r->side_swap, place.side_swap);
    assert_non_null(r->text_a);
    assert_non_null(r->text_b);
    /* The default model's qa template: answers are generated after "Answer:" with a leading
     * space, shown and kept without it (rendering the history puts it back). */
    assert_true(r->len_a > 0 && r->len_b > 0);
    assert_true(r->text_a[0] != ' ' && r->text_b[0] != ' ');
    json_t *gp = json_loads(r->gen_params_json, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(gp, "M")), 4);
    json_decref(gp);
    assert_string_equal(r->strategy, "ee_ts");
    assert_null(r->ref_logprobs); /* policy features: no reference pass */
    duel_backend_result_free(r);
}

/* engine.features with snapshots (`duel serve` with a trainer): reference, the frozen base model
 * runs over the answers (features and ref_logprobs from that pass); policy, the serving arm's
 * own hidden states from its decode, no reference pass, so no ref_logprobs. Before any snapshot
 * the serving arm is the base model: both give the same features up to summation order. Arena
 * needs reference features and is refused with policy ones, when made and per request. */
static void test_adapter_policy_features(void **state) {
    (void)state;
    backend_engine_config cfg;
    engine_config(&cfg);
    cfg.snapshots = true;
    const duel_backend_request dog = {.request_id = 7, .text = "What is a dog?", .arm_snapshot = -1, .seed = 123};
    duel_backend_result *ref = one_duel(&cfg, &dog, NULL);
    cfg.policy_features = true;
    duel_backend_result *pol = one_duel(&cfg, &dog, NULL);
    assert_non_null(ref->ref_logprobs);
    assert_null(pol->ref_logprobs);
    assert_int_equal(pol->num_candidates, ref->num_candidates);
    assert_int_equal(pol->d_feat, ref->d_feat);
    assert_int_equal(pol->n_cand_tokens, ref->n_cand_tokens);
    assert_memory_equal(pol->cand_offsets, ref->cand_offsets, (size_t)(ref->num_candidates + 1) * sizeof *ref->cand_offsets);
    double diff = 0, norm = 0;
    for (size_t i = 0; i < (size_t)ref->num_candidates * (size_t)ref->d_feat; i++) {
        assert_false(isnan(pol->features[i]) || isinf(pol->features[i]));
        diff += ((double)pol->features[i] - ref->features[i]) * ((double)pol->features[i] - ref->features[i]);
        norm += (double)ref->features[i] * ref->features[i];
    }
    assert_true(norm > 0);
    if (!(sqrt(diff / norm) < 1e-4)) fail_msg("policy and reference features of the base model differ: %g", sqrt(diff / norm));
    duel_backend_result_free(ref);
    duel_backend_result_free(pol);

    duel_backend b;
    duel_error err = {0};
    cfg.strategy = "arena";
    assert_int_equal(backend_engine_create(&cfg, &b, &err), DUEL_EUNSUPPORTED);
    assert_non_null(strstr(err.message, "engine.features reference"));
    cfg.strategy = "ee_ts";
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    duel_backend_params arena = {.strategy = "arena", .num_candidates = 4, .temperature = 1.0f, .top_p = 1.0f,
                                 .max_new_tokens = 24};
    duel_backend_request req = {.request_id = 8, .text = "What is a dog?", .arm_snapshot = -1, .seed = 1,
                                .params = &arena};
    assert_int_equal(b.submit(b.impl, &req, &err), DUEL_EUNSUPPORTED);
    assert_non_null(strstr(err.message, "engine.features reference"));
    b.destroy(b.impl);
}

/* The trainer's reference log-probability of every candidate of e (train_model_forward of the
 * base model over prompt + candidate, the response tokens masked in), as online_trainer runs it
 * when a vote carries none. */
static void trainer_reference(const vote_entry *e, double *out) {
    train_model *ref = NULL;
    char *cfg = NULL;
    duel_error err = {0};
    if (lm_model_load_hf(model_dir, &ref, &cfg, &err)) fail_msg("%s", err.message);
    free(cfg);
    for (int i = 0; i < e->num_candidates; i++) {
        int len;
        const int32_t *resp = vote_entry_candidate(e, i, &len);
        int T = e->n_prompt_tokens + len - 1;
        int32_t *tokens = calloc((size_t)T, sizeof *tokens), *targets = calloc((size_t)T, sizeof *targets);
        float *mask = calloc((size_t)T, sizeof *mask);
        for (int p = 0; p < T; p++) {
            tokens[p] = p < e->n_prompt_tokens ? e->prompt_tokens[p] : resp[p - e->n_prompt_tokens];
            targets[p] = p + 1 < e->n_prompt_tokens ? e->prompt_tokens[p + 1] : resp[p + 1 - e->n_prompt_tokens];
            mask[p] = p + 1 >= e->n_prompt_tokens ? 1.0f : 0.0f;
        }
        train_batch tb = {1, T, tokens, targets, mask};
        double count;
        if (train_model_forward(ref, &tb, &out[i], &count, NULL, &err)) fail_msg("%s", err.message);
        assert_true(count == len);
        free(tokens), free(targets), free(mask);
    }
    train_model_free(ref);
}

static void test_adapter_rejects_bad_settings(void **state) {
    (void)state;
    backend_engine_config cfg;
    engine_config(&cfg);
    duel_backend b;
    duel_error err = {0};
    cfg.num_candidates = 1;
    assert_int_equal(backend_engine_create(&cfg, &b, &err), DUEL_EINVAL);
    engine_config(&cfg);
    cfg.strategy = "pilaf";
    const double bad_betas[] = {-0.1, NAN, INFINITY};
    for (int i = 0; i < 3; i++) {
        cfg.pilaf_beta = bad_betas[i];
        assert_int_equal(backend_engine_create(&cfg, &b, &err), DUEL_EINVAL);
        assert_non_null(strstr(err.message, "duel.pilaf_beta"));
    }
    cfg.pilaf_beta = 0.1;
    cfg.strategy = "nonsense";
    assert_int_equal(backend_engine_create(&cfg, &b, &err), DUEL_EINVAL);
    engine_config(&cfg);
    cfg.model_dir = "/nonexistent/model";
    assert_true(backend_engine_create(&cfg, &b, &err) < 0);
}

/* The newest duel:prefs entry, decoded under the trainer's limits for the shipped model (ERM
 * width 640), its gen_params and its chosen_text (malloc'd). */
static void last_vote(tu_redis *redis, vote_entry *e, json_t **gen_params, char **chosen_text) {
    redisContext *rc = redisConnect("127.0.0.1", redis->port);
    assert_true(rc && !rc->err);
    redisReply *r = redisCommand(rc, "XREVRANGE duel:prefs + - COUNT 1");
    assert_true(r && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    redisReply *fields = r->element[0]->element[1];
    vote_entry_field f[VOTE_ENTRY_MAX_FIELDS];
    int n = 0;
    for (size_t i = 0; i + 1 < fields->elements && n < VOTE_ENTRY_MAX_FIELDS; i += 2)
        f[n++] = (vote_entry_field){fields->element[i]->str, fields->element[i]->len, fields->element[i + 1]->str,
                                    fields->element[i + 1]->len};
    vote_entry_limits limits = {.d_feat = 640, .vocab = 4096, .max_sequence = 256};
    duel_error err = {0};
    if (vote_entry_decode(f, n, &limits, e, &err)) fail_msg("the gateway's vote does not decode: %s", err.message);
    const vote_entry_field *gp = vote_entry_field_find(f, n, "gen_params");
    const vote_entry_field *chosen = vote_entry_field_find(f, n, "chosen_text");
    assert_true(gp && chosen);
    *gen_params = json_loadb(gp->value, gp->value_len, 0, NULL);
    assert_non_null(*gen_params);
    *chosen_text = strndup(chosen->value, chosen->value_len);
    freeReplyObject(r);
    redisFree(rc);
}

/* The gateway encodes votes with the vote codec (common/vote_entry.h); the trainer reads them
 * with vote_entry_decode. The entry the gateway just wrote must decode under the trainer's limits for
 * the served model, with the clicked side as the chosen candidate. */
static void check_vote_decodes(tu_redis *redis, const tu_duel *d) {
    vote_entry e;
    json_t *gp = NULL;
    char *chosen_text = NULL;
    last_vote(redis, &e, &gp, &chosen_text);
    assert_int_equal(e.choice, VOTE_CHOICE_A);
    assert_int_equal(e.num_candidates, 4);
    assert_true(e.chosen_idx != e.rejected_idx && e.chosen_idx >= 0 && e.chosen_idx < 4 && e.rejected_idx >= 0 &&
                e.rejected_idx < 4);
    assert_string_equal(e.duel_id, d->id);
    assert_true(e.n_prompt_tokens > 0 && e.num_heads > 0);
    assert_string_equal(chosen_text, d->a);
    /* The engine's reference pass scored every candidate as the trainer's reference does. */
    assert_non_null(e.ref_logprobs);
    double want[4];
    trainer_reference(&e, want);
    for (int i = 0; i < 4; i++) {
        assert_true(want[i] < 0);
        if (!(fabs(e.ref_logprobs[i] - want[i]) <= 1e-5 * fabs(want[i])))
            fail_msg("candidate %d: the vote's reference log-probability %.7g, the trainer's %.7g", i,
                     (double)e.ref_logprobs[i], want[i]);
    }
    vote_entry_free(&e);
    json_decref(gp);
    free(chosen_text);
}

/* The newest duel:prefs entry's prompt tokens (malloc'd). */
static int32_t *last_prompt_tokens(tu_redis *redis, size_t *n) {
    vote_entry e;
    json_t *gp = NULL;
    char *chosen_text = NULL;
    last_vote(redis, &e, &gp, &chosen_text);
    *n = (size_t)e.n_prompt_tokens;
    int32_t *ids = malloc(*n * sizeof *ids + 4);
    assert_non_null(ids);
    memcpy(ids, e.prompt_tokens, *n * sizeof *ids);
    vote_entry_free(&e);
    json_decref(gp);
    free(chosen_text);
    return ids;
}

/* The shipped model's tokenizer and chat template, as the adapter loads them. */
static void load_tokenizer(tokenizer **tok, chat_template_kind *kind) {
    char tok_path[1100];
    duel_error err = {0};
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", model_dir);
    assert_int_equal(tokenizer_load(tok_path, tok, &err), 0);
    assert_int_equal(chat_template_detect(model_dir, kind, &err), 0);
}

static void test_gateway_with_engine(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    gateway_config gcfg;
    tu_gateway_config(&gcfg, &redis);
    backend_engine_config cfg;
    engine_config(&cfg);
    cfg.snapshots = true; /* as `duel serve` with a trainer: reference features */
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    tu_gateway g;
    tu_gateway_start_backend(&g, &gcfg, &b);
    ws_client c;
    assert_int_equal(ws_connect(&c, g.port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    tu_duel d;
    ws_ask_duel(&c, "What is a river?", &d);
    assert_true(d.progress > 0);
    assert_false(ws_vote(&c, d.id, "a"));
    assert_int_equal(tu_redis_int(&redis, "XLEN duel:prefs"), 1);
    check_vote_decodes(&redis, &d);
    /* The second turn: its prompt comes from the first turn's kept ids plus the new question,
     * and must be the whole conversation's encoding. */
    tu_duel d2;
    ws_ask_duel(&c, "What is a lake?", &d2);
    assert_false(ws_vote(&c, d2.id, "b"));
    size_t n_got = 0, n_want = 0;
    int32_t *got = last_prompt_tokens(&redis, &n_got), *want = NULL;
    tokenizer *tok;
    chat_template_kind kind;
    load_tokenizer(&tok, &kind);
    assert_true(chat_template_turns_concatenate(kind)); /* the default model's qa: ids are kept */
    chat_message conv[3] = {{"user", "What is a river?"}, {"assistant", d.a}, {"user", "What is a lake?"}};
    assert_int_equal(chat_template_encode(kind, tok, conv, 3, true, &want, &n_want, &err), 0);
    assert_int_equal(n_got, n_want);
    assert_memory_equal(got, want, n_want * sizeof *want);
    free(got);
    free(want);
    tokenizer_free(tok);
    tu_duel_free(&d2);
    tu_duel_free(&d);
    ws_close(&c);
    tu_gateway_stop(&g);
    tu_redis_stop(&redis, SIGTERM);
}

/* Strategy pilaf served through the gateway, as `duel serve --snapshots` with duel.strategy =
 * pilaf and the default M = 4 runs it: two candidates streamed, placed as the engine's selection
 * rng says, the vote accepted into duel:prefs as an unscored duel (no features or rewards, d_feat
 * 0) that the trainer's limits accept; its gen_params record M = 2, beta and the mode drawn. */
static void test_gateway_pilaf(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    gateway_config gcfg;
    tu_gateway_config(&gcfg, &redis);
    int k;
    duel_error err = {0};
    duel_knob_value v;
    if (duel_knob_parse("strategy", "pilaf", &v, &k, &err)) fail_msg("%s", err.message);
    gcfg.knobs.v[k] = v;
    assert_int_equal((int)gcfg.knobs.v[duel_knob_index("M")].number, 4);
    backend_engine_config cfg;
    engine_config(&cfg);
    cfg.strategy = "pilaf";
    cfg.pilaf_beta = 0.5;
    cfg.snapshots = true;
    duel_backend b;
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    tu_gateway g;
    tu_gateway_start_backend(&g, &gcfg, &b);
    ws_client c;
    assert_int_equal(ws_connect(&c, g.port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    for (int turn = 0; turn < 2; turn++) {
        tu_duel d;
        ws_ask_duel(&c, turn ? "What is a lake?" : "What is a river?", &d);
        assert_true(d.progress > 0);
        assert_true(d.deltas_a > 0 && d.deltas_b > 0);
        assert_false(ws_vote(&c, d.id, turn ? "b" : "a"));
        assert_int_equal(tu_redis_int(&redis, "XLEN duel:prefs"), turn + 1);
        vote_entry e;
        json_t *gp = NULL;
        char *chosen_text = NULL;
        last_vote(&redis, &e, &gp, &chosen_text);
        assert_string_equal(chosen_text, turn ? d.b : d.a);
        assert_string_equal(e.strategy, "pilaf");
        assert_int_equal(e.num_candidates, 2);
        assert_true(e.d_feat == 0 && e.num_heads == 0);
        assert_null(e.ref_logprobs);
        assert_int_equal(e.choice, turn ? VOTE_CHOICE_B : VOTE_CHOICE_A);
        assert_true(vote_choice_is_pair(e.choice));
        assert_int_equal(json_integer_value(json_object_get(gp, "M")), 2);
        assert_string_equal(json_string_value(json_object_get(gp, "strategy")), "pilaf");
        assert_true(json_real_value(json_object_get(gp, "pilaf_beta")) == 0.5);
        /* the engine's selection rng: the mode, then the placement of (0, 1) */
        duel_rng rng;
        duel_rng_seed(&rng, (uint64_t)json_integer_value(json_object_get(gp, "seed")) ^ ENGINE_DUEL_SEED_SALT);
        const bool mixed = duel_pilaf_draw_mode(&rng) == DUEL_PILAF_MIXED;
        assert_true(json_is_boolean(json_object_get(gp, "pilaf_mixed")));
        assert_int_equal(json_is_true(json_object_get(gp, "pilaf_mixed")), mixed);
        duel_pair pair = {0, 1, -1, -1};
        duel_placement place;
        duel_place(&pair, &rng, &place);
        assert_int_equal(e.chosen_idx, turn ? place.b : place.a);
        assert_int_equal(e.rejected_idx, turn ? place.a : place.b);
        assert_int_equal(e.side_swap, place.side_swap);
        /* two distinct answers */
        int la, lb;
        const int32_t *ta = vote_entry_candidate(&e, 0, &la), *tb = vote_entry_candidate(&e, 1, &lb);
        assert_true(la > 0 && lb > 0);
        assert_true(la != lb || memcmp(ta, tb, (size_t)la * sizeof *ta) != 0);
        assert_string_not_equal(d.a, d.b);
        json_decref(gp);
        free(chosen_text);
        vote_entry_free(&e);
        tu_duel_free(&d);
    }
    ws_close(&c);
    tu_gateway_stop(&g);
    tu_redis_stop(&redis, SIGTERM);
}

/* The engine adapter's prompt_tokens, counted: the gateway encodes an ask's prompt once to fit
 * it, whatever the conversation's length (it encoded the whole prompt per step of a search). */
static long long (*g_real_prompt_tokens)(void *, const duel_backend_request *, duel_error *);
static int g_prompt_token_calls;

static long long counted_prompt_tokens(void *impl, const duel_backend_request *req, duel_error *err) {
    g_prompt_token_calls++;
    return g_real_prompt_tokens(impl, req, err);
}

/* Conversations longer than the model (issue 21): with the shipped model's 256-token context a
 * conversation goes on past what fits; the oldest whole turns are left out, duel_start says how
 * many, and the prompt is exactly the encoding of the turns kept. A message that alone does not
 * fit gets conversation_too_long (never `busy`), and the connection keeps serving. */
static void test_conversation_longer_than_the_model(void **state) {
    (void)state;
    tu_redis redis = {0};
    tu_redis_start(&redis);
    gateway_config gcfg;
    tu_gateway_config(&gcfg, &redis);
    gcfg.knobs.v[duel_knob_index("M")].number = 2;
    gcfg.knobs.v[duel_knob_index("max_new_tokens")].number = 48;
    gcfg.knobs.v[duel_knob_index("temperature")].number = 1.0;
    backend_engine_config cfg;
    engine_config(&cfg);
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    assert_int_equal(b.context_tokens(b.impl), 256);
    g_real_prompt_tokens = b.prompt_tokens;
    b.prompt_tokens = counted_prompt_tokens;
    g_prompt_token_calls = 0;
    tu_gateway g;
    tu_gateway_start_backend(&g, &gcfg, &b);

    ws_client c;
    assert_int_equal(ws_connect(&c, g.port, NULL), 101);
    ws_hello(&c, NULL, NULL);
    /* 800 bytes on a fresh conversation (numbers: few bytes per token): more than the model
     * reads */
    char big[900], ask[1000];
    size_t n_big = 0;
    for (int i = 1; n_big < 800; i++)
        n_big += (size_t)snprintf(big + n_big, sizeof big - n_big, "%d ", (i * 7919) % 10007);
    big[800] = '\0';
    snprintf(ask, sizeof ask, "{\"type\":\"ask\",\"text\":\"%s\"}", big);
    assert_int_equal(ws_send_text(&c, ask), 0);
    ws_expect_error(&c, "conversation_too_long");

    enum { TURNS = 11 };
    static const char *const WORDS[TURNS] = {"alpha", "bravo", "charlie", "delta", "echo",
                                             "foxtrot", "golf", "hotel", "india", "juliet", "kilo"};
    char *questions[TURNS], *answers[TURNS];
    int dropped = 0;
    for (int t = 0; t < TURNS; t++) {
        char q[96];
        snprintf(q, sizeof q, "Tell me a long story about the %s river and its stones.", WORDS[t]);
        tu_duel d;
        ws_ask_duel(&c, q, &d); /* fails on any error frame: busy before the fix */
        assert_true(d.dropped_turns >= dropped); /* the conversation only grows */
        assert_true(d.dropped_turns <= t);
        dropped = d.dropped_turns;
        assert_false(ws_vote(&c, d.id, "a"));
        questions[t] = strdup(q);
        answers[t] = strdup(d.a);
        tu_duel_free(&d);
    }
    assert_true(dropped > 0); /* eleven turns do not fit in 256 tokens */
    assert_int_equal(g_prompt_token_calls, 1 + TURNS); /* the refused ask and one per turn */
    /* The last duel's prompt: the kept turns [dropped, TURNS-1) and the last question, exactly */
    size_t n_got = 0, n_want = 0;
    int32_t *got = last_prompt_tokens(&redis, &n_got), *want = NULL;
    assert_true(n_got <= 256 - 48);
    tokenizer *tok;
    chat_template_kind kind;
    load_tokenizer(&tok, &kind);
    chat_message conv[2 * TURNS];
    size_t n = 0;
    for (int t = dropped; t < TURNS - 1; t++) {
        conv[n++] = (chat_message){"user", questions[t]};
        conv[n++] = (chat_message){"assistant", answers[t]};
    }
    conv[n++] = (chat_message){"user", questions[TURNS - 1]};
    assert_int_equal(chat_template_encode(kind, tok, conv, n, true, &want, &n_want, &err), 0);
    assert_int_equal(n_got, n_want);
    assert_memory_equal(got, want, n_want * sizeof *want);
    /* ... and with one turn more it would not have fitted: no turn was dropped needlessly */
    if (dropped > 0) {
        chat_message more[2 * TURNS + 2];
        more[0] = (chat_message){"user", questions[dropped - 1]};
        more[1] = (chat_message){"assistant", answers[dropped - 1]};
        memcpy(more + 2, conv, n * sizeof *conv);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        assert_int_equal(chat_template_encode(kind, tok, more, n + 2, true, &ids, &n_ids, &err), 0);
        assert_true(n_ids > 256 - 48);
        free(ids);
    }
    free(got);
    free(want);
    tokenizer_free(tok);
    for (int t = 0; t < TURNS; t++) free(questions[t]), free(answers[t]);
    ws_close(&c);
    tu_gateway_stop(&g);
    tu_redis_stop(&redis, SIGTERM);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    snprintf(model_dir, sizeof model_dir, "%s/models/default", test_env("DUEL_SOURCE_DIR", "."));
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/model.safetensors", model_dir);
    if (access(probe, R_OK) != 0) {
        printf("SKIP: %s is missing\n", probe);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adapter_duel),
        cmocka_unit_test(test_adapter_rejects_bad_settings),
        cmocka_unit_test(test_adapter_policy_features),
        cmocka_unit_test(test_gateway_with_engine),
        cmocka_unit_test(test_gateway_pilaf),
        cmocka_unit_test(test_conversation_longer_than_the_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
