/* spill_log.h: the gateway's local, durable queue of votes that Redis could not take. A file of
 * records, each framed as [u32 length][u32 CRC-32 of the payload][payload] (little-endian) after
 * an 8-byte header "DUELSPL1". Appends are written and fsynced before they return, so a vote is
 * acknowledged only once it is on disk. Opening scans the file: a torn tail (a crash mid-append)
 * is cut off; a complete record whose CRC does not match is skipped and counted. Replay visits
 * the records in append order from the first one not yet replayed; when every record has been
 * replayed the file is truncated back to its header. Records are opaque bytes here.
 *
 * Owned by one thread (the gateway's Redis thread); not thread-safe. */
#ifndef DUEL_GATEWAY_SPILL_LOG_H
#define DUEL_GATEWAY_SPILL_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "durable_file.h"
#include "error.h"

#define SPILL_LOG_MAX_RECORD (16u << 20) /* bytes per record; larger lengths mean corruption */

/* I/O hooks so tests can inject failures (short writes, fsync errors): durable_file.h's table
 * (rename_fn unused here). NULL members use the real pwrite and fsync. */
typedef durable_io spill_log_io;

typedef struct spill_log spill_log;

typedef struct spill_log_open_stats {
    size_t records;        /* complete, valid records waiting for replay */
    size_t corrupt;        /* complete records skipped for a bad CRC */
    uint64_t torn_bytes;   /* bytes cut from the end (a partial record) */
} spill_log_open_stats;

/* Opens (creating if needed) the log at path and scans it. io may be NULL. */
int spill_log_open(const char *path, const spill_log_io *io, spill_log **out,
                   spill_log_open_stats *stats, duel_error *err);
void spill_log_close(spill_log *log);

/* Appends n records and fsyncs once. On any failure the file is cut back to its length before
 * the call (nothing of this batch survives) and an error is returned: the caller must not
 * acknowledge these records. */
int spill_log_append(spill_log *log, const void *const *records, const size_t *lens, size_t n,
                     duel_error *err);

/* Records appended and not yet replayed. */
size_t spill_log_pending(const spill_log *log);

/* Calls visit(ctx, record, len) for each pending record in order. visit returns 0 when the
 * record was delivered, nonzero to stop (that record stays pending). Delivered records are not
 * visited again by this process; when none remain pending the file is truncated to its header
 * (and fsynced). *delivered (may be NULL) gets the count. Returns 0, or an I/O error. */
typedef int (*spill_log_visit_fn)(void *ctx, const void *record, size_t len);
int spill_log_replay(spill_log *log, spill_log_visit_fn visit, void *ctx, size_t *delivered,
                     duel_error *err);

/* Batched replay, for pipelining: peek copies up to max pending records (in order, without
 * consuming them); consume marks the first n of the last peek as delivered (truncating the file
 * when nothing is left). Release a batch with spill_log_batch_free. */
typedef struct spill_log_batch {
    size_t n;
    char **records;
    size_t *lens;
    off_t *ends; /* file offset just past each record */
} spill_log_batch;
int spill_log_peek(spill_log *log, size_t max, spill_log_batch *out, duel_error *err);
int spill_log_consume(spill_log *log, const spill_log_batch *batch, size_t n, duel_error *err);
void spill_log_batch_free(spill_log_batch *batch);

/* CRC-32 (IEEE 802.3, as zlib's crc32). */
uint32_t spill_log_crc32(const void *data, size_t n);

#endif
