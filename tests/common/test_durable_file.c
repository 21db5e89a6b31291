/* test_durable_file.c: common/durable_file.c under injected faults (its I/O hook table): short
 * writes and failed fsyncs are errors naming the file and the step, leave no descriptor open
 * and never replace good contents; an atomic replacement keeps the old file when its rename
 * fails; the streaming writer reports a failure at commit; the folder swap leaves the old or
 * the new folder whole when the process dies (a forked child _exit()s) before, between or after
 * its two renames; remove-tree does not follow symbolic links. */
#include "test_helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/wait.h>

#include "durable_file.h"
#include "fault_io.h"
#include "file_map.h"

static char *slurp(const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (duel_file_read_all(path, 1 << 24, &text, &len, NULL) != 0) return NULL;
    return text;
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

static void test_write_file_faults(void **state) {
    (void)state;
    char dir[512], path[600];
    test_make_temp_dir("durable-write", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/state.json", dir);
    duel_error err = {0};
    assert_int_equal(durable_write_file(NULL, path, "{\"a\":1}", 7, &err), 0);
    char *text = slurp(path);
    assert_string_equal(text, "{\"a\":1}");
    free(text);
    const int fds = open_descriptors();
    /* a short write, then no space: an error naming the file and the step, no descriptor left */
    faults f = {.short_write_at = 1};
    durable_io io = io_for(&f);
    assert_int_equal(durable_write_file(&io, path, "0123456789", 10, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, path));
    assert_non_null(strstr(err.message, "write failed"));
    assert_int_equal(f.writes, 2); /* the short write was retried once */
    assert_int_equal(open_descriptors(), fds);
    /* a failed fsync */
    f = (faults){.fail_fsync_at = 1};
    assert_int_equal(durable_write_file(&io, path, "0123456789", 10, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, "fsync failed"));
    assert_int_equal(open_descriptors(), fds);
    /* a copy whose write fails: the same, and the source is untouched */
    char copy[600];
    snprintf(copy, sizeof copy, "%s/copy.json", dir);
    assert_int_equal(durable_write_file(NULL, path, "{\"a\":1}", 7, &err), 0);
    f = (faults){.short_write_at = 1};
    assert_int_equal(durable_copy_file(&io, path, copy, 1 << 20, &err), DUEL_EIO);
    assert_int_equal(open_descriptors(), fds);
    assert_int_equal(durable_copy_file(NULL, path, copy, 1 << 20, &err), 0);
    text = slurp(copy);
    assert_string_equal(text, "{\"a\":1}");
    free(text);
    assert_int_equal(durable_copy_file(NULL, path, copy, 3, &err), DUEL_ELIMIT);
    durable_remove_tree(dir);
}

static void test_replace_file_keeps_old_on_failure(void **state) {
    (void)state;
    char dir[512], path[600], tmp[620];
    test_make_temp_dir("durable-replace", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/batch_cuts.log", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    duel_error err = {0};
    assert_int_equal(durable_replace_file(NULL, path, "old\n", 4, &err), 0);
    faults f = {.fail_rename_at = 1};
    durable_io io = io_for(&f);
    assert_int_equal(durable_replace_file(&io, path, "new\n", 4, &err), DUEL_EIO);
    char *text = slurp(path);
    assert_string_equal(text, "old\n");
    free(text);
    assert_false(exists(tmp));
    f = (faults){.fail_fsync_at = 1}; /* the new file's own fsync */
    assert_int_equal(durable_replace_file(&io, path, "new\n", 4, &err), DUEL_EIO);
    text = slurp(path);
    assert_string_equal(text, "old\n");
    free(text);
    f = (faults){.fail_fsync_at = 2}; /* the folder's, after the rename: reported */
    assert_int_equal(durable_replace_file(&io, path, "new\n", 4, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, dir));
    assert_int_equal(durable_replace_file(NULL, path, "newer\n", 6, &err), 0);
    text = slurp(path);
    assert_string_equal(text, "newer\n");
    free(text);
    durable_remove_tree(dir);
}

static void test_writer(void **state) {
    (void)state;
    char dir[512], path[600];
    test_make_temp_dir("durable-writer", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/entries.bin", dir);
    const size_t total = 300000;
    unsigned char *data = malloc(total);
    for (size_t i = 0; i < total; i++) data[i] = (unsigned char)(i * 7 + (i >> 11));
    duel_error err = {0};
    durable_writer *w = NULL;
    assert_int_equal(durable_writer_open(NULL, path, &w, &err), 0);
    const size_t pieces[] = {1, 4, 100, 70000, 3, 65536, 65535, 98821}; /* sums to total */
    size_t at = 0;
    for (size_t k = 0; k < sizeof pieces / sizeof *pieces; k++) {
        assert_int_equal(durable_writer_write(w, data + at, pieces[k]), 0);
        at += pieces[k];
    }
    assert_int_equal(at, total);
    assert_int_equal(durable_writer_commit(w, &err), 0);
    duel_file_map map;
    assert_int_equal(duel_file_map_open(path, &map, &err), 0);
    assert_int_equal(map.size, total);
    assert_memory_equal(map.data, data, total);
    duel_file_map_close(&map);
    /* a write that fails midway: later writes are skipped, commit reports it */
    const int fds = open_descriptors();
    faults f = {.short_write_at = 2};
    durable_io io = io_for(&f);
    assert_int_equal(durable_writer_open(&io, path, &w, &err), 0);
    assert_int_equal(durable_writer_write(w, data, 70000), 0); /* straight to the file */
    assert_int_equal(durable_writer_write(w, data, 70000), -1);
    assert_int_equal(durable_writer_write(w, data, 10), -1);
    assert_int_equal(durable_writer_commit(w, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, "entries.bin: write failed"));
    assert_int_equal(open_descriptors(), fds);
    /* a failed fsync at commit; abort removes the file */
    f = (faults){.fail_fsync_at = 1};
    assert_int_equal(durable_writer_open(&io, path, &w, &err), 0);
    assert_int_equal(durable_writer_write(w, data, 10), 0);
    assert_int_equal(durable_writer_commit(w, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, "fsync failed"));
    assert_int_equal(durable_writer_open(NULL, path, &w, &err), 0);
    durable_writer_abort(w);
    assert_false(exists(path));
    assert_int_equal(open_descriptors(), fds);
    free(data);
    durable_remove_tree(dir);
}

/* Writes version `v` of the folder dir (file "v" holding the number, and a sub-folder) through
 * the swap with io. */
static int write_version(const char *dir, int v, const durable_io *io, duel_error *err) {
    char tmp[600], path[700], sub[700], text[16];
    int rc = durable_dir_begin(dir, tmp, sizeof tmp, err);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/v", tmp);
    snprintf(text, sizeof text, "%08d", v); /* several bytes: a write can be cut short */
    snprintf(sub, sizeof sub, "%s/policy", tmp);
    mkdir(sub, 0755);
    snprintf(sub, sizeof sub, "%s/policy/w", tmp);
    if ((rc = durable_write_file(io, path, text, strlen(text), err)) ||
        (rc = durable_write_file(io, sub, text, strlen(text), err)) || (rc = durable_dir_commit(io, dir, err)))
        durable_remove_tree(tmp);
    return rc;
}

/* The version the folder holds after recovery (-1: none, -2: a partial folder). */
static int version_after_recovery(const char *dir) {
    duel_error err = {0};
    int rc = durable_dir_recover(dir, &err);
    assert_true(rc >= 0);
    if (rc == 0) return -1;
    char path[700], sub[700];
    snprintf(path, sizeof path, "%s/v", dir);
    snprintf(sub, sizeof sub, "%s/policy/w", dir);
    char *a = slurp(path), *b = slurp(sub);
    int v = a && b && strcmp(a, b) == 0 ? atoi(a) : -2;
    free(a);
    free(b);
    return v;
}

static void test_dir_swap_crashes(void **state) {
    (void)state;
    char root[512], dir[600], path[700];
    test_make_temp_dir("durable-swap", root, sizeof root);
    snprintf(dir, sizeof dir, "%s/checkpoint", root);
    duel_error err = {0};
    assert_int_equal(version_after_recovery(dir), -1);
    assert_int_equal(write_version(dir, 1, NULL, &err), 0);
    assert_int_equal(version_after_recovery(dir), 1);
    /* A crash before the first rename, between the two, and after both (at the parent's
     * fsync, with dir.old still there): the folder is whole, old or new, and the next swap goes
     * through. (The fsyncs: the two files, the folder, then the parent after the renames.) */
    const faults crashes[] = {{.crash_rename_at = 1}, {.crash_rename_at = 2}, {.crash_fsync_at = 4}};
    const int want[] = {1, 1, 2};
    for (int k = 0; k < 3; k++) {
        faults f = crashes[k];
        durable_io io = io_for(&f);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            write_version(dir, 2, &io, NULL);
            _exit(1); /* not reached: the hook ends the process first */
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0); /* it crashed where meant */
        if (k == 2) {
            snprintf(path, sizeof path, "%s.old", dir);
            assert_true(exists(path));
        }
        assert_int_equal(version_after_recovery(dir), want[k]);
        assert_int_equal(write_version(dir, 1, NULL, &err), 0);
        snprintf(path, sizeof path, "%s.old", dir);
        assert_false(exists(path));
        snprintf(path, sizeof path, "%s.tmp", dir);
        assert_false(exists(path));
    }
    /* Failures the process survives: the old folder stays, no .tmp is left. */
    faults f = {.fail_rename_at = 2}; /* tmp -> dir fails after dir -> dir.old */
    durable_io io = io_for(&f);
    assert_int_equal(write_version(dir, 3, &io, &err), DUEL_EIO);
    assert_int_equal(version_after_recovery(dir), 1);
    f = (faults){.fail_fsync_at = 3}; /* the folder's fsync before the renames */
    assert_int_equal(write_version(dir, 3, &io, &err), DUEL_EIO);
    assert_int_equal(version_after_recovery(dir), 1);
    f = (faults){.short_write_at = 1};
    assert_int_equal(write_version(dir, 3, &io, &err), DUEL_EIO);
    assert_int_equal(version_after_recovery(dir), 1);
    snprintf(path, sizeof path, "%s.tmp", dir);
    assert_false(exists(path));
    durable_remove_tree(root);
    assert_false(exists(root));
}

static void test_remove_tree_keeps_link_targets(void **state) {
    (void)state;
    char root[512], keep[512], path[800];
    test_make_temp_dir("durable-rm", root, sizeof root);
    test_make_temp_dir("durable-rm-keep", keep, sizeof keep);
    snprintf(path, sizeof path, "%s/precious", keep);
    test_write_file(path, "x", 1);
    snprintf(path, sizeof path, "%s/a", root);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/a/b", root);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/a/b/c", root);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/a/b/c/file", root);
    test_write_file(path, "y", 1);
    snprintf(path, sizeof path, "%s/a/link", root);
    assert_int_equal(symlink(keep, path), 0);
    durable_remove_tree(root);
    assert_false(exists(root));
    snprintf(path, sizeof path, "%s/precious", keep);
    assert_true(exists(path));
    durable_remove_tree(keep);
    durable_remove_tree(keep); /* absent: fine */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_file_faults),
        cmocka_unit_test(test_replace_file_keeps_old_on_failure),
        cmocka_unit_test(test_writer),
        cmocka_unit_test(test_dir_swap_crashes),
        cmocka_unit_test(test_remove_tree_keeps_link_targets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
