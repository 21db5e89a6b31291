/* test_snapshot_write.c: trainer/snapshot_write.c under injected faults (tests/common/
 * fault_io.h): a snapshot written with the base model's tokenizer files verifies and lists them;
 * a short write while copying a tokenizer file (where the descriptor used to leak) or any failed
 * fsync is an error that leaves no folder of that version, no .tmp and no open descriptor; a
 * stale folder of the same version survives a failed rewrite and a crash before the rename;
 * removal deletes a version and tolerates an absent one. */
#include "test_helpers.h"

#include <sys/wait.h>

#include "fault_io.h"
#include "lm_trainer.h"
#include "model.h"
#include "rng.h"
#include "snapshot_write.h"

static const char CONFIG_JSON[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 64, \"hidden_size\": 32,"
    " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5,"
    " \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", \"tie_word_embeddings\": true}";

typedef struct fixture {
    char root[512], data[600], tok[600];
    train_model *policy;
    erm *ensemble;
} fixture;

static fixture fx;

static int setup(void **state) {
    (void)state;
    test_make_temp_dir("snapshot-write", fx.root, sizeof fx.root);
    snprintf(fx.data, sizeof fx.data, "%s/data", fx.root);
    snprintf(fx.tok, sizeof fx.tok, "%s/base", fx.root);
    mkdir(fx.tok, 0755);
    char path[700];
    snprintf(path, sizeof path, "%s/tokenizer.json", fx.tok);
    test_write_file(path, "{\"model\":{\"type\":\"BPE\"}}", 25);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", fx.tok);
    test_write_file(path, "{}", 2);
    model_config config;
    assert_int_equal(model_config_parse(CONFIG_JSON, strlen(CONFIG_JSON), "config", &config, NULL), 0);
    assert_int_equal(train_model_create(&config, &fx.policy, NULL), 0);
    lm_model_init_random(fx.policy, 3, 0.05);
    erm_config ec = {2, 64, 8};
    duel_rng rng;
    duel_rng_seed(&rng, 4);
    assert_int_equal(erm_create(&ec, &rng, &fx.ensemble, NULL), 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    train_model_free(fx.policy);
    erm_free(fx.ensemble);
    durable_remove_tree(fx.root);
    return 0;
}

static int write_version(int64_t v, int64_t step, const durable_io *io, duel_error *err) {
    snapshot_info info = {v, v - 1, step, 8 * step, 1700000000000LL, "base", io, 0};
    return snapshot_write(fx.data, &info, fx.policy, CONFIG_JSON, fx.ensemble, fx.tok, NULL, 0, err);
}

static bool version_exists(int64_t v) {
    char dir[700];
    assert_int_equal(snapshot_path(fx.data, v, dir, sizeof dir, NULL), 0);
    return access(dir, F_OK) == 0;
}

/* The step recorded in version v's meta.json after verifying it (-1: it does not verify). */
static long long verified_step(int64_t v) {
    char dir[700];
    assert_int_equal(snapshot_path(fx.data, v, dir, sizeof dir, NULL), 0);
    if (snapshot_verify(dir, NULL, NULL) != 0) return -1;
    snapshot_meta m;
    assert_int_equal(snapshot_meta_read(dir, &m, NULL), 0);
    return m.step;
}

static bool tmp_left(int64_t v) {
    char dir[700], tmp[720];
    assert_int_equal(snapshot_path(fx.data, v, dir, sizeof dir, NULL), 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    return access(tmp, F_OK) == 0;
}

static void test_write_and_verify(void **state) {
    (void)state;
    char dir[700];
    duel_error err = {0};
    snapshot_info info = {1, 0, 5, 40, 1700000000000LL, "base", NULL, 1699999990000LL};
    assert_int_equal(snapshot_write(fx.data, &info, fx.policy, CONFIG_JSON, fx.ensemble, fx.tok, dir, sizeof dir,
                                    &err), 0);
    assert_int_equal(verified_step(1), 5);
    snapshot_meta m;
    assert_int_equal(snapshot_meta_read(dir, &m, &err), 0);
    assert_int_equal(m.votes_mean_ms, 1699999990000LL); /* the servers' vote-to-serving latency */
    assert_int_equal(m.num_files, 5); /* model, config, erm and both tokenizer files */
    assert_string_equal(m.base_model, "base");
    snapshot_info bad = {3, 3, 5, 40, 0, "base", NULL, 0};
    assert_int_equal(snapshot_write(fx.data, &bad, fx.policy, CONFIG_JSON, fx.ensemble, NULL, NULL, 0, &err),
                     DUEL_EINVAL);
    assert_int_equal(snapshot_write(fx.data, &info, fx.policy, CONFIG_JSON, fx.ensemble, fx.tok, dir, 8, &err),
                     DUEL_EINVAL); /* no room for the folder's name */
    assert_int_equal(snapshot_remove(fx.data, 1, &err), 0);
    assert_false(version_exists(1));
    assert_int_equal(snapshot_remove(fx.data, 1, &err), 0);
}

static void test_faults_leave_nothing_half_written(void **state) {
    (void)state;
    duel_error err = {0};
    faults count = {0};
    durable_io io = io_for(&count);
    assert_int_equal(write_version(2, 7, &io, &err), 0);
    assert_int_equal(count.writes, 3); /* two tokenizer copies and meta.json */
    assert_int_equal(snapshot_remove(fx.data, 2, &err), 0);
    const int fds = open_descriptors();
    for (int k = 1; k <= count.writes; k++) {
        faults f = {.short_write_at = k};
        io = io_for(&f);
        assert_int_equal(write_version(2, 7, &io, &err), DUEL_EIO);
        assert_non_null(strstr(err.message, "write failed"));
        assert_false(version_exists(2));
        assert_false(tmp_left(2));
        assert_int_equal(open_descriptors(), fds);
    }
    for (int k = 1; k <= count.fsyncs; k++) {
        faults f = {.fail_fsync_at = k};
        io = io_for(&f);
        assert_int_equal(write_version(2, 7, &io, &err), DUEL_EIO);
        assert_non_null(strstr(err.message, "fsync failed"));
        assert_false(tmp_left(2));
        /* the last fsync (the parent's, after the rename) finds the folder in place */
        assert_int_equal(verified_step(2), k < count.fsyncs ? -1 : 7);
        assert_int_equal(snapshot_remove(fx.data, 2, &err), 0);
        assert_int_equal(open_descriptors(), fds);
    }
}

/* A stale version 4 (from before a trainer crash) is rewritten: a failed rewrite keeps it, a
 * crash before the renames or between them leaves it (or its .old) and the next rewrite
 * replaces it. */
static void test_rewriting_a_stale_version(void **state) {
    (void)state;
    duel_error err = {0};
    assert_int_equal(write_version(4, 1, NULL, &err), 0);
    faults f = {.fail_rename_at = 2};
    durable_io io = io_for(&f);
    assert_int_equal(write_version(4, 2, &io, &err), DUEL_EIO);
    assert_int_equal(verified_step(4), 1);
    assert_false(tmp_left(4));
    for (int crash = 1; crash <= 2; crash++) {
        f = (faults){.crash_rename_at = crash};
        io = io_for(&f);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            write_version(4, 2, &io, NULL);
            _exit(1);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        /* before the renames: the stale folder; between them: none at v000004 (never half of
         * one), and snapshot_list does not offer it */
        assert_int_equal(verified_step(4), crash == 1 ? 1 : -1);
        assert_int_equal(write_version(4, 3, NULL, &err), 0);
        assert_int_equal(verified_step(4), 3);
        assert_false(tmp_left(4));
        assert_int_equal(write_version(4, 1, NULL, &err), 0);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_and_verify),
        cmocka_unit_test(test_faults_leave_nothing_half_written),
        cmocka_unit_test(test_rewriting_a_stale_version),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
