/* erm_pair_log.c: the ERM pair log (see erm_pair_log.h). */
#include "erm_pair_log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void log_name(const erm_pair_log *l, int64_t gen, char *out) {
    if (snprintf(out, DURABLE_PATH_MAX, "%s/erm_pairs.%06" PRId64 ".bin", l->dir, gen) >= DURABLE_PATH_MAX)
        out[0] = '\0'; /* open("") fails with a message naming the empty path */
}

void erm_pair_log_init(erm_pair_log *l, const char *trainer_dir, int d_feat) {
    memset(l, 0, sizeof *l);
    snprintf(l->dir, sizeof l->dir, "%s", trainer_dir);
    l->fd = -1;
    l->record_bytes = (size_t)2 * (size_t)d_feat * sizeof(float);
    l->old_generation = -1;
}

void erm_pair_log_close(erm_pair_log *l) {
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
}

/* Opens (creating) generation gen, cut to `records` valid records. */
static int open_generation(erm_pair_log *l, int64_t gen, int64_t records, duel_error *err) {
    char path[DURABLE_PATH_MAX];
    log_name(l, gen, path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    off_t want = (off_t)records * (off_t)l->record_bytes;
    if (fstat(fd, &st) != 0 || st.st_size < want) {
        close(fd);
        return duel_error_set(err, DUEL_EFORMAT, "%s: holds %lld bytes, the checkpoint needs %lld", path,
                              (long long)st.st_size, (long long)want);
    }
    if (st.st_size > want && ftruncate(fd, want) != 0) {
        close(fd);
        return duel_error_set(err, DUEL_EIO, "%s: cannot truncate: %s", path, strerror(errno));
    }
    if (l->fd >= 0) close(l->fd);
    l->fd = fd;
    l->generation = gen;
    l->records = records;
    return 0;
}

/* Removes the logs of other generations (leftovers of compactions and crashes). */
static void remove_others(erm_pair_log *l) {
    DIR *d = opendir(l->dir);
    if (!d) return;
    char keep[DURABLE_PATH_MAX], path[DURABLE_PATH_MAX];
    log_name(l, l->generation, keep);
    const char *slash = strrchr(keep, '/'), *keep_name = slash ? slash + 1 : keep;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "erm_pairs.", 10) != 0 || strcmp(e->d_name, keep_name) == 0) continue;
        if (snprintf(path, sizeof path, "%s/%s", l->dir, e->d_name) < (int)sizeof path) unlink(path);
    }
    closedir(d);
}

int erm_pair_log_start(erm_pair_log *l, duel_error *err) {
    char p0[DURABLE_PATH_MAX];
    log_name(l, 0, p0);
    unlink(p0);
    int rc = open_generation(l, 0, 0, err);
    if (rc) return rc;
    l->base = 0;
    remove_others(l);
    return 0;
}

int erm_pair_log_append(erm_pair_log *l, const float *record, duel_error *err) {
    off_t at = (off_t)l->records * (off_t)l->record_bytes;
    if (durable_write_all(NULL, l->fd, record, l->record_bytes, at) != 0)
        return duel_error_set(err, DUEL_EIO, "erm pair log: write failed: %s", strerror(errno));
    l->records++;
    return 0;
}

int erm_pair_log_resume(erm_pair_log *l, int64_t gen, int64_t base, int64_t records, erm_trainer *trainer,
                        int64_t capacity, duel_error *err) {
    int rc = open_generation(l, gen, records, err);
    if (rc) return rc;
    l->base = base;
    remove_others(l);
    erm_trainer_reset_buffer(trainer);
    const size_t d = l->record_bytes / (2 * sizeof(float));
    float *buf = malloc(l->record_bytes);
    if (!buf) return duel_error_set(err, DUEL_ENOMEM, "erm pair log: out of memory");
    for (int64_t i = records > capacity ? records - capacity : 0; i < records && rc == 0; i++) {
        if (pread(l->fd, buf, l->record_bytes, (off_t)(i * (int64_t)l->record_bytes)) != (ssize_t)l->record_bytes) {
            rc = duel_error_set(err, DUEL_EIO, "erm pair log: short read at record %lld", (long long)i);
            break;
        }
        rc = erm_trainer_add_pairs(trainer, buf, buf + d, 1, err);
    }
    free(buf);
    return rc;
}

/* Rewrites the log as a new generation holding only the buffer's pairs. */
static int compact(erm_pair_log *l, const erm_trainer *trainer, duel_error *err) {
    const int count = erm_trainer_buffer_count(trainer);
    const int64_t seen = erm_trainer_pairs_seen(trainer), old = l->generation;
    char path[DURABLE_PATH_MAX];
    log_name(l, old + 1, path);
    unlink(path);
    int rc = open_generation(l, old + 1, 0, err);
    if (rc) return rc;
    const size_t d = l->record_bytes / (2 * sizeof(float));
    float *record = malloc(l->record_bytes);
    if (!record) return duel_error_set(err, DUEL_ENOMEM, "erm pair log: out of memory");
    for (int i = 0; i < count && rc == 0; i++) {
        const float *c, *r;
        erm_trainer_buffer_pair(trainer, i, &c, &r);
        memcpy(record, c, d * sizeof(float));
        memcpy(record + d, r, d * sizeof(float));
        rc = erm_pair_log_append(l, record, err);
    }
    free(record);
    l->base = seen - count;
    l->old_generation = old;
    return rc;
}

int erm_pair_log_prepare_checkpoint(erm_pair_log *l, const erm_trainer *trainer, int64_t capacity,
                                    duel_error *err) {
    int rc;
    if (l->records > ERM_PAIR_LOG_COMPACT_FACTOR * capacity && (rc = compact(l, trainer, err))) return rc;
    if (fdatasync(l->fd) != 0) return duel_error_set(err, DUEL_EIO, "erm pair log: fsync failed: %s", strerror(errno));
    return 0;
}

void erm_pair_log_checkpointed(erm_pair_log *l) {
    if (l->old_generation >= 0 && l->old_generation != l->generation) remove_others(l);
    l->old_generation = -1;
}
