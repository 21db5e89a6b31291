/* test_train_storage.c: the memory the trainable model families share (trainer/train_storage.c):
 * parameter and gradient carving (empty slots NULL, gradients at the same offsets), the tensor
 * table (per-layer names, absent tensors skipped, lookups and their errors), activation growth
 * (keeps the larger capacity, the limit checked before any allocation, old memory kept on
 * failure) and the forward-then-backward bookkeeping (one backward per forward, finite
 * gradients only, token log-probabilities copied on request). The families' numerics are tested
 * in test_llama_train.c, test_neox_train.c and test_train_model_torch.c. */
#include "train_storage.h"
#include "test_helpers.h"

static void expect_ok(int rc, const duel_error *err) {
    if (rc) fprintf(stderr, "%s\n", err->message);
    assert_int_equal(rc, 0);
}

typedef struct two_layer_params {
    float *embed, *w, *b, *norm;
} two_layer_params;

/* embed [5][3], w [2][4][3], no bias, norm [3] */
static const size_t sizes[4] = {15, 24, 0, 3};

static void slots_of(two_layer_params *p, float **slots[4]) {
    slots[0] = &p->embed, slots[1] = &p->w, slots[2] = &p->b, slots[3] = &p->norm;
}

static void init(train_storage *s, two_layer_params *p, two_layer_params *g) {
    float **ps[4], **gs[4];
    slots_of(p, ps);
    slots_of(g, gs);
    duel_error err = {0};
    expect_ok(train_storage_init(s, ps, gs, sizes, 4, 1 + 2 * 2 + 1, "test", &err), &err);
}

static void test_carving_and_tensor_table(void **state) {
    (void)state;
    train_storage s;
    two_layer_params p, g;
    init(&s, &p, &g);
    assert_int_equal(s.num_parameters, 42);
    assert_ptr_equal(p.embed, s.param_memory);
    assert_ptr_equal(p.w, s.param_memory + 15);
    assert_null(p.b);
    assert_null(g.b);
    assert_ptr_equal(p.norm, s.param_memory + 39);
    assert_ptr_equal(g.norm, s.grad_memory + 39);
    for (size_t i = 0; i < s.num_parameters; i++) assert_true(s.param_memory[i] == 0.0f);

    train_storage_add_tensor(&s, "embed.weight", 2, 5, 3, p.embed);
    for (int l = 0; l < 2; l++) {
        const train_layer_tensor rows[] = {
            {"w.weight", 2, 4, 3, p.w, 12},
            {"w.bias", 1, 4, 0, p.b, 4}, /* absent: not listed */
        };
        train_storage_add_layer_tensors(&s, "layers", l, rows, 2);
    }
    train_storage_add_tensor(&s, "norm.weight", 1, 3, 0, p.norm);
    assert_int_equal(s.num_tensors, 4);

    train_tensor t;
    duel_error err = {0};
    expect_ok(train_storage_find_tensor(&s, "layers.1.w.weight", &t, "test", &err), &err);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[0], 4);
    assert_int_equal(t.shape[1], 3);
    assert_int_equal(t.numel, 12);
    assert_ptr_equal(t.param, s.param_memory + 15 + 12);
    assert_ptr_equal(t.grad, s.grad_memory + 15 + 12);
    expect_ok(train_storage_tensor_at(&s, 3, &t), &err);
    assert_string_equal(t.name, "norm.weight");
    assert_int_equal(t.shape[1], 1);
    assert_int_equal(train_storage_find_tensor(&s, "layers.0.w.bias", &t, "test", &err),
                     DUEL_ENOTFOUND);
    assert_non_null(strstr(err.message, "test: no tensor named layers.0.w.bias"));
    assert_int_equal(train_storage_tensor_at(&s, 4, &t), DUEL_EINVAL);
    assert_int_equal(train_storage_tensor_at(&s, -1, &t), DUEL_EINVAL);

    for (size_t i = 0; i < s.num_parameters; i++) s.grad_memory[i] = 1.0f;
    train_storage_zero_grad(&s);
    for (size_t i = 0; i < s.num_parameters; i++) assert_true(s.grad_memory[i] == 0.0f);
    train_storage_free(&s);
    train_storage_free(&s); /* zeroed by the first: freeing twice is harmless */
}

typedef struct acts {
    float *a, *b, *empty;
} acts;

/* Grows the activations as a family does: a = [B*T], b = [2*T], nothing for empty. */
static int grow(train_storage *s, acts *x, int batch, int seq, double estimate, duel_error *err) {
    int cap_batch, cap_seq;
    if (!train_storage_needs_activations(s, batch, seq, &cap_batch, &cap_seq)) return 0;
    size_t n[3] = {(size_t)cap_batch * cap_seq, 2 * (size_t)cap_seq, 0};
    float **slots[3] = {&x->a, &x->b, &x->empty};
    return train_storage_alloc_activations(s, cap_batch, cap_seq, estimate, slots, n, 3, "test",
                                           err);
}

static void test_activation_growth(void **state) {
    (void)state;
    train_storage s;
    two_layer_params p, g;
    init(&s, &p, &g);
    acts x = {0};
    duel_error err = {0};
    int cap_b, cap_s;
    assert_true(train_storage_needs_activations(&s, 1, 1, &cap_b, &cap_s)); /* none yet */
    expect_ok(grow(&s, &x, 2, 5, 20, &err), &err);
    assert_int_equal(s.cap_batch, 2);
    assert_int_equal(s.cap_seq, 5);
    assert_ptr_equal(x.a, s.act_memory);
    assert_ptr_equal(x.b, s.act_memory + 10);
    assert_null(x.empty);
    assert_ptr_equal(s.targets, s.tokens + 10);
    assert_ptr_equal(s.row_targets, s.tokens + 30);
    assert_false(train_storage_needs_activations(&s, 1, 5, &cap_b, &cap_s));
    /* a longer, narrower batch keeps the wider capacity */
    assert_true(train_storage_needs_activations(&s, 1, 7, &cap_b, &cap_s));
    assert_int_equal(cap_b, 2);
    assert_int_equal(cap_s, 7);
    /* over the limit: DUEL_ELIMIT naming the batch, the old activations untouched */
    float *old = s.act_memory;
    double too_many = (double)TRAIN_MAX_ACTIVATION_BYTES / sizeof(float) + 1;
    assert_int_equal(grow(&s, &x, 1, 7, too_many, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "test: a batch of 2 x 7 needs"));
    assert_ptr_equal(s.act_memory, old);
    assert_int_equal(s.cap_seq, 5);
    expect_ok(grow(&s, &x, 1, 7, 28, &err), &err);
    assert_int_equal(s.cap_batch, 2);
    assert_int_equal(s.cap_seq, 7);
    train_storage_free(&s);
}

static void test_forward_backward_bookkeeping(void **state) {
    (void)state;
    train_storage s;
    two_layer_params p, g;
    init(&s, &p, &g);
    acts x = {0};
    duel_error err = {0};
    int32_t tokens[6] = {1, 2, 3, 4, 0, 0}, targets[6] = {2, 3, 4, -100, -100, -100};
    float mask[6] = {1, 1, 1, 0, 0, 0};
    train_batch batch = {2, 3, tokens, targets, mask};
    double lp[2], count[2], dseq[2] = {1.0, -0.5};
    const train_fork *fork = (const train_fork *)&s; /* must be overwritten */

    assert_int_equal(train_storage_begin_backward(&s, dseq, "test", &fork, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "backward needs a forward first"));
    assert_int_equal(train_storage_begin_forward(&s, &batch, NULL, NULL, count, 5, 16, "test",
                                                 &fork, &err),
                     DUEL_EINVAL);
    assert_int_equal(train_storage_begin_forward(&s, &batch, NULL, lp, count, 4, 16, "test", &fork,
                                                 &err),
                     DUEL_EINVAL); /* token 4 outside a vocabulary of 4 */
    expect_ok(train_storage_begin_forward(&s, &batch, NULL, lp, count, 5, 16, "test", &fork, &err),
              &err);
    assert_null(fork);
    expect_ok(grow(&s, &x, 2, 3, 12, &err), &err);
    train_storage_keep_batch(&s, &batch);
    assert_int_equal(s.batch, 2);
    assert_int_equal(s.seq, 3);
    assert_memory_equal(s.tokens, tokens, sizeof tokens);
    assert_memory_equal(s.targets, targets, sizeof targets);
    assert_memory_equal(s.mask, mask, sizeof mask);

    /* the head's per-token values reach the caller only when asked for */
    for (int i = 0; i < 6; i++) x.a[i] = (float)(i + 1) * 0.25f;
    float token_logprob[6] = {0};
    train_storage_end_forward(&s, token_logprob, x.a);
    assert_memory_equal(token_logprob, x.a, sizeof token_logprob);
    double bad[2] = {1.0, NAN};
    assert_int_equal(train_storage_begin_backward(&s, bad, "test", &fork, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "seq_logprob[1]) is not finite"));
    assert_int_equal(train_storage_begin_backward(&s, NULL, "test", &fork, &err), DUEL_EINVAL);
    expect_ok(train_storage_begin_backward(&s, dseq, "test", &fork, &err), &err);
    assert_null(fork);
    /* one backward per forward */
    assert_int_equal(train_storage_begin_backward(&s, dseq, "test", &fork, &err), DUEL_EINVAL);
    train_storage_end_forward(&s, NULL, x.a);
    expect_ok(train_storage_begin_backward(&s, dseq, "test", &fork, &err), &err);
    train_storage_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_carving_and_tensor_table),
        cmocka_unit_test(test_activation_growth),
        cmocka_unit_test(test_forward_backward_bookkeeping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
