/* test_neox_train.c: the trainable GPT-NeoX model (trainer/neox_train.c) and the family
 * dispatch (trainer/train_model.c) without torch: config checks, the HF tensor table, right
 * padding that changes nothing, and a DPO step that raises the chosen response's margin.
 * Exact gradient values are checked against torch in test_train_model_torch.c. */
#include "dap_loss.h"
#include "neox_train.h"
#include "rng.h"
#include "test_helpers.h"
#include "train_model.h"

static model_config neox_config(bool parallel) {
    model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.architecture, sizeof c.architecture, "GPTNeoXForCausalLM");
    c.arch = MODEL_ARCH_GPT_NEOX;
    c.head = MODEL_HEAD_CAUSAL_LM;
    c.activation = MODEL_ACT_GELU;
    c.vocab_size = 17;
    c.hidden_size = 12;
    c.intermediate_size = 24;
    c.num_layers = 2;
    c.num_heads = 3;
    c.num_kv_heads = 3;
    c.head_dim = 4;
    c.rotary_dim = 2;
    c.max_position_embeddings = 16;
    c.norm_eps = 1e-5;
    c.rope_theta = 100;
    c.use_parallel_residual = parallel;
    c.attention_bias = c.attention_out_bias = c.mlp_bias = true;
    c.bos_token_id = c.pad_token_id = -1;
    return c;
}

static train_model *new_model(const model_config *config, uint64_t seed) {
    train_model *m = NULL;
    duel_error err = {0};
    if (train_model_create(config, &m, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }
    duel_rng rng;
    duel_rng_seed(&rng, seed);
    for (int i = 0; i < train_model_num_tensors(m); i++) {
        train_tensor t;
        assert_int_equal(train_model_tensor_at(m, i, &t), 0);
        bool norm_weight = strstr(t.name, "norm") && strstr(t.name, ".weight");
        double scale = t.ndim == 2 ? 1.0 / sqrt(t.shape[1]) : 0.2;
        if (strstr(t.name, "embed_in")) scale = 1;
        for (size_t k = 0; k < t.numel; k++)
            t.param[k] = (float)((norm_weight ? 1.0 : 0.0) + scale * duel_rng_normal(&rng));
    }
    return m;
}

static void test_config_checks(void **state) {
    (void)state;
    neox_train *m = NULL;
    duel_error err = {0};
    model_config c = neox_config(true);
    c.num_kv_heads = 1;
    assert_int_equal(neox_train_create(&c, &m, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "num_kv_heads"));
    c = neox_config(true);
    c.rotary_dim = 6;
    assert_int_equal(neox_train_create(&c, &m, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "rotary_dim"));
    c = neox_config(true);
    c.activation = MODEL_ACT_SILU;
    assert_int_equal(neox_train_create(&c, &m, &err), DUEL_EUNSUPPORTED);
    c = neox_config(true);
    c.arch = MODEL_ARCH_LLAMA;
    assert_int_equal(neox_train_create(&c, &m, &err), DUEL_EUNSUPPORTED);
    assert_null(m);
    /* the dispatch refuses an unknown architecture */
    train_model *tm = NULL;
    c.arch = (model_arch)42;
    assert_int_equal(train_model_create(&c, &tm, &err), DUEL_EUNSUPPORTED);
    assert_null(tm);
}

static void test_tensor_table(void **state) {
    (void)state;
    model_config c = neox_config(true);
    neox_train *m = NULL;
    duel_error err = {0};
    assert_int_equal(neox_train_create(&c, &m, &err), 0);
    assert_int_equal(neox_train_num_tensors(m), 1 + 2 * 12 + 2 + 1);
    train_tensor t;
    assert_int_equal(neox_train_find_tensor(m, "gpt_neox.layers.1.attention.query_key_value.weight",
                                            &t, &err), 0);
    assert_int_equal(t.shape[0], 36);
    assert_int_equal(t.shape[1], 12);
    assert_ptr_equal(t.param, neox_train_parameters(m)->w_qkv + 36 * 12);
    assert_int_equal(neox_train_find_tensor(m, "embed_out.weight", &t, &err), 0);
    size_t total = 0;
    for (int i = 0; i < neox_train_num_tensors(m); i++) {
        assert_int_equal(neox_train_tensor_at(m, i, &t), 0);
        total += t.numel;
    }
    assert_int_equal(total, neox_train_num_parameters(m));
    neox_train_free(m);

    c.attention_bias = false;
    c.tie_word_embeddings = true;
    assert_int_equal(neox_train_create(&c, &m, &err), 0);
    assert_int_equal(neox_train_num_tensors(m), 1 + 2 * 10 + 2);
    assert_int_equal(neox_train_find_tensor(m, "gpt_neox.layers.0.attention.dense.bias", &t, &err),
                     DUEL_ENOTFOUND);
    assert_ptr_equal(neox_train_parameters(m)->embed_out, neox_train_parameters(m)->embed_in);
    neox_train_free(m);
}

/* A sequence alone and right-padded beside a longer one: same log-prob, same gradient. */
static void check_padding(bool parallel) {
    model_config c = neox_config(parallel);
    train_model *m = new_model(&c, parallel ? 7 : 8);
    size_t P = train_model_num_parameters(m);
    float *alone = calloc(P, sizeof(float)), *padded = calloc(P, sizeof(float));
    assert_true(alone && padded);
    duel_error err = {0};
    const int32_t seq[5] = {3, 8, 1, 16, 5};
    float mask1[4] = {0, 1, 1, 1};
    int32_t targets1[4] = {8, 1, 16, 5};
    train_batch one = {1, 4, seq, targets1, mask1};
    double lp1, count1, d1 = 1.0;
    train_model_zero_grad(m);
    assert_int_equal(train_model_forward(m, &one, &lp1, &count1, NULL, &err), 0);
    assert_int_equal(train_model_backward(m, &d1, &err), 0);
    memcpy(alone, train_model_gradient_memory(m), P * sizeof(float));

    int32_t tokens[2 * 6] = {3, 8, 1, 16, 9, 9, 2, 4, 6, 10, 12, 14};
    int32_t targets[2 * 6] = {8, 1, 16, 5, -100, -100, 4, 6, 10, 12, 14, 0};
    float mask[2 * 6] = {0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1};
    train_batch two = {2, 6, tokens, targets, mask};
    double lp[2], count[2], dseq[2] = {1.0, 0.0};
    train_model_zero_grad(m);
    assert_int_equal(train_model_forward(m, &two, lp, count, NULL, &err), 0);
    assert_int_equal(train_model_backward(m, dseq, &err), 0);
    memcpy(padded, train_model_gradient_memory(m), P * sizeof(float));
    assert_float_equal(lp[0], lp1, 1e-5 * fabs(lp1));
    double e = test_relative_error_f32(padded, alone, P);
    if (!(e < 1e-5)) {
        fprintf(stderr, "parallel=%d: gradient relative error %.3g\n", parallel, e);
        fail();
    }
    free(alone);
    free(padded);
    train_model_free(m);
}

static void test_right_padding_changes_nothing(void **state) {
    (void)state;
    check_padding(true);
    check_padding(false);
}

static void test_dpo_step(void **state) {
    (void)state;
    model_config c = neox_config(true);
    train_model *m = new_model(&c, 9);
    int32_t tokens[4 * 5] = {1, 2, 3, 4, 5, 1, 2, 7, 0, 0, 9, 10, 11, 12, 0, 9, 10, 13, 14, 15};
    int32_t targets[4 * 5] = {2, 3, 4, 5, 6, 2, 7, 8, -100, -100,
                              10, 11, 12, 13, -100, 10, 13, 14, 15, 16};
    float mask[4 * 5] = {0, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1};
    train_batch batch = {4, 5, tokens, targets, mask};
    double lp[4], count[4], ref[4];
    duel_error err = {0};
    assert_int_equal(train_model_forward(m, &batch, ref, count, NULL, &err), 0);
    dap_loss_options o;
    dap_loss_default_options(DAP_LOSS_DPO, &o);
    double loss[2], margin[2][2];
    for (int step = 0; step < 2; step++) {
        assert_int_equal(train_model_forward(m, &batch, lp, count, NULL, &err), 0);
        double pc[2] = {lp[0], lp[2]}, pr[2] = {lp[1], lp[3]}, nc[2] = {count[0], count[2]},
               nr[2] = {count[1], count[3]}, rc[2] = {ref[0], ref[2]}, rr[2] = {ref[1], ref[3]};
        dap_loss_batch pairs = {2, pc, pr, nc, nr, rc, rr, NULL, NULL};
        double gc[2], gr[2];
        dap_loss_grads g = {gc, gr, NULL};
        dap_loss_result r;
        assert_int_equal(dap_loss_compute(&o, &pairs, &r, &g, &err), 0);
        loss[step] = r.loss;
        for (int p = 0; p < 2; p++) margin[step][p] = (pc[p] - pr[p]) - (rc[p] - rr[p]);
        if (step == 1) break;
        double dseq[4] = {gc[0], gr[0], gc[1], gr[1]};
        train_model_zero_grad(m);
        assert_int_equal(train_model_backward(m, dseq, &err), 0);
        float *w = train_model_parameter_memory(m), *gw = train_model_gradient_memory(m);
        for (size_t i = 0; i < train_model_num_parameters(m); i++) w[i] -= 0.5f * gw[i];
    }
    assert_float_equal(loss[0], log(2.0), 1e-6);
    assert_true(loss[1] < loss[0] - 1e-4);
    assert_true(margin[1][0] > 0 && margin[1][1] > 0);
    train_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_checks),
        cmocka_unit_test(test_tensor_table),
        cmocka_unit_test(test_right_padding_changes_nothing),
        cmocka_unit_test(test_dpo_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
