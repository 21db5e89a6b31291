/* test_llama_train.c: the trainable Llama model (trainer/llama_train.c) without torch: config
 * checks, the HF tensor table, batch validation, right padding that changes nothing, gradient
 * accumulation, and a DPO step that raises log pi(y+) - log pi(y-) end to end. Exact gradient
 * values are checked against torch in test_train_model_torch.c. */
#include "dap_loss.h"
#include "llama_train.h"
#include "train_model.h"
#include "rng.h"
#include "test_helpers.h"

static model_config tiny_config(void) {
    model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "LlamaForCausalLM");
    c.arch = MODEL_ARCH_LLAMA;
    c.head = MODEL_HEAD_CAUSAL_LM;
    c.activation = MODEL_ACT_SILU;
    c.vocab_size = 19;
    c.hidden_size = 12;
    c.intermediate_size = 20;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 4;
    c.rotary_dim = 4;
    c.max_position_embeddings = 32;
    c.norm_eps = 1e-5;
    c.rope_theta = 100;
    c.rope_scaling = MODEL_ROPE_NONE;
    c.bos_token_id = c.pad_token_id = -1;
    return c;
}

static llama_train *new_model(const model_config *config, uint64_t seed) {
    llama_train *m = NULL;
    duel_error err = {0};
    if (llama_train_create(config, &m, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    for (int i = 0; i < llama_train_num_tensors(m); i++) {
        train_tensor t;
        assert_int_equal(llama_train_tensor_at(m, i, &t), 0);
        bool norm = strstr(t.name, "norm") != NULL;
        double scale = t.ndim == 2 ? 1.0 / sqrt(t.shape[1]) : 0.2;
        if (strcmp(t.name, "model.embed_tokens.weight") == 0) scale = 1;
        for (size_t k = 0; k < t.numel; k++)
            t.param[k] = (float)((norm ? 1.0 : 0.0) + scale * duel_rng_normal(&rng));
    }
    return m;
}

static void expect_ok(int rc, const duel_error *err) {
    if (rc) fprintf(stderr, "%s\n", err->message);
    assert_int_equal(rc, 0);
}

static void test_config_checks(void **state) {
    (void)state;
    llama_train *m = NULL;
    duel_error err = {0};
    model_config c = tiny_config();
    c.arch = MODEL_ARCH_GPT_NEOX;
    snprintf(c.architecture, sizeof c.architecture, "GPTNeoXForCausalLM");
    assert_int_equal(llama_train_create(&c, &m, &err), DUEL_EUNSUPPORTED);
    assert_non_null(strstr(err.message, "GPTNeoXForCausalLM"));
    assert_null(m);
    c = tiny_config();
    c.num_kv_heads = 3;
    assert_int_equal(llama_train_create(&c, &m, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "num_kv_heads"));
    c = tiny_config();
    c.rotary_dim = 2;
    assert_int_equal(llama_train_create(&c, &m, &err), DUEL_EINVAL);
    c = tiny_config();
    c.head = MODEL_HEAD_SEQUENCE_CLASSIFICATION;
    assert_int_equal(llama_train_create(&c, &m, &err), DUEL_EUNSUPPORTED);
    c = tiny_config();
    c.vocab_size = 1 << 30;
    c.hidden_size = 1 << 14;
    assert_int_equal(llama_train_create(&c, &m, &err), DUEL_ELIMIT);
    c = tiny_config();
    c.hidden_size = 0;
    assert_int_equal(llama_train_create(&c, &m, &err), DUEL_EINVAL);
}

static void test_tensor_table(void **state) {
    (void)state;
    model_config c = tiny_config();
    llama_train *m = new_model(&c, 1);
    /* embed + 2 layers x 9 + norm + lm_head */
    assert_int_equal(llama_train_num_tensors(m), 1 + 2 * 9 + 2);
    train_tensor t;
    duel_error err = {0};
    expect_ok(llama_train_find_tensor(m, "model.layers.1.self_attn.k_proj.weight", &t, &err), &err);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[0], 2 * 4);
    assert_int_equal(t.shape[1], 12);
    assert_ptr_equal(t.param, llama_train_parameters(m)->wk + 8 * 12);
    assert_ptr_equal(t.grad, llama_train_gradients(m)->wk + 8 * 12);
    expect_ok(llama_train_find_tensor(m, "lm_head.weight", &t, &err), &err);
    assert_int_equal(llama_train_find_tensor(m, "model.layers.0.self_attn.q_proj.bias", &t, &err),
                     DUEL_ENOTFOUND);
    assert_non_null(strstr(err.message, "q_proj.bias"));
    /* the table covers every parameter exactly once */
    size_t total = 0;
    for (int i = 0; i < llama_train_num_tensors(m); i++) {
        assert_int_equal(llama_train_tensor_at(m, i, &t), 0);
        total += t.numel;
    }
    assert_int_equal(total, llama_train_num_parameters(m));
    assert_int_equal(llama_train_tensor_at(m, 99, &t), DUEL_EINVAL);
    llama_train_free(m);

    /* Qwen2-style biases and tied embeddings */
    c.attention_bias = true;
    c.tie_word_embeddings = true;
    m = new_model(&c, 2);
    assert_int_equal(llama_train_num_tensors(m), 1 + 2 * 12 + 1);
    expect_ok(llama_train_find_tensor(m, "model.layers.0.self_attn.v_proj.bias", &t, &err), &err);
    assert_int_equal(t.numel, 8);
    assert_int_equal(llama_train_find_tensor(m, "lm_head.weight", &t, NULL), DUEL_ENOTFOUND);
    assert_ptr_equal(llama_train_parameters(m)->lm_head, llama_train_parameters(m)->embed_tokens);
    llama_train_free(m);
}

/* Two sequences of lengths 5 and 8 (T = 7 positions), right-padded. */
enum { B2 = 2, T2 = 7 };
static const int32_t seq_a[5] = {1, 7, 3, 12, 5};
static const int32_t seq_b[8] = {2, 9, 9, 4, 18, 0, 6, 11};

static void fill_pair_batch(int32_t *tokens, int32_t *targets, float *mask, int32_t pad) {
    for (int i = 0; i < B2 * T2; i++) tokens[i] = pad, targets[i] = -100, mask[i] = 0;
    for (int t = 0; t < 4; t++) {
        tokens[t] = seq_a[t];
        targets[t] = seq_a[t + 1];
        mask[t] = t >= 1; /* prompt of 2 tokens */
    }
    for (int t = 0; t < 7; t++) {
        tokens[T2 + t] = seq_b[t];
        targets[T2 + t] = seq_b[t + 1];
        mask[T2 + t] = t >= 2;
    }
}

static void test_batch_validation(void **state) {
    (void)state;
    model_config c = tiny_config();
    llama_train *m = new_model(&c, 3);
    int32_t tokens[B2 * T2], targets[B2 * T2];
    float mask[B2 * T2];
    fill_pair_batch(tokens, targets, mask, 0);
    train_batch batch = {B2, T2, tokens, targets, mask};
    double lp[B2], count[B2], dseq[B2] = {1, 1};
    duel_error err = {0};

    assert_int_equal(llama_train_backward(m, dseq, &err), DUEL_EINVAL); /* no forward yet */
    tokens[3] = 19;
    assert_int_equal(llama_train_forward(m, &batch, lp, count, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "token 19 at [0][3]"));
    tokens[3] = seq_a[3];
    targets[T2 + 4] = -100; /* under mask 1 */
    assert_int_equal(llama_train_forward(m, &batch, lp, count, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "[1][4]"));
    targets[T2 + 4] = seq_b[5];
    mask[2] = -1;
    assert_int_equal(llama_train_forward(m, &batch, lp, count, NULL, &err), DUEL_EINVAL);
    mask[2] = NAN;
    assert_int_equal(llama_train_forward(m, &batch, lp, count, NULL, &err), DUEL_EINVAL);
    mask[2] = 1;
    train_batch long_batch = {1, 33, tokens, targets, mask};
    assert_int_equal(llama_train_forward(m, &long_batch, lp, count, NULL, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "max_position_embeddings"));
    train_batch empty = {0, T2, tokens, targets, mask};
    assert_int_equal(llama_train_forward(m, &empty, lp, count, NULL, &err), DUEL_EINVAL);

    expect_ok(llama_train_forward(m, &batch, lp, count, NULL, &err), &err);
    dseq[1] = NAN;
    assert_int_equal(llama_train_backward(m, dseq, &err), DUEL_EINVAL);
    dseq[1] = 1;
    expect_ok(llama_train_backward(m, dseq, &err), &err);
    assert_int_equal(llama_train_backward(m, dseq, &err), DUEL_EINVAL); /* one per forward */
    llama_train_free(m);
}

static void copy_grads(llama_train *m, float *out) {
    memcpy(out, llama_train_gradient_memory(m), llama_train_num_parameters(m) * sizeof(float));
}

/* A sequence alone and the same sequence right-padded next to a longer one give the same
 * log-probability and the same gradient; the padding tokens' values do not matter. */
static void test_right_padding_changes_nothing(void **state) {
    (void)state;
    model_config c = tiny_config();
    llama_train *m = new_model(&c, 4);
    size_t P = llama_train_num_parameters(m);
    float *alone = calloc(P, sizeof(float)), *padded = calloc(P, sizeof(float));
    assert_true(alone && padded);
    duel_error err = {0};

    /* sequence a alone, T = 4 (small first, so the padded batch grows the activations) */
    float mask1[4] = {0, 1, 1, 1};
    int32_t targets1[4] = {seq_a[1], seq_a[2], seq_a[3], seq_a[4]};
    train_batch one = {1, 4, seq_a, targets1, mask1};
    double lp1, count1, d1 = 1.0;
    float token_lp1[4];
    llama_train_zero_grad(m);
    expect_ok(llama_train_forward(m, &one, &lp1, &count1, token_lp1, &err), &err);
    expect_ok(llama_train_backward(m, &d1, &err), &err);
    copy_grads(m, alone);
    assert_float_equal(count1, 3, 0);
    assert_true(lp1 < 0);

    for (int32_t pad = 0; pad < 3; pad++) {
        int32_t tokens[B2 * T2], targets[B2 * T2];
        float mask[B2 * T2], token_lp[B2 * T2];
        fill_pair_batch(tokens, targets, mask, pad * 7);
        train_batch batch = {B2, T2, tokens, targets, mask};
        double lp[B2], count[B2], dseq[B2] = {1.0, 0.0};
        llama_train_zero_grad(m);
        expect_ok(llama_train_forward(m, &batch, lp, count, token_lp, &err), &err);
        expect_ok(llama_train_backward(m, dseq, &err), &err);
        copy_grads(m, padded);
        assert_float_equal(lp[0], lp1, 1e-5 * fabs(lp1));
        assert_float_equal(count[0], 3, 0);
        assert_float_equal(count[1], 5, 0);
        double e = test_relative_error_f32(padded, alone, P);
        if (!(e < 1e-5)) {
            fprintf(stderr, "pad %d: gradient relative error %.3g\n", pad * 7, e);
            fail();
        }
        /* per-token log-probs: zero off the mask, negative on it, summing to the sequence's */
        double sum = 0;
        for (int i = 0; i < B2 * T2; i++) {
            if (mask[i] == 0) assert_true(token_lp[i] == 0);
            else assert_true(token_lp[i] < 0);
            if (i < T2) sum += token_lp[i];
        }
        assert_float_equal(sum, lp[0], 1e-4);
        for (int t = 0; t < 4; t++) assert_float_equal(token_lp[t], token_lp1[t], 1e-5);
    }
    free(alone);
    free(padded);
    llama_train_free(m);
}

/* A batch whose masks are all zero: no row reaches the head, log-probs and counts are 0 and
 * the backward leaves every gradient at exactly zero. */
static void test_all_zero_mask(void **state) {
    (void)state;
    model_config c = tiny_config();
    llama_train *m = new_model(&c, 10);
    int32_t tokens[B2 * T2], targets[B2 * T2];
    float mask[B2 * T2];
    fill_pair_batch(tokens, targets, mask, 0);
    for (int i = 0; i < B2 * T2; i++) mask[i] = 0, targets[i] = -100;
    train_batch batch = {B2, T2, tokens, targets, mask};
    double lp[B2] = {7, 7}, count[B2] = {7, 7}, dseq[B2] = {1, -1};
    duel_error err = {0};
    llama_train_zero_grad(m);
    expect_ok(llama_train_forward(m, &batch, lp, count, NULL, &err), &err);
    assert_true(lp[0] == 0 && lp[1] == 0 && count[0] == 0 && count[1] == 0);
    expect_ok(llama_train_backward(m, dseq, &err), &err);
    const float *g = llama_train_gradient_memory(m);
    for (size_t i = 0; i < llama_train_num_parameters(m); i++) assert_true(g[i] == 0);
    llama_train_free(m);
}

/* Gradients accumulate over backward passes until zero_grad. */
static void test_gradient_accumulation(void **state) {
    (void)state;
    model_config c = tiny_config();
    c.mlp_bias = true;
    llama_train *m = new_model(&c, 5);
    size_t P = llama_train_num_parameters(m);
    float *once = calloc(P, sizeof(float)), *twice = calloc(P, sizeof(float));
    assert_true(once && twice);
    int32_t tokens[B2 * T2], targets[B2 * T2];
    float mask[B2 * T2];
    fill_pair_batch(tokens, targets, mask, 0);
    train_batch batch = {B2, T2, tokens, targets, mask};
    double lp[B2], count[B2], dseq[B2] = {0.5, -1.5};
    duel_error err = {0};
    llama_train_zero_grad(m);
    expect_ok(llama_train_forward(m, &batch, lp, count, NULL, &err), &err);
    expect_ok(llama_train_backward(m, dseq, &err), &err);
    copy_grads(m, once);
    expect_ok(llama_train_forward(m, &batch, lp, count, NULL, &err), &err);
    expect_ok(llama_train_backward(m, dseq, &err), &err);
    copy_grads(m, twice);
    double norm = 0;
    for (size_t i = 0; i < P; i++) {
        assert_float_equal(twice[i], 2 * once[i], 1e-6 + 1e-5 * fabsf(once[i]));
        norm += (double)once[i] * once[i];
    }
    assert_true(norm > 0);
    llama_train_zero_grad(m);
    copy_grads(m, twice);
    for (size_t i = 0; i < P; i++) assert_true(twice[i] == 0);
    free(once);
    free(twice);
    llama_train_free(m);
}

/* One SGD step on the DPO gradient, with the reference = the initial policy (its log-probs
 * computed once): the loss starts at log 2, falls, and every pair's margin becomes positive. */
static void test_dpo_step_raises_chosen_over_rejected(void **state) {
    (void)state;
    model_config c = tiny_config();
    c.attention_bias = true;
    llama_train *m = new_model(&c, 6);
    enum { B = 4, T = 6 };
    /* pairs (0,1) and (2,3): shared prompts, different responses, unequal lengths */
    int32_t tokens[B * T] = {3, 4, 5, 6, 7, 0,   3, 4, 9, 10, 0, 0,
                             11, 12, 13, 1, 2, 3, 11, 12, 13, 14, 0, 0};
    int32_t targets[B * T] = {4, 5, 6, 7, 8, -100,   4, 9, 10, 11, -100, -100,
                              12, 13, 1, 2, 3, 4,    12, 13, 14, 15, -100, -100};
    float mask[B * T] = {0, 1, 1, 1, 1, 0,  0, 1, 1, 1, 0, 0,
                         0, 0, 1, 1, 1, 1,  0, 0, 1, 1, 0, 0};
    train_batch batch = {B, T, tokens, targets, mask};
    double lp[B], count[B], ref[B];
    duel_error err = {0};
    expect_ok(llama_train_forward(m, &batch, ref, count, NULL, &err), &err);

    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    double losses[2], margins[2][2];
    for (int step = 0; step < 2; step++) {
        expect_ok(llama_train_forward(m, &batch, lp, count, NULL, &err), &err);
        double pc[2] = {lp[0], lp[2]}, pr[2] = {lp[1], lp[3]}, nc[2] = {count[0], count[2]},
               nr[2] = {count[1], count[3]}, rc[2] = {ref[0], ref[2]}, rr[2] = {ref[1], ref[3]};
        dap_loss_batch pairs = {2, pc, pr, nc, nr, rc, rr, NULL, NULL};
        double gc[2], gr[2];
        dap_loss_grads g = {gc, gr, NULL};
        dap_loss_result r;
        expect_ok(dap_loss_compute(&o, &pairs, &r, &g, &err), &err);
        losses[step] = r.loss;
        for (int p = 0; p < 2; p++) margins[step][p] = (pc[p] - pr[p]) - (rc[p] - rr[p]);
        if (step == 1) break;
        double dseq[B] = {gc[0], gr[0], gc[1], gr[1]};
        llama_train_zero_grad(m);
        expect_ok(llama_train_backward(m, dseq, &err), &err);
        float *w = llama_train_parameter_memory(m), *g_all = llama_train_gradient_memory(m);
        for (size_t i = 0; i < llama_train_num_parameters(m); i++) w[i] -= 0.5f * g_all[i];
    }
    assert_float_equal(losses[0], log(2.0), 1e-6);
    assert_float_equal(margins[0][0], 0, 0);
    assert_true(losses[1] < losses[0] - 1e-4);
    assert_true(margins[1][0] > 0 && margins[1][1] > 0);
    llama_train_free(m);
}

/* AdamW decays matrices and embeddings only: the mask is 1 exactly on 2-D tensors' parameters. */
static void test_decay_mask(void **state) {
    (void)state;
    model_config c = tiny_config();
    c.attention_bias = true; /* 1-D biases must stay undecayed too */
    train_model *m = NULL;
    duel_error err = {0};
    assert_int_equal(train_model_create(&c, &m, &err), 0);
    unsigned char *mask = train_model_decay_mask(m);
    assert_non_null(mask);
    float *base = train_model_parameter_memory(m);
    size_t ones = 0, expected = 0;
    int saw_norm = 0, saw_bias = 0;
    for (int i = 0; i < train_model_num_tensors(m); i++) {
        train_tensor t;
        assert_int_equal(train_model_tensor_at(m, i, &t), 0);
        for (size_t k = 0; k < t.numel; k++)
            assert_int_equal(mask[(size_t)(t.param - base) + k], t.ndim == 2);
        if (t.ndim == 2) expected += t.numel;
        saw_norm |= strstr(t.name, "norm") != NULL;
        saw_bias |= strstr(t.name, "bias") != NULL;
    }
    for (size_t k = 0; k < train_model_num_parameters(m); k++) ones += mask[k];
    assert_int_equal(ones, expected);
    assert_true(saw_norm && saw_bias && expected < train_model_num_parameters(m));
    free(mask);
    train_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_checks),
        cmocka_unit_test(test_tensor_table),
        cmocka_unit_test(test_batch_validation),
        cmocka_unit_test(test_right_padding_changes_nothing),
        cmocka_unit_test(test_all_zero_mask),
        cmocka_unit_test(test_gradient_accumulation),
        cmocka_unit_test(test_dpo_step_raises_chosen_over_rejected),
        cmocka_unit_test(test_decay_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
