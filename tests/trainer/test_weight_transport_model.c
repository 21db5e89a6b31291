/* test_weight_transport_model.c: trainer/weight_transport_model.h, the serving end of the GPU
 * weight transports, in the parts that need no GPU: a snapshot written by snapshot_write and the
 * trainer's parameter block as the transport delivers it make a model equal to the snapshot's
 * folder (the same logits, bit for bit: the block is the data section of model.safetensors, the
 * layout the receiver relies on: lm_model_export_block, not the parameter memory, which is laid
 * out otherwise and is refused); a block with one parameter changed, or of another size, is
 * refused with DUEL_EFORMAT naming the hash (serving then loads the folder); a receiver of the
 * cuda_ipc kind on a machine without a GPU fails with DUEL_EDEVICE, and the file kind is
 * refused. */
#include "test_helpers.h"

#include "backend_cuda.h"
#include "erm.h"
#include "lm_trainer.h"
#include "model.h"
#include "snapshot_write.h"
#include "train_model.h"
#include "weight_transport_model.h"

static void logits_of(model *m, float *out) {
    static const int32_t tokens[] = {3, 14, 15, 92, 65, 35};
    model_kv_cache *kv = NULL;
    duel_error err = {0};
    assert_int_equal(model_kv_cache_create(m, 8, &kv, &err), 0);
    assert_int_equal(model_forward(m, kv, tokens, 6, out, false, NULL, &err), 0);
    model_kv_cache_free(kv);
}

static void test_block_makes_the_snapshot(void **state) {
    (void)state;
    char model_dir[1024], data[512], dir[1024];
    snprintf(model_dir, sizeof model_dir, "%s/test-models/tiny-llama-f32",
             test_env("DUEL_BUILD_DIR", "."));
    test_make_temp_dir("wt-model", data, sizeof data);
    train_model *policy = NULL;
    char *config_json = NULL;
    duel_error err = {0};
    if (lm_model_load_hf(model_dir, &policy, &config_json, &err)) fail_msg("%s", err.message);
    /* A trained-looking policy: not the base weights. */
    float *params = train_model_parameter_memory(policy);
    size_t n = train_model_num_parameters(policy);
    for (size_t i = 0; i < n; i += 7) params[i] *= 1.01f;
    erm_config ec = {2, 2 * train_model_config(policy)->hidden_size, 8};
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    erm *e = NULL;
    assert_int_equal(erm_create(&ec, &rng, &e, NULL), 0);
    snapshot_info info = {1, 0, 10, 80, 1700000000000LL, model_dir, NULL};
    if (snapshot_write(data, &info, policy, config_json, e, NULL, dir, sizeof dir, &err))
        fail_msg("%s", err.message);

    /* What the trainer sends: the export's block (its parameter memory is laid out otherwise). */
    float *block = malloc(n * sizeof *block);
    lm_model_export_block(policy, block);
    model *from_folder = NULL, *from_block = NULL;
    assert_int_equal(model_load(dir, &from_folder, &err), 0);
    if (weight_transport_model_from_block(dir, block, n, 1, &from_block, &err))
        fail_msg("from_block: %s", err.message);
    int V = model_output_size(from_folder);
    float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b);
    logits_of(from_folder, a);
    logits_of(from_block, b);
    assert_memory_equal(a, b, (size_t)V * sizeof *a);
    model_free(from_block);
    from_block = NULL;

    /* One parameter off: the hash refuses it. */
    block[n / 2] += 1.0f;
    assert_int_equal(weight_transport_model_from_block(dir, block, n, 1, &from_block, &err),
                     DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "do not hash"));
    assert_null(from_block);
    block[n / 2] -= 1.0f;
    /* The parameter memory as it is laid out (not the file's order): refused too. */
    assert_int_equal(weight_transport_model_from_block(dir, params, n, 1, &from_block, &err),
                     DUEL_EFORMAT);
    /* Another size. */
    assert_int_equal(weight_transport_model_from_block(dir, block, n - 1, 1, &from_block, &err),
                     DUEL_EFORMAT);
    assert_null(from_block);

    /* The receiver: the file kind is the folder itself; cuda_ipc needs a device. */
    weight_transport_options o;
    weight_transport_default_options(&o);
    weight_transport_model_receiver *r = NULL;
    assert_int_equal(weight_transport_model_receiver_create(&o, &r, &err), DUEL_EINVAL);
    o.kind = WEIGHT_TRANSPORT_CUDA_IPC;
    o.redis_port = 1; /* closed: a device error must come first */
    assert_int_equal(weight_transport_model_receiver_create(&o, &r, &err), 0);
    backend_cuda_info info_cuda;
    duel_error perr = {0};
    bool gpu = backend_cuda_probe(&info_cuda, &perr) == 0 && info_cuda.device_count > 0;
    if (!gpu) {
        model *none = NULL;
        assert_int_equal(weight_transport_model_load(r, 1, dir, &none, &err), DUEL_EDEVICE);
        assert_non_null(strstr(err.message, "no CUDA device"));
        assert_null(none);
        assert_int_equal(weight_transport_model_received(r), 0);
    }
    weight_transport_model_receiver_free(r);

    free(a);
    free(b);
    free(block);
    model_free(from_folder);
    erm_free(e);
    free(config_json);
    train_model_free(policy);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_block_makes_the_snapshot)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
