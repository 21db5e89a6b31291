/* test_forward.c: the CPU forward pass (inference/model.c) against the float64 PyTorch reference
 * (tests/tools/torch_reference.py) on small random models of every supported shape, written by
 * the fwd_make_models fixture into $DUEL_BUILD_DIR/test-models. Each model runs (a) all tokens
 * in one call, (b) token by token through the KV cache, (c) in uneven chunks, plus truncation and
 * recomputation; logits of every position and the last final-norm hidden state must be within
 * 1e-4 relative error. Then the bad inputs: missing tensor, wrong shape, unknown architecture,
 * token ids out of range, KV cache overflow. */
#include "test_helpers.h"

#include "chat_template.h"
#include "model.h"
#include "safetensors.h"
#include "tokenizer.h"

#define FORWARD_TOL 1e-4

static const char *const good_models[] = {
    "tiny-llama-f32",        "tiny-llama-bf16",       "tiny-llama-f16",
    "tiny-llama-qwen2-f32",  "tiny-llama-qwen2-bf16", "tiny-llama-bias-f32",
    "tiny-llama3-rope-f32",
    "tiny-llama3-rope-bf16", "tiny-neox-f32",         "tiny-neox-bf16",
    "tiny-neox-seq-f32",     "tiny-neox-seq-bf16",    "tiny-neox-reward-f32",
};

static void model_path(const char *name, char *out, size_t cap) {
    const char *build = test_env("DUEL_BUILD_DIR", NULL);
    if (!build) fail_msg("DUEL_BUILD_DIR is not set (run through ctest)");
    snprintf(out, cap, "%s/test-models/%s", build, name);
}

typedef struct reference {
    int n_tokens, vocab, hidden;
    int32_t *tokens;
    double *logits; /* [n_tokens][vocab] */
    double *hidden_last;
} reference;

static void read_f64(const safetensors_tensor *t, double *out) {
    assert_int_equal(t->dtype, SAFETENSORS_F64);
    memcpy(out, t->data, (size_t)t->num_elements * sizeof *out);
}

static void load_reference(const char *dir, reference *ref) {
    char path[1200];
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    safetensors_archive *st = NULL;
    duel_error err = {0};
    if (safetensors_open_file(path, &st, &err))
        fail_msg("%s (the fwd_make_models fixture writes it)", err.message);
    const safetensors_tensor *tok = safetensors_find(st, "tokens");
    const safetensors_tensor *lg = safetensors_find(st, "logits");
    const safetensors_tensor *hl = safetensors_find(st, "hidden_last");
    assert_non_null(tok);
    assert_non_null(lg);
    assert_non_null(hl);
    assert_int_equal(tok->dtype, SAFETENSORS_I32);
    assert_int_equal(lg->ndim, 2);
    ref->n_tokens = (int)lg->shape[0];
    ref->vocab = (int)lg->shape[1];
    ref->hidden = (int)hl->shape[0];
    assert_int_equal(tok->num_elements, ref->n_tokens);
    ref->tokens = malloc((size_t)ref->n_tokens * sizeof *ref->tokens);
    ref->logits = malloc((size_t)lg->num_elements * sizeof *ref->logits);
    ref->hidden_last = malloc((size_t)ref->hidden * sizeof *ref->hidden_last);
    memcpy(ref->tokens, tok->data, (size_t)ref->n_tokens * sizeof *ref->tokens);
    read_f64(lg, ref->logits);
    read_f64(hl, ref->hidden_last);
    safetensors_close(st);
}

static void free_reference(reference *ref) {
    free(ref->tokens);
    free(ref->logits);
    free(ref->hidden_last);
}

/* Every position's logits within FORWARD_TOL of the reference. */
static void check_logits(const char *name, const char *mode, const float *logits,
                         const reference *ref) {
    for (int t = 0; t < ref->n_tokens; t++) {
        double e = test_relative_error(logits + (size_t)t * ref->vocab,
                                       ref->logits + (size_t)t * ref->vocab, (size_t)ref->vocab);
        if (!(e < FORWARD_TOL))
            fail_msg("%s (%s): logits of position %d have relative error %g", name, mode, t, e);
    }
}

static void check_hidden(const char *name, const char *mode, const float *hidden,
                         const reference *ref) {
    double e = test_relative_error(hidden, ref->hidden_last, (size_t)ref->hidden);
    if (!(e < FORWARD_TOL))
        fail_msg("%s (%s): last hidden state has relative error %g", name, mode, e);
}

static void run_model(const char *name) {
    char dir[1024];
    model_path(name, dir, sizeof dir);
    reference ref;
    load_reference(dir, &ref);
    model *m = NULL;
    duel_error err = {0};
    if (model_load(dir, &m, &err)) fail_msg("model_load %s: %s", name, err.message);
    const model_config *c = model_get_config(m);
    assert_int_equal(model_output_size(m), ref.vocab);
    assert_int_equal(c->hidden_size, ref.hidden);
    int T = ref.n_tokens, V = ref.vocab, H = ref.hidden;

    model_kv_cache *kv = NULL;
    assert_int_equal(model_kv_cache_create(m, T + 3, &kv, &err), 0);
    float *logits = malloc((size_t)T * V * sizeof *logits);
    float *hidden = malloc((size_t)H * sizeof *hidden);

    /* (a) all tokens in one call. */
    model_reset_timing(m);
    memset(logits, 0xff, (size_t)T * V * sizeof *logits); /* NaN: unwritten rows fail */
    assert_int_equal(model_forward(m, kv, ref.tokens, T, logits, true, hidden, &err), 0);
    assert_int_equal(model_kv_cache_length(kv), T);
    check_logits(name, "one call", logits, &ref);
    check_hidden(name, "one call", hidden, &ref);
    model_timing timing = model_get_timing(m);
    assert_true(timing.forward_seconds > 0);
    assert_true(timing.gemm_seconds > 0 && timing.gemm_seconds <= timing.forward_seconds);
    assert_true(timing.gemm_flops > 2LL * T * H * V); /* at least the output head */

    /* (b) token by token through the cache, last-position logits only. */
    model_kv_cache_reset(kv);
    assert_int_equal(model_kv_cache_length(kv), 0);
    memset(logits, 0xff, (size_t)T * V * sizeof *logits);
    for (int t = 0; t < T; t++)
        assert_int_equal(model_forward(m, kv, ref.tokens + t, 1, logits + (size_t)t * V, false,
                                       t == T - 1 ? hidden : NULL, &err),
                         0);
    check_logits(name, "token by token", logits, &ref);
    check_hidden(name, "token by token", hidden, &ref);

    /* (c) uneven chunks with all logits, hidden state without logits at the end. */
    model_kv_cache_reset(kv);
    memset(logits, 0xff, (size_t)T * V * sizeof *logits);
    const int chunks[] = {5, 1, 13, 2};
    int pos = 0;
    for (size_t i = 0; pos < T; i++) {
        int n = i < sizeof chunks / sizeof chunks[0] ? chunks[i] : T - pos;
        if (n > T - pos) n = T - pos;
        assert_int_equal(model_forward(m, kv, ref.tokens + pos, n, logits + (size_t)pos * V, true,
                                       NULL, &err),
                         0);
        pos += n;
    }
    check_logits(name, "uneven chunks", logits, &ref);

    /* Truncate back and recompute the tail: same result. Last-only logits of a chunk. */
    model_kv_cache_truncate(kv, 11);
    assert_int_equal(model_kv_cache_length(kv), 11);
    memset(logits, 0xff, (size_t)T * V * sizeof *logits);
    assert_int_equal(model_forward(m, kv, ref.tokens + 11, T - 11,
                                   logits + (size_t)(T - 1) * V, false, hidden, &err),
                     0);
    double e = test_relative_error(logits + (size_t)(T - 1) * V, ref.logits + (size_t)(T - 1) * V,
                                   (size_t)V);
    if (!(e < FORWARD_TOL)) fail_msg("%s (truncated): relative error %g", name, e);
    check_hidden(name, "truncated", hidden, &ref);

    /* Hidden state only (no logits requested). */
    model_kv_cache_reset(kv);
    memset(hidden, 0xff, (size_t)H * sizeof *hidden);
    assert_int_equal(model_forward(m, kv, ref.tokens, T, NULL, false, hidden, &err), 0);
    check_hidden(name, "hidden only", hidden, &ref);

    model_reset_timing(m);
    timing = model_get_timing(m);
    assert_true(timing.forward_seconds == 0 && timing.gemm_seconds == 0 && timing.gemm_flops == 0);

    free(logits);
    free(hidden);
    model_kv_cache_free(kv);
    model_free(m);
    free_reference(&ref);
}

static void test_forward_matches_reference(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof good_models / sizeof good_models[0]; i++)
        run_model(good_models[i]);
}

/* Beyond the reference's 37 tokens: a prompt longer than the internal chunk (512 tokens) in one
 * call must equal the same tokens fed in pieces (several attention blocks, chunk boundaries,
 * positions past the first chunk). */
static void test_long_sequence_chunking(void **state) {
    (void)state;
    const char *names[] = {"tiny-llama-bf16", "tiny-neox-f32"};
    for (size_t k = 0; k < 2; k++) {
        char dir[1024];
        model_path(names[k], dir, sizeof dir);
        model *m = NULL;
        duel_error err = {0};
        if (model_load(dir, &m, &err)) fail_msg("%s", err.message);
        int T = 700, V = model_output_size(m), H = model_get_config(m)->hidden_size;
        int32_t *tokens = malloc((size_t)T * sizeof *tokens);
        for (int i = 0; i < T; i++) tokens[i] = (int32_t)((i * 7919 + 13) % V);
        float *one = malloc((size_t)T * V * sizeof *one);
        float *pieces = malloc((size_t)T * V * sizeof *pieces);
        float hidden_one[256], hidden_pieces[256];
        assert_true(H <= 256);
        model_kv_cache *kv = NULL;
        assert_int_equal(model_kv_cache_create(m, T, &kv, &err), 0);
        assert_int_equal(model_forward(m, kv, tokens, T, one, true, hidden_one, &err), 0);
        model_kv_cache_reset(kv);
        const int sizes[] = {1, 63, 65, 130, 3, 300};
        int pos = 0;
        for (size_t i = 0; pos < T; i++) {
            int n = i < 6 ? sizes[i] : T - pos;
            assert_int_equal(model_forward(m, kv, tokens + pos, n, pieces + (size_t)pos * V, true,
                                           hidden_pieces, &err),
                             0);
            pos += n;
        }
        for (int t = 0; t < T; t++) {
            double e = test_relative_error_f32(pieces + (size_t)t * V, one + (size_t)t * V,
                                               (size_t)V);
            if (!(e < 1e-5)) fail_msg("%s: position %d differs between one call and pieces: %g",
                                      names[k], t, e);
        }
        assert_true(test_relative_error_f32(hidden_pieces, hidden_one, (size_t)H) < 1e-5);
        /* A full cache refuses one more token. */
        assert_int_equal(model_forward(m, kv, tokens, 1, NULL, false, NULL, &err), DUEL_ELIMIT);
        free(tokens), free(one), free(pieces);
        model_kv_cache_free(kv);
        model_free(m);
    }
}

/* The generated directories are whole models: their tokenizer.json loads and round-trips, the
 * special tokens sit at the top ids, and the chat template is detected as chatml. */
static void test_generated_tokenizer_and_template(void **state) {
    (void)state;
    const char *names[] = {"tiny-llama-f32", "tiny-neox-bf16"};
    for (size_t k = 0; k < 2; k++) {
        char dir[1024], path[1200];
        model_path(names[k], dir, sizeof dir);
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        tokenizer *tok = NULL;
        duel_error err = {0};
        if (tokenizer_load(path, &tok, &err)) fail_msg("%s", err.message);
        assert_int_equal(tokenizer_vocab_size(tok), 512);
        assert_int_equal(tokenizer_token_id(tok, "<|endoftext|>"), 509);
        assert_int_equal(tokenizer_token_id(tok, "<|im_start|>"), 510);
        assert_int_equal(tokenizer_token_id(tok, "<|im_end|>"), 511);
        assert_true(tokenizer_is_special(tok, 511));
        const char *text = "<|im_start|>user\nThe quick brown fox, 42 times!<|im_end|>";
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(tokenizer_encode(tok, text, strlen(text), true, &ids, &n, &err), 0);
        assert_true(n > 3 && n < strlen(text)); /* the learned merges apply */
        assert_int_equal(ids[0], 510);
        assert_int_equal(ids[n - 1], 511);
        char *back = NULL;
        size_t len = 0;
        assert_int_equal(tokenizer_decode(tok, ids, n, false, &back, &len, &err), 0);
        assert_string_equal(back, text);
        free(back);
        free(ids);
        tokenizer_free(tok);
        chat_template_kind kind = CHAT_TEMPLATE_PLAIN;
        assert_int_equal(chat_template_detect(dir, &kind, &err), 0);
        assert_int_equal(kind, CHAT_TEMPLATE_CHATML);
    }
}

/* The configuration each preset is meant to exercise really reached the model. */
static void test_configs_cover_features(void **state) {
    (void)state;
    struct {
        const char *name;
        model_arch arch;
        bool gqa, bias, tied, parallel;
        model_rope_scaling rope;
        model_activation act;
        model_head head;
    } want[] = {
        {"tiny-llama-f32", MODEL_ARCH_LLAMA, true, false, true, false, MODEL_ROPE_NONE,
         MODEL_ACT_SILU, MODEL_HEAD_CAUSAL_LM},
        {"tiny-llama-qwen2-f32", MODEL_ARCH_LLAMA, true, true, false, false, MODEL_ROPE_NONE,
         MODEL_ACT_SILU, MODEL_HEAD_CAUSAL_LM},
        {"tiny-llama-bias-f32", MODEL_ARCH_LLAMA, true, true, false, false, MODEL_ROPE_LINEAR,
         MODEL_ACT_SILU, MODEL_HEAD_CAUSAL_LM},
        {"tiny-llama3-rope-f32", MODEL_ARCH_LLAMA, true, false, false, false, MODEL_ROPE_LLAMA3,
         MODEL_ACT_SILU, MODEL_HEAD_CAUSAL_LM},
        {"tiny-neox-f32", MODEL_ARCH_GPT_NEOX, false, true, false, true, MODEL_ROPE_NONE,
         MODEL_ACT_GELU, MODEL_HEAD_CAUSAL_LM},
        {"tiny-neox-seq-f32", MODEL_ARCH_GPT_NEOX, false, true, false, false, MODEL_ROPE_NONE,
         MODEL_ACT_GELU_TANH, MODEL_HEAD_CAUSAL_LM},
        {"tiny-neox-reward-f32", MODEL_ARCH_GPT_NEOX, false, true, false, true, MODEL_ROPE_NONE,
         MODEL_ACT_GELU, MODEL_HEAD_SEQUENCE_CLASSIFICATION},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char dir[1024];
        model_path(want[i].name, dir, sizeof dir);
        model *m = NULL;
        duel_error err = {0};
        if (model_load(dir, &m, &err)) fail_msg("%s", err.message);
        const model_config *c = model_get_config(m);
        assert_int_equal(c->arch, want[i].arch);
        assert_int_equal(c->num_kv_heads < c->num_heads, want[i].gqa);
        assert_int_equal(c->attention_bias, want[i].bias);
        assert_int_equal(c->tie_word_embeddings, want[i].tied);
        if (c->arch == MODEL_ARCH_GPT_NEOX) {
            assert_int_equal(c->use_parallel_residual, want[i].parallel);
            assert_true(c->rotary_dim < c->head_dim); /* partial rotary */
        }
        assert_int_equal(c->rope_scaling, want[i].rope);
        assert_int_equal(c->activation, want[i].act);
        assert_int_equal(c->head, want[i].head);
        if (strcmp(want[i].name, "tiny-llama-bias-f32") == 0) {
            assert_true(c->attention_out_bias && c->mlp_bias);
            assert_true(c->head_dim * c->num_heads != c->hidden_size);
        }
        model_free(m);
    }
}

static void expect_load_error(const char *name, int code, const char *needle) {
    char dir[1024];
    model_path(name, dir, sizeof dir);
    model *m = (model *)0x1;
    duel_error err = {0};
    int rc = model_load(dir, &m, &err);
    assert_null(m);
    if (rc != code)
        fail_msg("%s: expected %s, got %s: %s", name, duel_error_name(code), duel_error_name(rc),
                 err.message);
    if (!strstr(err.message, needle))
        fail_msg("%s: message \"%s\" does not mention \"%s\"", name, err.message, needle);
}

static void test_bad_models(void **state) {
    (void)state;
    expect_load_error("bad-missing-tensor", DUEL_ENOTFOUND, "model.layers.1.mlp.up_proj.weight");
    expect_load_error("bad-wrong-shape", DUEL_EFORMAT, "gpt_neox.layers.0.attention.dense.weight");
    expect_load_error("bad-architecture", DUEL_EUNSUPPORTED, "FalconForCausalLM");
    expect_load_error("no-such-model", DUEL_EIO, "no-such-model");
}

static void test_bad_forward_inputs(void **state) {
    (void)state;
    char dir[1024];
    model_path("tiny-llama-f32", dir, sizeof dir);
    model *m = NULL;
    duel_error err = {0};
    if (model_load(dir, &m, &err)) fail_msg("%s", err.message);
    int V = model_output_size(m);
    model_kv_cache *kv = NULL;
    assert_int_equal(model_kv_cache_create(m, 0, &kv, &err), DUEL_EINVAL);
    assert_null(kv);
    assert_int_equal(model_kv_cache_create(m, 8, &kv, &err), 0);
    float *logits = malloc((size_t)8 * V * sizeof *logits);

    int32_t bad_high[3] = {1, V, 2}, bad_negative[2] = {-1, 0};
    assert_int_equal(model_forward(m, kv, bad_high, 3, logits, true, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "outside the vocabulary"));
    assert_int_equal(model_forward(m, kv, bad_negative, 2, logits, true, NULL, &err), DUEL_EINVAL);
    assert_int_equal(model_kv_cache_length(kv), 0); /* nothing appended */
    assert_int_equal(model_forward(m, kv, bad_high, 0, logits, true, NULL, &err), DUEL_EINVAL);

    int32_t tokens[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_int_equal(model_forward(m, kv, tokens, 9, logits, false, NULL, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "overflow"));
    assert_int_equal(model_kv_cache_length(kv), 0);
    assert_int_equal(model_forward(m, kv, tokens, 6, logits, false, NULL, &err), 0);
    assert_int_equal(model_forward(m, kv, tokens, 3, logits, false, NULL, &err), DUEL_ELIMIT);
    assert_int_equal(model_kv_cache_length(kv), 6);
    assert_int_equal(model_forward(m, kv, tokens, 2, logits, false, NULL, &err), 0);
    assert_int_equal(model_kv_cache_length(kv), 8);
    model_kv_cache_truncate(kv, 100); /* never grows */
    assert_int_equal(model_kv_cache_length(kv), 8);

    /* A cache of another model's shape is refused. */
    char other_dir[1024];
    model_path("tiny-neox-f32", other_dir, sizeof other_dir);
    model *other = NULL;
    if (model_load(other_dir, &other, &err)) fail_msg("%s", err.message);
    model_kv_cache *other_kv = NULL;
    assert_int_equal(model_kv_cache_create(other, 8, &other_kv, &err), 0);
    assert_int_equal(model_forward(m, other_kv, tokens, 1, logits, false, NULL, &err),
                     DUEL_EINVAL);

    model_kv_cache_free(other_kv);
    model_free(other);
    free(logits);
    model_kv_cache_free(kv);
    model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_reference),
        cmocka_unit_test(test_long_sequence_chunking),
        cmocka_unit_test(test_configs_cover_features),
        cmocka_unit_test(test_generated_tokenizer_and_template),
        cmocka_unit_test(test_bad_models),
        cmocka_unit_test(test_bad_forward_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
