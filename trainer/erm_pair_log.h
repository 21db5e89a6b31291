/* erm_pair_log.h: the ERM's pair buffer on disk. The buffer (erm_train.h, up to
 * erm.buffer_size real pairs) is too large to rewrite at every checkpoint, so each pair the
 * trainer adds is appended to <trainer_dir>/erm_pairs.<generation>.bin (records of
 * 2 * d_feat f32: the chosen then the rejected features) and the checkpoint records only how
 * many records are valid; records written after it are cut off on load, so the log always
 * matches the checkpoint it belongs to. When the log holds ERM_PAIR_LOG_COMPACT_FACTOR buffers'
 * worth, the checkpoint first rewrites it as the next generation holding just the buffer; the
 * old generation is removed once a checkpoint naming the new one is durable. */
#ifndef DUEL_ERM_PAIR_LOG_H
#define DUEL_ERM_PAIR_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "durable_file.h"
#include "erm_train.h"
#include "error.h"

#define ERM_PAIR_LOG_COMPACT_FACTOR 4

typedef struct erm_pair_log {
    char dir[DURABLE_PATH_MAX];
    int fd;
    size_t record_bytes;
    int64_t generation; /* the current file */
    int64_t base;       /* pairs seen before its first record */
    int64_t records;    /* records in it */
    int64_t old_generation; /* the generation a compaction replaced, until a checkpoint; -1: none */
} erm_pair_log;

void erm_pair_log_init(erm_pair_log *log, const char *trainer_dir, int d_feat);
void erm_pair_log_close(erm_pair_log *log);
/* A fresh start (no checkpoint): generation 0, empty, and no other generation left. */
int erm_pair_log_start(erm_pair_log *log, duel_error *err);
/* Resumes generation gen with `records` valid records and base `base` (longer files are cut;
 * a shorter one is DUEL_EFORMAT naming it), removes other generations, and refills the
 * trainer's buffer with the last `capacity` records. */
int erm_pair_log_resume(erm_pair_log *log, int64_t gen, int64_t base, int64_t records, erm_trainer *trainer,
                        int64_t capacity, duel_error *err);
/* Appends one record (2 * d_feat floats). */
int erm_pair_log_append(erm_pair_log *log, const float *record, duel_error *err);
/* Before a checkpoint: compacts when the log has grown past the factor, then syncs it. */
int erm_pair_log_prepare_checkpoint(erm_pair_log *log, const erm_trainer *trainer, int64_t capacity,
                                    duel_error *err);
/* After a durable checkpoint: removes the generation a compaction replaced. */
void erm_pair_log_checkpointed(erm_pair_log *log);

#endif
