/* stream_consumer.h: the trainer's side of Redis (DESIGN.md sections 6 and 8), over hiredis's
 * synchronous API with socket timeouts. Reads duel:prefs through the consumer group `trainers`
 * (created with MKSTREAM if missing; BUSYGROUP ignored): first this consumer's own pending
 * entries (id 0 onward), then new ones ('>'). Each entry is decoded (vote_entry.h) and offered
 * to the online trainer in stream order; when a batch is ready it is applied and a snapshot is
 * written when due (every trainer.publish_every updates, once publish_every_seconds have passed
 * since the last snapshot with an update unpublished, or, with publish_when_idle, as soon as a
 * read finds the stream caught up with an update unpublished), registered and announced at once,
 * and snapshots beyond the newest keep_snapshots (except duel:rollout pins) are unregistered and
 * deleted. A snapshot does not wait for a checkpoint: after a crash the resumed run publishes
 * the versions newer than its checkpoint's again, at the same steps (snapshot folders record
 * them), before any new one. The checkpoint is written after checkpoint_every updates, when the
 * stream is idle after updates or counted entries (not for a partial batch alone), and at the
 * end of stream_consumer_run (a partial batch is part of the checkpoint); only then are the
 * entries it covers XACKed (exactly-once effect: a crash before the XACK redelivers entries the
 * checkpoint already holds, and the trainer skips them by stream id; a crash before the
 * checkpoint redelivers entries whose updates are lost with the process, and they are applied
 * again from the last checkpoint). Entries that cannot be decoded, or that were delivered more
 * than max_deliveries times (XPENDING's count: they made the trainer fail), go
 * to duel:prefs:dead with the reason and their fields, in one MULTI with their XACK.
 *
 * Live knobs: the hash duel:knobs is read (HGETALL) at start, before every update and in every
 * idle round, and handed to online_trainer_set_knobs; a rejected knob is logged (through
 * options.log) once per value, with the reason. The knobs in effect go into the status hash
 * (field knobs, a JSON object; knob_errors counts the rejected ones).
 *
 * Figures for operators (DESIGN.md section 8, common/stats.h): with stats_interval_ms > 0 the
 * consumer appends an entry to the capped stream duel:stats at start and every stats_interval_ms
 * (checked after every round of stream_consumer_run): step, prefs applied, lag behind the stream
 * head (entries the group has not read, XINFO GROUPS, and the age of the oldest of them), the
 * last update's losses, KL, grad norm and lr, the batch size in effect, the published version
 * and the latency from vote to snapshot (over the votes offered since the previous snapshot:
 * mean and oldest, at the time the snapshot is announced). stream_consumer_get_figures returns
 * the last figures (for `duel train --metrics`).
 *
 * After each update the status hash duel:trainer:status is written; after each snapshot it
 * is registered in duel:snapshots (zset, score = version) and duel:snapshot:{v} (hash) and
 * announced on duel:notify. Registration is repeated at start for the checkpoint's latest
 * snapshot, so a crash between a snapshot and its registration loses nothing.
 *
 * Redis going away (a restart, a failover, a dropped connection) is not the end of the trainer:
 * stream_consumer_run notices it, writes a checkpoint of everything
 * offered so far (disk only: the votes a restarted Redis may have lost since its last fsync
 * still count once), then reconnects with a growing pause (100 ms doubling to
 * reconnect_max_ms), logging what happened. Once Redis answers, the consumer starts again as at
 * open (group, knobs, snapshot registration, status) and reads its own pending entries first:
 * those the checkpoint holds are acknowledged, the rest offered; exactly-once is that of a
 * restart from the checkpoint.
 *
 * Not thread-safe: one thread owns the consumer and the trainer. */
#ifndef DUEL_STREAM_CONSUMER_H
#define DUEL_STREAM_CONSUMER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "durable_file.h"
#include "error.h"
#include "online_trainer.h"
#include "stats.h"
#include "weight_transport.h"

typedef struct stream_consumer_options {
    const struct redis_link_config *link; /* sentinels (redis_link.h); NULL: host:port */
    const char *host;        /* 127.0.0.1 */
    int port;                /* 6379 */
    const char *stream;      /* duel:prefs */
    const char *group;       /* trainers */
    const char *consumer;    /* trainer-1 (pending entries belong to this name) */
    const char *dead_stream; /* duel:prefs:dead */
    const char *key_prefix;  /* "duel:" for status, snapshots and notify */
    int read_count;          /* entries per XREADGROUP: 64 */
    int block_ms;            /* XREADGROUP BLOCK: 500 */
    int timeout_ms;          /* connect and socket timeout: 5000 (must exceed block_ms) */
    int max_deliveries;      /* dead-letter beyond this many deliveries: 5 */
    const char *data_dir;    /* snapshots/ go here */
    const char *tokenizer_dir; /* copied into snapshots when it has tokenizer files */
    const char *base_model;  /* recorded in snapshot metadata */
    /* Log lines (rejected knobs); called on the consumer's thread. NULL: not logged. */
    void (*log)(void *log_context, const char *line);
    void *log_context;
    /* Where published weights go besides the snapshot folder (a sender, borrowed): each new
     * snapshot is sent once its folder is written, before it is registered. NULL:
     * the folder alone (the file transport). */
    weight_transport *transport;
    /* File I/O hooks for the snapshots (fault tests; NULL: real I/O). */
    const durable_io *io;
    /* duel:stats (see above): 0: no entries. */
    int stats_interval_ms;
    long long stats_max_entries; /* MAXLEN ~ of duel:stats: 40000 */
    const char *instance;        /* the entries' instance name; NULL: "train@HOST:CONSUMER" */
    /* Redis not answering at open is not an error: open returns the consumer unconnected and
     * stream_consumer_run connects first, with the reconnection's backoff (`duel train` may
     * start before its Redis, as under systemd or ops/up). false: open fails (DUEL_EIO). */
    bool wait_for_redis;
} stream_consumer_options;

typedef struct stream_consumer_stats {
    int64_t entries;      /* entries read (all kinds) */
    int64_t dead;         /* sent to the dead-letter stream */
    int64_t acked;
    int64_t updates;      /* batches applied by this process */
    int64_t snapshots;    /* snapshots published by this process */
    int64_t checkpoints;  /* checkpoints written by this process */
    double apply_seconds, checkpoint_seconds, snapshot_seconds; /* wall time in each (profiling) */
} stream_consumer_stats;

typedef struct stream_consumer stream_consumer;

void stream_consumer_default_options(stream_consumer_options *out);

/* Connects, creates the group, re-registers the trainer's latest snapshot. The trainer is
 * borrowed. DUEL_EIO naming host:port when Redis does not answer, unless wait_for_redis (then
 * stream_consumer_run connects). */
int stream_consumer_open(const stream_consumer_options *options, online_trainer *trainer,
                         stream_consumer **out, duel_error *err);
void stream_consumer_close(stream_consumer *consumer);

/* One round: reads up to read_count entries (blocking up to block_ms for new ones) and
 * processes them; *processed receives how many were read. When nothing new arrives and only
 * counted or duplicate entries are unacknowledged, checkpoints and acknowledges them. */
int stream_consumer_poll(stream_consumer *consumer, int *processed, duel_error *err);

/* What `duel train` runs: polls until *stop is set (signal handlers set it) or, when
 * idle_exit_ms > 0, until no entry has arrived for that long (rounds that read this consumer's
 * own pending entries count as arrivals); after_round (optional) is called after every round.
 * When Redis goes away (no reply, or LOADING, NOGROUP, READONLY, MASTERDOWN, TRYAGAIN, BUSY: the
 * same work succeeds once it is back) it checkpoints what was offered since the last checkpoint,
 * then reconnects, pausing 100 ms, doubling up to reconnect_max_ms, until Redis answers (or the
 * run is stopped, or idle_exit_ms passes), and starts again as stream_consumer_open does, own
 * pending entries first. A consumer opened before its Redis answered (wait_for_redis) connects
 * the same way before its first round. At the end it checkpoints and acknowledges whatever was offered (a
 * clean stop; when Redis is away, the checkpoint alone). 0 when stopped or idle; an error that
 * is not Redis going away (the disk, a bad reply) ends the run with that error. */
typedef struct stream_consumer_run_options {
    volatile sig_atomic_t *stop; /* NULL: only idle_exit_ms ends the run */
    int idle_exit_ms;            /* 0: no idle exit */
    int reconnect_max_ms;        /* longest pause between reconnection attempts; 0: 5000 */
    void (*after_round)(void *context);
    void *context;
} stream_consumer_run_options;
int stream_consumer_run(stream_consumer *consumer, const stream_consumer_run_options *run,
                        duel_error *err);

void stream_consumer_get_stats(const stream_consumer *consumer, stream_consumer_stats *out);

/* The figures of the last duel:stats entry (computed even when no entry is written: at open and
 * by stream_consumer_write_stats). */
void stream_consumer_get_figures(const stream_consumer *consumer, stats_trainer *out);
/* Computes the figures and, with stats_interval_ms > 0, appends them to duel:stats now. */
int stream_consumer_write_stats(stream_consumer *consumer, duel_error *err);

#endif
