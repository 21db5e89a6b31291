/* durable_file.c: synced writes, atomic replacement and the folder swap (see durable_file.h). */
#include "durable_file.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file_map.h"

#define DURABLE_WRITER_BUFFER ((size_t)1 << 16) /* bytes gathered before one pwrite */

static ssize_t durable_pwrite(const durable_io *io, int fd, const void *buf, size_t n, off_t offset) {
    if (io && io->pwrite_fn) return io->pwrite_fn(io->ctx, fd, buf, n, offset);
    return pwrite(fd, buf, n, offset);
}

int durable_fsync(const durable_io *io, int fd) {
    if (io && io->fsync_fn) return io->fsync_fn(io->ctx, fd);
    return fsync(fd);
}

static int durable_rename(const durable_io *io, const char *from, const char *to) {
    if (io && io->rename_fn) return io->rename_fn(io->ctx, from, to);
    return rename(from, to);
}

int durable_write_all(const durable_io *io, int fd, const void *buf, size_t n, off_t offset) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = durable_pwrite(io, fd, p, n, offset);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO; /* no progress: the disk is full or the hook says so */
            return -1;
        }
        p += w;
        n -= (size_t)w;
        offset += w;
    }
    return 0;
}

int durable_path_join(char *out, const char *dir, const char *name, duel_error *err) {
    if (snprintf(out, DURABLE_PATH_MAX, "%s/%s", dir, name) >= DURABLE_PATH_MAX)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
    return 0;
}

int durable_fsync_path(const durable_io *io, const char *path, duel_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot open to fsync: %s", path, strerror(errno));
    int rc = durable_fsync(io, fd);
    int e = errno;
    close(fd);
    if (rc != 0) return duel_error_set(err, DUEL_EIO, "%s: fsync failed: %s", path, strerror(e));
    return 0;
}

int durable_write_file(const durable_io *io, const char *path, const void *data, size_t len,
                       duel_error *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", path, strerror(errno));
    const char *step = NULL;
    if (durable_write_all(io, fd, data, len, 0) != 0) step = "write";
    else if (durable_fsync(io, fd) != 0) step = "fsync";
    int e = errno;
    if (close(fd) != 0 && !step) {
        step = "close";
        e = errno;
    }
    if (step) return duel_error_set(err, DUEL_EIO, "%s: %s failed: %s", path, step, strerror(e));
    return 0;
}

int durable_copy_file(const durable_io *io, const char *from, const char *to, size_t max_bytes,
                      duel_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = duel_file_read_all(from, max_bytes, &text, &len, err);
    if (rc) return rc;
    rc = durable_write_file(io, to, text, len, err);
    free(text);
    return rc;
}

/* The folder holding path ("." for a bare name, "/" for a top-level one). */
static void parent_of(const char *path, char *out) {
    snprintf(out, DURABLE_PATH_MAX, "%s", path);
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, DURABLE_PATH_MAX, ".");
    else if (slash == out) out[1] = '\0';
    else *slash = '\0';
}

int durable_replace_file(const durable_io *io, const char *path, const void *data, size_t len,
                         duel_error *err) {
    char tmp[DURABLE_PATH_MAX], parent[DURABLE_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", path);
    int rc = durable_write_file(io, tmp, data, len, err);
    if (rc == 0 && durable_rename(io, tmp, path) != 0)
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (rc) {
        unlink(tmp);
        return rc;
    }
    parent_of(path, parent);
    return durable_fsync_path(io, parent, err);
}

/* ---- the streaming writer --------------------------------------------------------------- */

struct durable_writer {
    durable_io io;
    int fd;
    off_t offset;      /* where the buffer goes */
    char *buffer;
    size_t used;
    int failed_errno;  /* 0 while every write succeeded */
    char path[DURABLE_PATH_MAX];
};

int durable_writer_open(const durable_io *io, const char *path, durable_writer **out, duel_error *err) {
    *out = NULL;
    durable_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->buffer = malloc(DURABLE_WRITER_BUFFER))) {
        free(w);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
    }
    if (io) w->io = *io;
    if (snprintf(w->path, sizeof w->path, "%s", path) >= (int)sizeof w->path) {
        free(w->buffer);
        free(w);
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", path);
    }
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        int e = errno;
        free(w->buffer);
        free(w);
        return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", path, strerror(e));
    }
    *out = w;
    return 0;
}

static int writer_flush(durable_writer *w) {
    if (w->failed_errno) return -1;
    if (w->used > 0 && durable_write_all(&w->io, w->fd, w->buffer, w->used, w->offset) != 0) {
        w->failed_errno = errno ? errno : EIO;
        return -1;
    }
    w->offset += (off_t)w->used;
    w->used = 0;
    return 0;
}

int durable_writer_write(durable_writer *w, const void *data, size_t n) {
    if (w->failed_errno) return -1;
    if (w->used + n > DURABLE_WRITER_BUFFER && writer_flush(w) != 0) return -1;
    if (n >= DURABLE_WRITER_BUFFER) { /* large pieces go straight to the file */
        if (durable_write_all(&w->io, w->fd, data, n, w->offset) != 0) {
            w->failed_errno = errno ? errno : EIO;
            return -1;
        }
        w->offset += (off_t)n;
        return 0;
    }
    memcpy(w->buffer + w->used, data, n);
    w->used += n;
    return 0;
}

static void writer_free(durable_writer *w) {
    free(w->buffer);
    free(w);
}

int durable_writer_commit(durable_writer *w, duel_error *err) {
    const char *step = NULL;
    int e = 0;
    if (writer_flush(w) != 0) {
        step = "write";
        e = w->failed_errno;
    } else if (durable_fsync(&w->io, w->fd) != 0) {
        step = "fsync";
        e = errno;
    }
    if (close(w->fd) != 0 && !step) {
        step = "close";
        e = errno;
    }
    int rc = step ? duel_error_set(err, DUEL_EIO, "%s: %s failed: %s", w->path, step, strerror(e)) : 0;
    writer_free(w);
    return rc;
}

void durable_writer_abort(durable_writer *w) {
    if (!w) return;
    close(w->fd);
    unlink(w->path);
    writer_free(w);
}

/* ---- removing --------------------------------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0; /* best effort: go on with the rest */
}

void durable_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the folder swap -------------------------------------------------------------------- */

static int sibling(const char *dir, const char *suffix, char *out, duel_error *err) {
    if (snprintf(out, DURABLE_PATH_MAX, "%s%s", dir, suffix) >= DURABLE_PATH_MAX)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
    return 0;
}

int durable_dir_begin(const char *dir, char *tmp_out, size_t cap, duel_error *err) {
    char tmp[DURABLE_PATH_MAX];
    int rc = sibling(dir, ".tmp", tmp, err);
    if (rc) return rc;
    if (strlen(tmp) >= cap) return duel_error_set(err, DUEL_EINVAL, "%s: path too long for the caller", tmp);
    durable_remove_tree(tmp);
    if (mkdir(tmp, 0755) != 0) return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    memcpy(tmp_out, tmp, strlen(tmp) + 1);
    return 0;
}

int durable_dir_commit(const durable_io *io, const char *dir, duel_error *err) {
    char tmp[DURABLE_PATH_MAX], old[DURABLE_PATH_MAX], parent[DURABLE_PATH_MAX];
    int rc;
    if ((rc = sibling(dir, ".tmp", tmp, err)) || (rc = sibling(dir, ".old", old, err))) return rc;
    if ((rc = durable_fsync_path(io, tmp, err))) return rc;
    durable_remove_tree(old);
    struct stat st;
    bool had_old = stat(dir, &st) == 0;
    if (had_old && durable_rename(io, dir, old) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot move aside to %s: %s", dir, old, strerror(errno));
    if (durable_rename(io, tmp, dir) != 0) {
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot rename to %s: %s", tmp, dir, strerror(errno));
        if (had_old) rename(old, dir); /* the old folder stays current */
        return rc;
    }
    parent_of(dir, parent);
    if ((rc = durable_fsync_path(io, parent, err))) return rc; /* .old stays until the renames are durable */
    durable_remove_tree(old);
    return 0;
}

int durable_dir_recover(const char *dir, duel_error *err) {
    char old[DURABLE_PATH_MAX];
    int rc = sibling(dir, ".old", old, err);
    if (rc) return rc;
    struct stat st;
    if (stat(dir, &st) == 0) return 1;
    if (stat(old, &st) != 0) return 0;
    if (rename(old, dir) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot restore from %s: %s", dir, old, strerror(errno));
    return 1;
}
