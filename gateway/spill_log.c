/* spill_log.c: length- and CRC-framed append-only vote log with fsync and in-order replay (see
 * spill_log.h). Invariant: bytes [0, valid_end) of the file are the header and whole records;
 * replay_offset <= valid_end points at the first record not yet delivered. */
#include "spill_log.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER "DUELSPL1"
#define HEADER_LEN 8
#define FRAME_LEN 8 /* u32 length + u32 crc */

struct spill_log {
    int fd;
    char *path;
    spill_log_io io;
    off_t valid_end;      /* end of the last whole record */
    off_t replay_offset;  /* first record not yet delivered */
    size_t pending;
};

uint32_t spill_log_crc32(const void *data, size_t n) {
    const unsigned char *p = data;
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Writes and fsyncs go through the hooks (common/durable_file.h). */
static int write_all(spill_log *log, const void *buf, size_t n, off_t offset) {
    return durable_write_all(&log->io, log->fd, buf, n, offset);
}

static int do_fsync(spill_log *log) { return durable_fsync(&log->io, log->fd); }

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int read_exact(int fd, void *buf, size_t n, off_t offset) {
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, offset);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
        offset += r;
    }
    return 0;
}

/* Walks the records from `from` to end_of_file; stops at a torn one. Counts valid and corrupt
 * records and returns the end of the last whole record. */
static off_t scan(int fd, off_t from, off_t file_size, size_t *valid, size_t *corrupt) {
    off_t pos = from;
    unsigned char frame[FRAME_LEN];
    char *buf = NULL;
    size_t cap = 0;
    while (pos + FRAME_LEN <= file_size) {
        if (read_exact(fd, frame, FRAME_LEN, pos)) break;
        uint32_t len = get_u32(frame), crc = get_u32(frame + 4);
        if (len > SPILL_LOG_MAX_RECORD || pos + FRAME_LEN + (off_t)len > file_size) break;
        if (len > cap) {
            char *nb = realloc(buf, len);
            if (!nb) break;
            buf = nb;
            cap = len;
        }
        if (read_exact(fd, buf, len, pos + FRAME_LEN)) break;
        if (spill_log_crc32(buf, len) == crc) {
            if (valid) (*valid)++;
        } else if (corrupt) {
            (*corrupt)++;
        }
        pos += FRAME_LEN + (off_t)len;
    }
    free(buf);
    return pos;
}

int spill_log_open(const char *path, const spill_log_io *io, spill_log **out,
                   spill_log_open_stats *stats, duel_error *err) {
    *out = NULL;
    spill_log_open_stats st = {0};
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot open spill log: %s", path,
                              strerror(errno));
    spill_log *log = calloc(1, sizeof *log);
    if (!log || !(log->path = strdup(path))) {
        free(log);
        close(fd);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
    }
    log->fd = fd;
    if (io) log->io = *io;
    struct stat sb;
    if (fstat(fd, &sb)) {
        spill_log_close(log);
        return duel_error_set(err, DUEL_EIO, "%s: stat: %s", path, strerror(errno));
    }
    if (sb.st_size < HEADER_LEN) {
        /* New file (or one torn inside its header): start it afresh. */
        if (ftruncate(fd, 0) || write_all(log, HEADER, HEADER_LEN, 0) || do_fsync(log)) {
            spill_log_close(log);
            return duel_error_set(err, DUEL_EIO, "%s: cannot write spill log header: %s", path,
                                  strerror(errno));
        }
        st.torn_bytes = (uint64_t)sb.st_size;
        sb.st_size = HEADER_LEN;
    } else {
        char header[HEADER_LEN];
        if (read_exact(fd, header, HEADER_LEN, 0) || memcmp(header, HEADER, HEADER_LEN) != 0) {
            spill_log_close(log);
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: not a duel spill log (bad header); refusing to touch it",
                                  path);
        }
    }
    log->valid_end = scan(fd, HEADER_LEN, sb.st_size, &st.records, &st.corrupt);
    if (log->valid_end < sb.st_size) {
        st.torn_bytes += (uint64_t)(sb.st_size - log->valid_end);
        if (ftruncate(fd, log->valid_end) || do_fsync(log)) {
            spill_log_close(log);
            return duel_error_set(err, DUEL_EIO, "%s: cannot cut torn tail: %s", path,
                                  strerror(errno));
        }
    }
    log->replay_offset = HEADER_LEN;
    log->pending = st.records;
    if (stats) *stats = st;
    *out = log;
    return DUEL_OK;
}

void spill_log_close(spill_log *log) {
    if (!log) return;
    if (log->fd >= 0) close(log->fd);
    free(log->path);
    free(log);
}

size_t spill_log_pending(const spill_log *log) { return log->pending; }

int spill_log_append(spill_log *log, const void *const *records, const size_t *lens, size_t n,
                     duel_error *err) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > SPILL_LOG_MAX_RECORD)
            return duel_error_set(err, DUEL_ELIMIT, "%s: record of %zu bytes is over the limit",
                                  log->path, lens[i]);
        total += FRAME_LEN + lens[i];
    }
    if (n == 0) return DUEL_OK;
    /* One buffer, one write: fewer syscalls and a torn write can only tear the batch's end. */
    unsigned char *buf = malloc(total);
    if (!buf) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", log->path);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        put_u32(buf + o, (uint32_t)lens[i]);
        put_u32(buf + o + 4, spill_log_crc32(records[i], lens[i]));
        if (lens[i]) memcpy(buf + o + FRAME_LEN, records[i], lens[i]);
        o += FRAME_LEN + lens[i];
    }
    int werr = 0, failed_write = write_all(log, buf, total, log->valid_end);
    if (failed_write) werr = errno;
    free(buf);
    int failed_sync = failed_write ? 0 : do_fsync(log);
    if (failed_sync) werr = errno;
    if (failed_write || failed_sync) {
        /* Roll back so that no part of an unacknowledged batch is replayed later. */
        if (ftruncate(log->fd, log->valid_end) == 0) (void)do_fsync(log);
        return duel_error_set(err, DUEL_EIO, "%s: %s failed: %s", log->path,
                              failed_write ? "write" : "fsync", strerror(werr ? werr : EIO));
    }
    log->valid_end += (off_t)total;
    log->pending += n;
    return DUEL_OK;
}

void spill_log_batch_free(spill_log_batch *batch) {
    for (size_t i = 0; i < batch->n; i++) free(batch->records[i]);
    free(batch->records);
    free(batch->lens);
    free(batch->ends);
    memset(batch, 0, sizeof *batch);
}

int spill_log_peek(spill_log *log, size_t max, spill_log_batch *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    if (max == 0 || log->pending == 0) return DUEL_OK;
    if (max > log->pending) max = log->pending;
    out->records = calloc(max, sizeof *out->records);
    out->lens = calloc(max, sizeof *out->lens);
    out->ends = calloc(max, sizeof *out->ends);
    if (!out->records || !out->lens || !out->ends) {
        spill_log_batch_free(out);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", log->path);
    }
    unsigned char frame[FRAME_LEN];
    off_t pos = log->replay_offset;
    while (out->n < max && pos < log->valid_end) {
        if (read_exact(log->fd, frame, FRAME_LEN, pos)) goto io_error;
        uint32_t len = get_u32(frame), crc = get_u32(frame + 4);
        char *buf = malloc(len ? len : 1);
        if (!buf) {
            spill_log_batch_free(out);
            return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", log->path);
        }
        if (len && read_exact(log->fd, buf, len, pos + FRAME_LEN)) {
            free(buf);
            goto io_error;
        }
        pos += FRAME_LEN + (off_t)len;
        if (spill_log_crc32(buf, len) != crc) { /* counted at open; never replayed */
            free(buf);
            continue;
        }
        out->records[out->n] = buf;
        out->lens[out->n] = len;
        out->ends[out->n] = pos;
        out->n++;
    }
    return DUEL_OK;
io_error:
    spill_log_batch_free(out);
    return duel_error_set(err, DUEL_EIO, "%s: read failed at %lld", log->path, (long long)pos);
}

int spill_log_consume(spill_log *log, const spill_log_batch *batch, size_t n, duel_error *err) {
    if (n > batch->n) n = batch->n;
    if (n == 0) return DUEL_OK;
    log->replay_offset = batch->ends[n - 1];
    log->pending -= n;
    if (log->pending == 0) {
        /* Skip any corrupt records after the last good one too: nothing is left to replay. */
        if (ftruncate(log->fd, HEADER_LEN) || do_fsync(log))
            return duel_error_set(err, DUEL_EIO, "%s: cannot truncate after replay: %s",
                                  log->path, strerror(errno));
        log->valid_end = HEADER_LEN;
        log->replay_offset = HEADER_LEN;
    }
    return DUEL_OK;
}

int spill_log_replay(spill_log *log, spill_log_visit_fn visit, void *ctx, size_t *delivered,
                     duel_error *err) {
    size_t count = 0;
    int rc = DUEL_OK;
    bool stopped = false;
    while (!stopped && log->pending > 0) {
        spill_log_batch batch;
        if ((rc = spill_log_peek(log, 64, &batch, err))) break;
        if (batch.n == 0) {
            spill_log_batch_free(&batch);
            break;
        }
        size_t ok = 0;
        while (ok < batch.n && visit(ctx, batch.records[ok], batch.lens[ok]) == 0) ok++;
        stopped = ok < batch.n;
        rc = spill_log_consume(log, &batch, ok, err);
        count += ok;
        spill_log_batch_free(&batch);
        if (rc) break;
    }
    if (delivered) *delivered = count;
    return rc;
}
