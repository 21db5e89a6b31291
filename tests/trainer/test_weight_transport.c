/* test_weight_transport.c: trainer/weight_transport.h. The file transport round-trips a snapshot
 * written by snapshot_write (the receiver gets the verified folder, refuses a corrupted file and
 * a missing version); kinds parse strictly; the GPU transports (cuda_ipc, nccl), as sender and
 * as receiver, fail at open with DUEL_EDEVICE "no CUDA device" for a device that does not exist
 * (ordinal 4096, on any machine) and, where this machine has no GPU or the build no CUDA, for
 * device 0 too, before touching Redis (the port given is closed). */
#include "test_helpers.h"

#include "backend_cuda.h"
#include "erm.h"
#include "lm_trainer.h"
#include "snapshot_write.h"
#include "weight_transport.h"

static void test_kind_names(void **state) {
    (void)state;
    const char *names[] = {"file", "cuda_ipc", "nccl"};
    for (int k = 0; k < 3; k++) {
        weight_transport_kind kind;
        assert_int_equal(weight_transport_kind_parse(names[k], &kind, NULL), 0);
        assert_int_equal((int)kind, k);
        assert_string_equal(weight_transport_kind_name(kind), names[k]);
    }
    weight_transport_kind kind;
    duel_error err;
    assert_int_equal(weight_transport_kind_parse("tcp", &kind, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "'tcp'"));
    assert_int_equal(weight_transport_kind_parse("FILE", &kind, &err), DUEL_EINVAL);
}

static void test_file_round_trip(void **state) {
    (void)state;
    char model_dir[1024], data[512], sent[1024], got[1024];
    snprintf(model_dir, sizeof model_dir, "%s/test-models/tiny-llama-f32", test_env("DUEL_BUILD_DIR", "."));
    test_make_temp_dir("wt-file", data, sizeof data);
    train_model *policy = NULL;
    char *config_json = NULL;
    duel_error err = {0};
    if (lm_model_load_hf(model_dir, &policy, &config_json, &err)) fail_msg("%s", err.message);
    erm_config ec = {2, 2 * train_model_config(policy)->hidden_size, 8};
    duel_rng rng;
    duel_rng_seed(&rng, 3);
    erm *e = NULL;
    assert_int_equal(erm_create(&ec, &rng, &e, NULL), 0);
    snapshot_info info = {1, 0, 10, 80, 1700000000000LL, model_dir, NULL, 0};
    if (snapshot_write(data, &info, policy, config_json, e, NULL, sent, sizeof sent, &err)) fail_msg("%s", err.message);

    weight_transport_options o;
    weight_transport_default_options(&o);
    o.data_dir = data;
    weight_transport *sender = NULL, *receiver = NULL;
    if (weight_transport_open(&o, &sender, &err)) fail_msg("%s", err.message);
    o.role = WEIGHT_TRANSPORT_RECEIVER;
    if (weight_transport_open(&o, &receiver, &err)) fail_msg("%s", err.message);
    weight_transport_snapshot snap = {1, sent, NULL};
    if (weight_transport_send(sender, &snap, &err)) fail_msg("%s", err.message);
    if (weight_transport_receive(receiver, 1, got, sizeof got, NULL, &err)) fail_msg("%s", err.message);
    assert_string_equal(got, sent);
    /* Roles are not interchangeable. */
    assert_int_equal(weight_transport_receive(sender, 1, got, sizeof got, NULL, &err), DUEL_EINVAL);
    assert_int_equal(weight_transport_send(receiver, &snap, &err), DUEL_EINVAL);
    /* Not published: nothing to send or receive. */
    weight_transport_snapshot missing = {2, "/nonexistent/v000002", NULL};
    assert_int_equal(weight_transport_send(sender, &missing, &err), DUEL_ENOTFOUND);
    assert_int_equal(weight_transport_receive(receiver, 2, got, sizeof got, NULL, &err), DUEL_ENOTFOUND);
    /* A flipped byte in the weights: refused, naming the file. */
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", sent);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, -5, SEEK_END);
    int ch = fgetc(f);
    fseek(f, -5, SEEK_END);
    fputc(ch ^ 0x40, f);
    fclose(f);
    assert_int_equal(weight_transport_receive(receiver, 1, got, sizeof got, NULL, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "model.safetensors"));
    weight_transport_close(sender);
    weight_transport_close(receiver);
    erm_free(e);
    train_model_free(policy);
    free(config_json);
}

static void expect_no_device(weight_transport_kind kind, weight_transport_role role, int device) {
    weight_transport_options o;
    weight_transport_default_options(&o);
    o.kind = kind;
    o.role = role;
    o.device = device;
    o.num_params = 1000;
    o.redis_port = 1; /* nothing listens there: the device check must come first */
    o.timeout_ms = 200;
    weight_transport *t = (weight_transport *)&o; /* must be reset to NULL */
    duel_error err = {0};
    assert_int_equal(weight_transport_open(&o, &t, &err), DUEL_EDEVICE);
    assert_null(t);
    if (!strstr(err.message, "no CUDA device") || !strstr(err.message, weight_transport_kind_name(kind)))
        fail_msg("%s (device %d): '%s'", weight_transport_kind_name(kind), device, err.message);
}

static void test_gpu_transports_without_device(void **state) {
    (void)state;
    backend_cuda_info info;
    if (backend_cuda_probe(&info, NULL) != 0) info.device_count = 0; /* a driver error: no usable GPU */
    for (int kind = WEIGHT_TRANSPORT_CUDA_IPC; kind <= WEIGHT_TRANSPORT_NCCL; kind++)
        for (int role = 0; role < 2; role++) {
            expect_no_device((weight_transport_kind)kind, (weight_transport_role)role, 4096);
            expect_no_device((weight_transport_kind)kind, (weight_transport_role)role, -1);
            if (info.device_count == 0) expect_no_device((weight_transport_kind)kind, (weight_transport_role)role, 0);
        }
    if (info.device_count > 0)
        fprintf(stderr, "note: %d CUDA device(s) here; device 0 was not used (the GPU round trip needs two "
                "processes and is not part of this test, docs/TRAINER.md)\n", info.device_count);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_file_round_trip),
        cmocka_unit_test(test_gpu_transports_without_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
