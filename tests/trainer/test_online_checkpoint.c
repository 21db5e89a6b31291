/* test_online_checkpoint.c: the online trainer's checkpoint (trainer/online_checkpoint.c) under
 * injected faults, in process on the fixture model: a checkpoint that fails at any write or
 * fsync returns the error, and a trainer opened on the folder resumes from the previous
 * checkpoint (step, pairs, last applied id) while the failing one may checkpoint again later; a
 * crash (a forked child's _exit) before, between or after the folder's renames leaves the old
 * or the new checkpoint, never a mix; a version 2 checkpoint is refused saying why. */
#include "test_helpers.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <sys/wait.h>

#include "fault_io.h"
#include "file_map.h"
#include "json_util.h"
#include "online_test_env.h"

/* cp -a of a folder of plain files and folders, in process (forking cp costs more). */
static const char *g_copy_from, *g_copy_to;

static int copy_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)ftw;
    char to[1200];
    snprintf(to, sizeof to, "%s%s", g_copy_to, path + strlen(g_copy_from));
    if (flag == FTW_D) return mkdir(to, 0755) == 0 || errno == EEXIST ? 0 : -1;
    char *data = NULL;
    size_t len = 0;
    if (duel_file_read_all(path, (size_t)1 << 30, &data, &len, NULL) != 0) return -1;
    test_write_file(to, data, len);
    free(data);
    return 0;
}

static void copy_tree(const char *from, const char *to) {
    g_copy_from = from;
    g_copy_to = to;
    assert_int_equal(nftw(from, copy_entry, 16, FTW_PHYS), 0);
}

typedef struct resumed {
    long long step, prefs;
    char last_applied[STREAM_ID_MAX];
} resumed;

/* What a trainer opened on (a copy of) dir resumes from: a copy, since opening cuts the pair
 * log and the batch-cut log back to the checkpoint, which the live trainer still appends to. */
static resumed resume(const online_trainer_options *o, const char *dir) {
    online_trainer_options plain = *o;
    plain.io = NULL;
    char copy[600];
    snprintf(copy, sizeof copy, "%s.copy", dir);
    durable_remove_tree(copy);
    copy_tree(dir, copy);
    online_trainer *t = NULL;
    duel_error err = {0};
    if (online_trainer_open(&plain, copy, &t, &err)) fail_msg("%s", err.message);
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    online_trainer_close(t);
    durable_remove_tree(copy);
    resumed r = {s.step, s.prefs_applied, ""};
    snprintf(r.last_applied, sizeof r.last_applied, "%s", s.last_applied_id);
    return r;
}

static void offer_range(online_trainer *t, int from, int to) {
    for (int serial = from; serial < to; serial++) online_test_offer(t, serial);
}

/* A trainer on a fresh folder whose checkpoint goes through io. */
static online_trainer *open_with(durable_io *io, online_trainer_options *o, const char *tag, char *dir, size_t cap) {
    online_test_options(o);
    o->io = io;
    return online_test_open(o, tag, dir, cap);
}

static void test_failed_checkpoints_resume_the_previous(void **state) {
    (void)state;
    faults f = {0};
    durable_io io = io_for(&f);
    online_trainer_options o;
    char dir[512];
    online_trainer *t = open_with(&io, &o, "online-ckpt-faults", dir, sizeof dir);
    duel_error err = {0};
    offer_range(t, 0, 10); /* 8 a/b pairs (2 updates) and 2 ties */
    assert_int_equal(online_trainer_checkpoint(t, &err), 0);
    const resumed first = resume(&o, dir);
    assert_int_equal(first.step, 2);
    assert_string_equal(first.last_applied, "1-10");
    offer_range(t, 10, 16); /* one more update, a pair pending */
    f = (faults){0};
    assert_int_equal(online_trainer_checkpoint(t, &err), 0); /* counts the calls */
    const faults count = f;
    assert_true(count.writes >= 3 && count.fsyncs >= 8);
    /* the trainer has moved on: two more updates' worth, then every fault in turn */
    offer_range(t, 16, 26);
    const int fds = open_descriptors();
    /* The first write (the policy's config.json) and entries.bin's (the third), the fsync of the
     * folder before its renames and of its parent after them: every other write and fsync is
     * the same call on another file (test_checkpoint.c and test_durable_file.c take them all). */
    const faults cases[] = {{.short_write_at = 1}, {.short_write_at = 3}, {.fail_fsync_at = count.fsyncs - 1},
                            {.fail_fsync_at = count.fsyncs}};
    for (int k = 0; k < 4; k++) {
        f = cases[k];
        assert_int_equal(online_trainer_checkpoint(t, &err), DUEL_EIO);
        resumed r = resume(&o, dir);
        const bool last_fsync = k == 3; /* the parent's, after the renames: the new one is in place */
        assert_int_equal(r.step, last_fsync ? 5 : 3);
        assert_string_equal(r.last_applied, last_fsync ? "1-26" : "1-16");
    }
    assert_int_equal(open_descriptors(), fds);
    /* the faults pass: the trainer checkpoints what it holds */
    f = (faults){0};
    assert_int_equal(online_trainer_checkpoint(t, &err), 0);
    resumed r = resume(&o, dir);
    assert_int_equal(r.step, 5);
    assert_int_equal(r.prefs, 20);
    online_trainer_close(t);
    durable_remove_tree(dir);
}

/* A checkpoint with nothing offered since the last one (what a Redis reconnect right after a
 * checkpoint does) keeps the last applied id: entries read again are recognised as applied,
 * not counted as duplicates or taken for new ones. */
static void test_checkpoint_with_nothing_new_keeps_the_applied_id(void **state) {
    (void)state;
    online_trainer_options o;
    char dir[512];
    online_test_options(&o);
    online_trainer *t = online_test_open(&o, "online-ckpt-again", dir, sizeof dir);
    duel_error err = {0};
    offer_range(t, 0, 10); /* 8 a/b pairs (2 updates) and 2 ties */
    assert_int_equal(online_trainer_checkpoint(t, &err), 0);
    assert_int_equal(online_trainer_checkpoint(t, &err), 0); /* nothing new */
    online_trainer_status s;
    online_trainer_get_status(t, &s);
    assert_string_equal(s.last_applied_id, "1-10");
    for (int serial = 0; serial < 10; serial++) /* the same entries again, as a re-read gives them */
        assert_int_equal(online_test_offer_only(t, serial), ONLINE_OFFER_APPLIED);
    online_trainer_get_status(t, &s);
    assert_int_equal(s.duplicates, 0);
    assert_int_equal(s.prefs_applied, 8);
    assert_int_equal(resume(&o, dir).step, 2);
    online_trainer_close(t);
    durable_remove_tree(dir);
}

static void test_crash_during_the_swap(void **state) {
    (void)state;
    faults f = {0};
    durable_io io = io_for(&f);
    online_trainer_options o;
    char dir[512];
    online_trainer *t = open_with(&io, &o, "online-ckpt-crash", dir, sizeof dir);
    duel_error err = {0};
    offer_range(t, 0, 5);
    assert_int_equal(online_trainer_checkpoint(t, &err), 0);
    offer_range(t, 5, 10);
    f = (faults){0};
    assert_int_equal(online_trainer_checkpoint(t, &err), 0);
    const int fsyncs = f.fsyncs;
    const faults crashes[] = {{.crash_rename_at = 1}, {.crash_rename_at = 2}, {.crash_fsync_at = fsyncs}};
    char before[STREAM_ID_MAX] = "1-10"; /* what the last good checkpoint holds */
    for (int k = 0; k < 3; k++) {
        offer_range(t, 10 + 5 * k, 15 + 5 * k);
        f = crashes[k];
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            online_trainer_checkpoint(t, NULL);
            _exit(1); /* not reached: the hook ends the process */
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        resumed r = resume(&o, dir);
        char want[STREAM_ID_MAX];
        snprintf(want, sizeof want, "1-%d", 15 + 5 * k);
        /* before or between the renames: the old one; after them: the new one, whole */
        assert_string_equal(r.last_applied, k < 2 ? before : want);
        f = (faults){0};
        assert_int_equal(online_trainer_checkpoint(t, &err), 0); /* the parent goes on */
        snprintf(before, sizeof before, "%s", want);
    }
    assert_string_equal(resume(&o, dir).last_applied, "1-25");
    online_trainer_close(t);
    durable_remove_tree(dir);
}

static void test_version_2_is_refused(void **state) {
    (void)state;
    online_trainer_options o;
    online_test_options(&o);
    char dir[512], path[700];
    online_trainer *t = online_test_open(&o, "online-ckpt-v2", dir, sizeof dir);
    duel_error err = {0};
    offer_range(t, 0, 5);
    assert_int_equal(online_trainer_checkpoint(t, &err), 0);
    online_trainer_close(t);
    snprintf(path, sizeof path, "%s/trainer/checkpoint/state.json", dir);
    json_t *st = NULL;
    assert_int_equal(duel_json_load_file(path, 64 << 20, &st, NULL), 0);
    json_object_set_new(st, "version", json_integer(2));
    assert_int_equal(json_dump_file(st, path, 0), 0);
    json_decref(st);
    assert_int_equal(online_trainer_open(&o, dir, &t, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "version 2"));
    assert_non_null(strstr(err.message, "no longer reads"));
    durable_remove_tree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failed_checkpoints_resume_the_previous),
        cmocka_unit_test(test_checkpoint_with_nothing_new_keeps_the_applied_id),
        cmocka_unit_test(test_crash_during_the_swap),
        cmocka_unit_test(test_version_2_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
