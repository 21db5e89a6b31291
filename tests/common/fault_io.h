/* fault_io.h: a durable_io hook table (common/durable_file.h) for tests that inject faults into
 * durable files: a short write followed by ENOSPC, a failed fsync or rename at the n-th call, or
 * a crash (_exit) just before the n-th rename or fsync, to be run in a forked child. Also the
 * count of this process's open descriptors, to catch leaks on those paths. Header-only. */
#ifndef DUEL_TEST_FAULT_IO_H
#define DUEL_TEST_FAULT_IO_H

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <unistd.h>

#include "durable_file.h"

/* Which call fails (1-based counts; 0: none). */
typedef struct faults {
    int writes, fsyncs, renames;
    int short_write_at; /* this pwrite writes half and returns that; the next one fails ENOSPC */
    bool short_done;
    int fail_fsync_at;  /* this fsync returns -1 (EIO) */
    int fail_rename_at; /* this rename returns -1 (EXDEV) without renaming */
    int crash_rename_at; /* the process _exit()s just before this rename: a crash */
    int crash_fsync_at;  /* ... or just before this fsync */
} faults;

static inline ssize_t faulty_pwrite(void *ctx, int fd, const void *buf, size_t n, off_t offset) {
    faults *f = ctx;
    f->writes++;
    if (f->short_done) {
        errno = ENOSPC;
        return -1;
    }
    if (f->short_write_at && f->writes == f->short_write_at && n > 1) {
        f->short_done = true;
        return pwrite(fd, buf, n / 2, offset);
    }
    return pwrite(fd, buf, n, offset);
}

static inline int faulty_fsync(void *ctx, int fd) {
    faults *f = ctx;
    if (++f->fsyncs == f->crash_fsync_at) _exit(0);
    if (f->fsyncs == f->fail_fsync_at) {
        errno = EIO;
        return -1;
    }
    return fsync(fd);
}

static inline int faulty_rename(void *ctx, const char *from, const char *to) {
    faults *f = ctx;
    ++f->renames;
    if (f->renames == f->crash_rename_at) _exit(0);
    if (f->renames == f->fail_rename_at) {
        errno = EXDEV;
        return -1;
    }
    return rename(from, to);
}

static inline durable_io io_for(faults *f) { return (durable_io){faulty_pwrite, faulty_fsync, f, faulty_rename}; }

static inline int open_descriptors(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

#endif
