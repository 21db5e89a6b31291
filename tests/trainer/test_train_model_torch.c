/* test_train_model_torch.c: the whole model's DPO gradients (trainer/train_model.c over
 * llama_train.c and neox_train.c, + trainer/dap_loss.c) against PyTorch autograd in float64 on
 * the same weights and batch.
 * The ctest fixture trainer_torch_reference runs tests/tools/torch_grad_reference.py into
 * $DUEL_BUILD_DIR/test-tmp/torch_grad_reference first; without its output this test fails. */
#include <jansson.h>

#include "dap_loss.h"
#include "file_map.h"
#include "json_util.h"
#include "train_model.h"
#include "test_helpers.h"

#define GRAD_TOL 1e-4   /* per tensor, f32 against float64 autograd (the bound) */
#define VALUE_TOL 1e-5  /* sequence log-probs and loss */
#define MAX_REFERENCE_BYTES (64u << 20)

static json_t *member(const json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    if (!v) {
        fprintf(stderr, "manifest: missing key %s\n", key);
        fail();
    }
    return v;
}

static double num(const json_t *obj, const char *key) { return json_number_value(member(obj, key)); }
static bool flag(const json_t *obj, const char *key) { return json_is_true(member(obj, key)); }
static int integer(const json_t *obj, const char *key) { return (int)json_integer_value(member(obj, key)); }

static void config_from_json(const json_t *c, model_config *config) {
    memset(config, 0, sizeof *config);
    const char *arch = json_string_value(member(c, "arch"));
    assert_non_null(arch);
    bool neox = strcmp(arch, "gpt_neox") == 0;
    if (!neox) assert_string_equal(arch, "llama");
    snprintf(config->architecture, sizeof config->architecture, "%s",
             neox ? "GPTNeoXForCausalLM" : "LlamaForCausalLM");
    config->arch = neox ? MODEL_ARCH_GPT_NEOX : MODEL_ARCH_LLAMA;
    config->head = MODEL_HEAD_CAUSAL_LM;
    config->vocab_size = integer(c, "vocab_size");
    config->hidden_size = integer(c, "hidden_size");
    config->intermediate_size = integer(c, "intermediate_size");
    config->num_layers = integer(c, "num_layers");
    config->num_heads = integer(c, "num_heads");
    config->head_dim = integer(c, "head_dim");
    config->max_position_embeddings = integer(c, "max_position_embeddings");
    config->norm_eps = num(c, "norm_eps");
    config->rope_theta = num(c, "rope_theta");
    const char *scaling = json_string_value(member(c, "rope_scaling"));
    assert_non_null(scaling);
    if (strcmp(scaling, "linear") == 0) {
        config->rope_scaling = MODEL_ROPE_LINEAR;
        config->rope_factor = num(c, "rope_factor");
    } else if (strcmp(scaling, "llama3") == 0) {
        config->rope_scaling = MODEL_ROPE_LLAMA3;
        config->rope_factor = num(c, "rope_factor");
        config->rope_low_freq_factor = num(c, "rope_low_freq_factor");
        config->rope_high_freq_factor = num(c, "rope_high_freq_factor");
        config->rope_original_max_positions = integer(c, "rope_original_max_positions");
    } else {
        assert_string_equal(scaling, "none");
    }
    config->tie_word_embeddings = flag(c, "tie_word_embeddings");
    config->attention_bias = flag(c, "attention_bias");
    if (neox) { /* as model_config_parse fills a GPT-NeoX config */
        config->num_kv_heads = config->num_heads;
        config->rotary_dim = integer(c, "rotary_dim");
        const char *act = json_string_value(member(c, "activation"));
        assert_non_null(act);
        config->activation = strcmp(act, "gelu_tanh") == 0 ? MODEL_ACT_GELU_TANH : MODEL_ACT_GELU;
        config->use_parallel_residual = flag(c, "use_parallel_residual");
        config->attention_out_bias = config->attention_bias;
        config->mlp_bias = true;
    } else {
        config->num_kv_heads = integer(c, "num_kv_heads");
        config->rotary_dim = config->head_dim;
        config->activation = MODEL_ACT_SILU;
        config->attention_out_bias = flag(c, "attention_out_bias");
        config->mlp_bias = flag(c, "mlp_bias");
    }
    config->bos_token_id = config->pad_token_id = -1;
}

static void *read_all(const char *dir, const char *file, size_t expect_bytes) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *data = NULL;
    size_t len = 0;
    duel_error err = {0};
    if (duel_file_read_all(path, MAX_REFERENCE_BYTES, &data, &len, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }
    assert_int_equal(len, expect_bytes);
    return data;
}

static void run_variant(const char *dir) {
    char path[1400];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    json_t *manifest = NULL;
    duel_error err = {0};
    if (duel_json_load_file(path, MAX_REFERENCE_BYTES, &manifest, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }
    model_config config;
    config_from_json(member(manifest, "config"), &config);
    train_model *model = NULL;
    if (train_model_create(&config, &model, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }

    /* Weights: every tensor of the model is in the manifest with the same shape, and back. */
    json_t *tensors = member(manifest, "tensors");
    size_t total = (size_t)json_integer_value(member(manifest, "num_elements"));
    assert_int_equal(json_array_size(tensors), train_model_num_tensors(model));
    assert_int_equal(total, train_model_num_parameters(model));
    float *weights = read_all(dir, "weights.f32", total * sizeof(float));
    double *grads = read_all(dir, "grads.f64", total * sizeof(double));
    size_t i;
    json_t *entry;
    json_array_foreach(tensors, i, entry) {
        const char *name = json_string_value(member(entry, "name"));
        train_tensor t;
        if (train_model_find_tensor(model, name, &t, &err) != 0) {
            fprintf(stderr, "%s\n", err.message);
            fail();
        }
        json_t *shape = member(entry, "shape");
        assert_int_equal(json_array_size(shape), t.ndim);
        for (int d = 0; d < t.ndim; d++)
            assert_int_equal(json_integer_value(json_array_get(shape, d)), t.shape[d]);
        size_t offset = (size_t)json_integer_value(member(entry, "offset"));
        assert_true(offset + t.numel <= total);
        memcpy(t.param, weights + offset, t.numel * sizeof(float));
    }

    /* The batch */
    json_t *jb = member(manifest, "batch");
    int B = integer(jb, "batch_size"), T = integer(jb, "seq_len");
    assert_int_equal(B, 4);
    size_t n = (size_t)B * T;
    int32_t *tokens = calloc(n, sizeof *tokens), *targets = calloc(n, sizeof *targets);
    float *mask = calloc(n, sizeof *mask);
    assert_true(tokens && targets && mask);
    assert_int_equal(json_array_size(member(jb, "tokens")), n);
    for (size_t k = 0; k < n; k++) {
        tokens[k] = (int32_t)json_integer_value(json_array_get(member(jb, "tokens"), k));
        targets[k] = (int32_t)json_integer_value(json_array_get(member(jb, "targets"), k));
        mask[k] = (float)json_number_value(json_array_get(member(jb, "mask"), k));
    }
    train_batch batch = {B, T, tokens, targets, mask};
    double seq_lp[4], seq_count[4];
    if (train_model_forward(model, &batch, seq_lp, seq_count, NULL, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }
    json_t *expected = member(manifest, "expected");
    float seq_lp_f[4];
    double expect_lp[4];
    for (int b = 0; b < 4; b++) {
        seq_lp_f[b] = (float)seq_lp[b];
        expect_lp[b] = json_number_value(json_array_get(member(expected, "seq_logprob"), b));
        assert_float_equal(seq_count[b],
                           json_number_value(json_array_get(member(expected, "seq_count"), b)), 0);
    }
    double lp_err = test_relative_error(seq_lp_f, expect_lp, 4);

    /* DPO on pairs (0, 1) and (2, 3) */
    json_t *dpo = member(manifest, "dpo");
    dap_loss_options options;
    dap_loss_default_options(DAP_LOSS_DPO, &options);
    options.beta = num(dpo, "beta");
    double pc[2] = {seq_lp[0], seq_lp[2]}, pr[2] = {seq_lp[1], seq_lp[3]};
    double nc[2] = {seq_count[0], seq_count[2]}, nr[2] = {seq_count[1], seq_count[3]};
    double rc[2], rr[2];
    for (int p = 0; p < 2; p++) {
        rc[p] = json_number_value(json_array_get(member(dpo, "reference_chosen"), p));
        rr[p] = json_number_value(json_array_get(member(dpo, "reference_rejected"), p));
    }
    dap_loss_batch pairs = {2, pc, pr, nc, nr, rc, rr, NULL, NULL};
    double gc[2], gr[2];
    dap_loss_grads lg = {gc, gr, NULL};
    dap_loss_result result;
    assert_int_equal(dap_loss_compute(&options, &pairs, &result, &lg, &err), 0);
    double expect_loss = num(expected, "loss");
    double loss_err = fabs(result.loss - expect_loss) / fabs(expect_loss);

    double dseq[4] = {gc[0], gr[0], gc[1], gr[1]};
    train_model_zero_grad(model);
    if (train_model_backward(model, dseq, &err) != 0) {
        fprintf(stderr, "%s\n", err.message);
        fail();
    }
    double worst = 0;
    const char *worst_name = "";
    bool ok = lp_err < VALUE_TOL && loss_err < VALUE_TOL;
    json_array_foreach(tensors, i, entry) {
        const char *name = json_string_value(member(entry, "name"));
        train_tensor t;
        assert_int_equal(train_model_find_tensor(model, name, &t, NULL), 0);
        const double *ref = grads + (size_t)json_integer_value(member(entry, "offset"));
        double ref_norm = 0;
        for (size_t k = 0; k < t.numel; k++) ref_norm += ref[k] * ref[k];
        double e = test_relative_error(t.grad, ref, t.numel);
        if (ref_norm == 0 || !(e < GRAD_TOL)) {
            fprintf(stderr, "  %s: relative error %.3g, reference norm %.3g\n", name, e,
                    sqrt(ref_norm));
            ok = false;
        }
        if (!(e <= worst)) {
            worst = e;
            worst_name = name;
        }
    }
    printf("[ variant  ] %s: seq log-prob rel err %.2g, loss %.6f rel err %.2g, worst gradient "
           "%s rel err %.2g over %d tensors\n",
           json_string_value(member(manifest, "variant")), lp_err, result.loss, loss_err,
           worst_name, worst, train_model_num_tensors(model));
    assert_true(ok);

    free(tokens), free(targets), free(mask), free(weights), free(grads);
    train_model_free(model);
    json_decref(manifest);
}

static void test_gradients_match_torch(void **state) {
    (void)state;
    char root[1024], path[1100];
    snprintf(root, sizeof root, "%s/test-tmp/torch_grad_reference",
             test_env("DUEL_BUILD_DIR", "."));
    snprintf(path, sizeof path, "%s/variants.txt", root);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr,
                "%s is missing: the ctest fixture trainer_torch_reference (tests/tools/"
                "torch_grad_reference.py under /usr/bin/python3 with python3-torch) must run "
                "first\n",
                path);
        fail();
    }
    char name[128];
    int variants = 0;
    while (fscanf(f, "%127s", name) == 1) {
        char dir[1300];
        snprintf(dir, sizeof dir, "%s/%s", root, name);
        run_variant(dir);
        variants++;
    }
    fclose(f);
    assert_true(variants >= 5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradients_match_torch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
