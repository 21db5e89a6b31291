/* test_checkpoint.c: trainer/checkpoint.c under injected faults (tests/common/fault_io.h): a
 * checkpoint whose save fails at any write or fsync leaves the previous one loadable and
 * untouched, with no descriptor or .tmp folder left; a crash (a forked child's _exit) before,
 * between or after the two renames leaves the old or the new checkpoint whole; state.json
 * records SHA-256 hashes (format 2), and a format 1 checkpoint is refused saying why. */
#include "test_helpers.h"

#include <jansson.h>
#include <sys/wait.h>

#include "checkpoint.h"
#include "fault_io.h"
#include "json_util.h"
#include "lm_trainer.h"
#include "model.h"
#include "sha256.h"

static const char CONFIG_JSON[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 64, \"hidden_size\": 32,"
    " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5,"
    " \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", \"tie_word_embeddings\": true}";

/* A small random model and optimizer state, both a function of seed. */
static train_model *model_with(uint64_t seed, adamw_state *opt) {
    model_config config;
    assert_int_equal(model_config_parse(CONFIG_JSON, strlen(CONFIG_JSON), "config", &config, NULL), 0);
    train_model *m = NULL;
    assert_int_equal(train_model_create(&config, &m, NULL), 0);
    lm_model_init_random(m, seed, 0.05);
    size_t n = train_model_num_parameters(m);
    assert_int_equal(adamw_init(opt, n, NULL), 0);
    for (size_t i = 0; i < n; i++) opt->m[i] = (float)(seed + i), opt->v[i] = 1.0f / (float)(seed + i + 1);
    opt->step = (int64_t)seed;
    return m;
}

/* The seed of the checkpoint at dir, as loaded into a fresh model (-1: it does not load). */
static long long loaded_seed(const char *dir) {
    adamw_state opt;
    train_model *m = model_with(999, &opt);
    checkpoint_progress p;
    long long seed = checkpoint_load(dir, m, &opt, &p, NULL) == 0 ? (long long)p.seed : -1;
    if (seed >= 0) { /* the weights are those of that seed's model */
        adamw_state ref_opt;
        train_model *ref = model_with((uint64_t)seed, &ref_opt);
        size_t n = train_model_num_parameters(m);
        assert_memory_equal(train_model_parameter_memory(m), train_model_parameter_memory(ref), n * sizeof(float));
        assert_memory_equal(opt.m, ref_opt.m, n * sizeof(float));
        assert_int_equal(opt.step, (int64_t)seed);
        train_model_free(ref);
        adamw_free(&ref_opt);
    }
    train_model_free(m);
    adamw_free(&opt);
    return seed;
}

static int save(const char *dir, uint64_t seed, const durable_io *io, duel_error *err) {
    adamw_state opt;
    train_model *m = model_with(seed, &opt);
    checkpoint_progress p = {(int64_t)seed, seed, 10.0 * (double)seed};
    int rc = checkpoint_save(dir, m, &opt, &p, CONFIG_JSON, io, err);
    train_model_free(m);
    adamw_free(&opt);
    return rc;
}

static void test_sha256_and_old_format(void **state) {
    (void)state;
    char root[512], dir[600], path[700];
    test_make_temp_dir("ckpt-format", root, sizeof root);
    snprintf(dir, sizeof dir, "%s/ckpt", root);
    duel_error err = {0};
    assert_int_equal(save(dir, 5, NULL, &err), 0);
    assert_int_equal(loaded_seed(dir), 5);
    snprintf(path, sizeof path, "%s/state.json", dir);
    json_t *st = NULL;
    assert_int_equal(duel_json_load_file(path, 1 << 20, &st, NULL), 0);
    assert_int_equal(json_integer_value(json_object_get(st, "format")), CHECKPOINT_FORMAT);
    const char *hex = json_string_value(json_object_get(json_object_get(json_object_get(st, "files"),
                                                                        "model.safetensors"), "sha256"));
    assert_non_null(hex);
    assert_int_equal(strlen(hex), 64);
    /* the file's own SHA-256 */
    char want[SHA256_HEX_BYTES];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(sha256_file_hex(path, want, NULL), 0);
    assert_string_equal(hex, want);
    /* format 1 (FNV-1a): refused with a message that says so */
    json_object_set_new(st, "format", json_integer(1));
    snprintf(path, sizeof path, "%s/state.json", dir);
    assert_int_equal(json_dump_file(st, path, 0), 0);
    json_decref(st);
    adamw_state opt;
    train_model *m = model_with(1, &opt);
    checkpoint_progress p;
    assert_int_equal(checkpoint_load(dir, m, &opt, &p, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "format 1"));
    assert_non_null(strstr(err.message, "no longer reads"));
    train_model_free(m);
    adamw_free(&opt);
    durable_remove_tree(root);
}

/* Saves of seed 2 over a checkpoint of seed 1, each failing at one write or fsync: the error
 * names the step, and seed 1 loads (the last fsync, of the parent after the renames, is
 * reported too, with seed 2 in place). */
static void test_failed_saves_keep_the_old_checkpoint(void **state) {
    (void)state;
    char root[512], dir[600], path[700];
    test_make_temp_dir("ckpt-faults", root, sizeof root);
    snprintf(dir, sizeof dir, "%s/ckpt", root);
    duel_error err = {0};
    assert_int_equal(save(dir, 1, NULL, &err), 0);
    const int fds = open_descriptors();
    faults count = {0};
    durable_io io = io_for(&count);
    assert_int_equal(save(dir, 1, &io, &err), 0);
    assert_true(count.writes >= 2 && count.fsyncs >= 6);
    for (int k = 1; k <= count.writes; k++) {
        faults f = {.short_write_at = k};
        io = io_for(&f);
        assert_int_equal(save(dir, 2, &io, &err), DUEL_EIO);
        assert_non_null(strstr(err.message, "write failed"));
        assert_int_equal(loaded_seed(dir), 1);
    }
    for (int k = 1; k <= count.fsyncs; k++) {
        faults f = {.fail_fsync_at = k};
        io = io_for(&f);
        assert_int_equal(save(dir, 2, &io, &err), DUEL_EIO);
        assert_non_null(strstr(err.message, "fsync failed"));
        assert_int_equal(loaded_seed(dir), k < count.fsyncs ? 1 : 2);
        assert_int_equal(save(dir, 1, NULL, &err), 0);
    }
    assert_int_equal(open_descriptors(), fds);
    snprintf(path, sizeof path, "%s.tmp", dir);
    assert_int_not_equal(access(path, F_OK), 0);
    durable_remove_tree(root);
}

/* A crash before the first rename, between the two, and at the parent's fsync after them. */
static void test_crash_during_the_swap(void **state) {
    (void)state;
    char root[512], dir[600], path[700];
    test_make_temp_dir("ckpt-crash", root, sizeof root);
    snprintf(dir, sizeof dir, "%s/ckpt", root);
    duel_error err = {0};
    faults count = {0};
    durable_io io = io_for(&count);
    assert_int_equal(save(dir, 1, &io, &err), 0); /* the first save: no rename aside */
    assert_int_equal(save(dir, 1, NULL, &err), 0);
    const faults crashes[] = {{.crash_rename_at = 1}, {.crash_rename_at = 2}, {.crash_fsync_at = count.fsyncs}};
    const long long want[] = {1, 1, 2};
    for (int k = 0; k < 3; k++) {
        faults f = crashes[k];
        io = io_for(&f);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            save(dir, 2, &io, NULL);
            _exit(1); /* not reached: the hook ends the process */
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (k == 1) {
            assert_int_not_equal(access(dir, F_OK), 0); /* only ckpt.old and ckpt.tmp are there */
            assert_true(checkpoint_exists(dir));
        }
        assert_int_equal(loaded_seed(dir), want[k]);
        assert_int_equal(save(dir, 1, NULL, &err), 0);
        snprintf(path, sizeof path, "%s.old", dir);
        assert_int_not_equal(access(path, F_OK), 0);
    }
    durable_remove_tree(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_and_old_format),
        cmocka_unit_test(test_failed_saves_keep_the_old_checkpoint),
        cmocka_unit_test(test_crash_during_the_swap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
