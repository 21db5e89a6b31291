/* test_spill_log.c: the vote spill log (gateway/spill_log.c) with fault injection: replay order,
 * reopen after a crash (torn tail cut), a bad CRC skipped, failed writes and fsyncs rolled back,
 * batched peek/consume. (The records' framing, damaged ones included, is the vote codec's:
 * tests/common/test_vote_entry.c.) */
#include "test_helpers.h"

#include <errno.h>
#include <fcntl.h>

#include "spill_log.h"

static void log_path(char *out, size_t cap) {
    char dir[512];
    test_make_temp_dir("spill", dir, sizeof dir);
    snprintf(out, cap, "%s/votes.log", dir);
}

static int append_str(spill_log *log, const char *s) {
    const void *rec[] = {s};
    size_t len[] = {strlen(s)};
    return spill_log_append(log, rec, len, 1, NULL);
}

typedef struct collected {
    char items[64][64];
    int n, stop_after;
} collected;

static int collect(void *ctx, const void *rec, size_t len) {
    collected *c = ctx;
    if (c->stop_after >= 0 && c->n >= c->stop_after) return 1;
    assert_true(len < 64);
    memcpy(c->items[c->n], rec, len);
    c->items[c->n][len] = '\0';
    c->n++;
    return 0;
}

static off_t file_size(const char *path) {
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

static void test_crc32_reference(void **state) {
    (void)state;
    /* Standard check value of CRC-32/IEEE. */
    assert_int_equal(spill_log_crc32("123456789", 9), 0xCBF43926u);
    assert_int_equal(spill_log_crc32("", 0), 0);
}

static void test_append_replay_order_and_reopen(void **state) {
    (void)state;
    char path[600];
    log_path(path, sizeof path);
    spill_log *log;
    spill_log_open_stats st;
    assert_int_equal(spill_log_open(path, NULL, &log, &st, NULL), 0);
    assert_int_equal(st.records, 0);
    char buf[32];
    for (int i = 0; i < 10; i++) {
        snprintf(buf, sizeof buf, "vote-%02d", i);
        assert_int_equal(append_str(log, buf), 0);
    }
    assert_int_equal(spill_log_pending(log), 10);
    spill_log_close(log);

    /* Reopen (as after a restart): all ten are there, replayed in order, partially first. */
    assert_int_equal(spill_log_open(path, NULL, &log, &st, NULL), 0);
    assert_int_equal(st.records, 10);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(st.torn_bytes, 0);
    collected c = {.stop_after = 4};
    size_t delivered;
    assert_int_equal(spill_log_replay(log, collect, &c, &delivered, NULL), 0);
    assert_int_equal(delivered, 4);
    assert_int_equal(spill_log_pending(log), 6);
    /* New records go behind the ones still waiting. */
    assert_int_equal(append_str(log, "vote-10"), 0);
    c.stop_after = -1;
    assert_int_equal(spill_log_replay(log, collect, &c, &delivered, NULL), 0);
    assert_int_equal(delivered, 7);
    assert_int_equal(c.n, 11);
    for (int i = 0; i < 11; i++) {
        snprintf(buf, sizeof buf, "vote-%02d", i);
        assert_string_equal(c.items[i], buf);
    }
    assert_int_equal(spill_log_pending(log), 0);
    assert_int_equal(file_size(path), 8); /* back to the header */
    spill_log_close(log);
}

static void test_torn_tail_is_cut(void **state) {
    (void)state;
    char path[600];
    log_path(path, sizeof path);
    spill_log *log;
    assert_int_equal(spill_log_open(path, NULL, &log, NULL, NULL), 0);
    assert_int_equal(append_str(log, "first"), 0);
    assert_int_equal(append_str(log, "second"), 0);
    spill_log_close(log);
    off_t full = file_size(path);
    /* A crash in the middle of the second record's payload, then in its frame header. */
    for (off_t cut = 3; cut <= 10; cut += 7) {
        assert_int_equal(truncate(path, full - cut), 0);
        spill_log_open_stats st;
        assert_int_equal(spill_log_open(path, NULL, &log, &st, NULL), 0);
        assert_int_equal(st.records, 1);
        assert_true(st.torn_bytes > 0);
        assert_int_equal(file_size(path), 8 + 8 + 5); /* header + "first" */
        collected c = {.stop_after = -1};
        assert_int_equal(spill_log_replay(log, collect, &c, NULL, NULL), 0);
        assert_int_equal(c.n, 1);
        assert_string_equal(c.items[0], "first");
        assert_int_equal(append_str(log, "first"), 0);
        assert_int_equal(append_str(log, "second"), 0);
        spill_log_close(log);
        full = file_size(path);
    }
    /* A length field claiming more than the limit is a torn/garbage tail too. */
    int fd = open(path, O_WRONLY | O_APPEND);
    unsigned char junk[8] = {0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4};
    assert_int_equal(write(fd, junk, 8), 8);
    close(fd);
    spill_log_open_stats st;
    assert_int_equal(spill_log_open(path, NULL, &log, &st, NULL), 0);
    assert_int_equal(st.records, 2);
    assert_int_equal(st.torn_bytes, 8);
    spill_log_close(log);
}

static void test_bad_crc_skipped(void **state) {
    (void)state;
    char path[600];
    log_path(path, sizeof path);
    spill_log *log;
    assert_int_equal(spill_log_open(path, NULL, &log, NULL, NULL), 0);
    assert_int_equal(append_str(log, "aaaa"), 0);
    assert_int_equal(append_str(log, "bbbb"), 0);
    assert_int_equal(append_str(log, "cccc"), 0);
    spill_log_close(log);
    /* Flip one payload byte of the middle record: header 8, record 1 is 8+4, frame 8. */
    int fd = open(path, O_RDWR);
    assert_true(pwrite(fd, "X", 1, 8 + 12 + 8 + 1) == 1);
    close(fd);
    spill_log_open_stats st;
    assert_int_equal(spill_log_open(path, NULL, &log, &st, NULL), 0);
    assert_int_equal(st.records, 2);
    assert_int_equal(st.corrupt, 1);
    collected c = {.stop_after = -1};
    assert_int_equal(spill_log_replay(log, collect, &c, NULL, NULL), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.items[0], "aaaa");
    assert_string_equal(c.items[1], "cccc");
    spill_log_close(log);

    /* Not a spill log at all: refused, untouched. */
    test_write_file(path, "something else entirely", 23);
    assert_int_equal(spill_log_open(path, NULL, &log, NULL, NULL), DUEL_EFORMAT);
    assert_int_equal(file_size(path), 23);
}

typedef struct faults {
    int fail_fsync;      /* fail the next n fsyncs */
    int short_writes;    /* next n writes write half and then fail */
    int fsyncs;
} faults;

static ssize_t faulty_pwrite(void *ctx, int fd, const void *buf, size_t n, off_t off) {
    faults *f = ctx;
    if (f->short_writes > 0) {
        f->short_writes--;
        ssize_t w = pwrite(fd, buf, n / 2, off);
        (void)w;
        errno = ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, n, off);
}

static int faulty_fsync(void *ctx, int fd) {
    faults *f = ctx;
    f->fsyncs++;
    if (f->fail_fsync > 0) {
        f->fail_fsync--;
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

static void test_write_and_fsync_failures_roll_back(void **state) {
    (void)state;
    char path[600];
    log_path(path, sizeof path);
    faults f = {0};
    spill_log_io io = {faulty_pwrite, faulty_fsync, &f, NULL};
    spill_log *log;
    assert_int_equal(spill_log_open(path, &io, &log, NULL, NULL), 0);
    int before = f.fsyncs;
    assert_int_equal(append_str(log, "kept-1"), 0);
    assert_true(f.fsyncs > before); /* every append is fsynced before it returns */
    off_t size = file_size(path);

    f.short_writes = 1;
    duel_error err = {0};
    const void *rec[] = {"lost-a", "lost-b"};
    size_t lens[] = {6, 6};
    assert_int_equal(spill_log_append(log, rec, lens, 2, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, "write"));
    assert_int_equal(file_size(path), size); /* half-written batch removed */

    f.fail_fsync = 1;
    assert_int_equal(spill_log_append(log, rec, lens, 2, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, "fsync"));
    assert_int_equal(file_size(path), size);
    assert_int_equal(spill_log_pending(log), 1);

    assert_int_equal(append_str(log, "kept-2"), 0);
    spill_log_close(log);
    assert_int_equal(spill_log_open(path, NULL, &log, NULL, NULL), 0);
    collected c = {.stop_after = -1};
    assert_int_equal(spill_log_replay(log, collect, &c, NULL, NULL), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.items[0], "kept-1");
    assert_string_equal(c.items[1], "kept-2");
    spill_log_close(log);
}

static void test_peek_consume_batches(void **state) {
    (void)state;
    char path[600];
    log_path(path, sizeof path);
    spill_log *log;
    assert_int_equal(spill_log_open(path, NULL, &log, NULL, NULL), 0);
    const void *recs[50];
    size_t lens[50];
    char bufs[50][16];
    for (int i = 0; i < 50; i++) {
        lens[i] = (size_t)snprintf(bufs[i], sizeof bufs[i], "r%d", i);
        recs[i] = bufs[i];
    }
    assert_int_equal(spill_log_append(log, recs, lens, 50, NULL), 0);
    spill_log_batch b;
    assert_int_equal(spill_log_peek(log, 20, &b, NULL), 0);
    assert_int_equal(b.n, 20);
    assert_memory_equal(b.records[19], "r19", 3);
    assert_int_equal(spill_log_consume(log, &b, 7, NULL), 0); /* only 7 were delivered */
    spill_log_batch_free(&b);
    assert_int_equal(spill_log_pending(log), 43);
    assert_int_equal(spill_log_peek(log, 100, &b, NULL), 0);
    assert_int_equal(b.n, 43);
    assert_memory_equal(b.records[0], "r7", 2);
    assert_int_equal(spill_log_consume(log, &b, 43, NULL), 0);
    spill_log_batch_free(&b);
    assert_int_equal(spill_log_pending(log), 0);
    assert_int_equal(file_size(path), 8);
    spill_log_close(log);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32_reference),
        cmocka_unit_test(test_append_replay_order_and_reopen),
        cmocka_unit_test(test_torn_tail_is_cut),
        cmocka_unit_test(test_bad_crc_skipped),
        cmocka_unit_test(test_write_and_fsync_failures_roll_back),
        cmocka_unit_test(test_peek_consume_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
