/* batch_cuts.h: trainer/batch_cuts.log, where each update's batch ended. A batch is cut by
 * timing (online_trainer_cut_due: larger batches while the trainer is behind the stream), so
 * after a crash the updates the checkpoint lost must end where they ended before, or a replayed
 * snapshot version would hold other votes than the one served before the crash.
 *
 * The log holds a line "<update> <last stream id>" per update since the checkpoint (emptied by
 * each checkpoint once no replayed cut is left, synced before a snapshot is published). At
 * open, the lines after the checkpoint's step, consecutive from step + 1, become the cuts to
 * replay (update step + 1 + i ends at cut i); a torn last line (a crash mid-write) and anything
 * after a gap are dropped, those updates were never published. The file is then rewritten with
 * just those cuts, atomically (durable_replace_file), so a torn line is never followed by new
 * ones and a crash during the rewrite loses no cut still to replay. */
#ifndef DUEL_BATCH_CUTS_H
#define DUEL_BATCH_CUTS_H

#include <stdint.h>

#include "durable_file.h"
#include "error.h"
#include "stream_id.h"

typedef struct batch_cuts {
    int fd; /* the log, opened for appending */
    char (*replay)[STREAM_ID_MAX];
    int num_replay, next_replay;
} batch_cuts;

/* Reads <trainer_dir>/batch_cuts.log (absent: no cuts) for a checkpoint at checkpoint_step. */
int batch_cuts_open(batch_cuts *b, const char *trainer_dir, int64_t checkpoint_step, const durable_io *io,
                    duel_error *err);
void batch_cuts_close(batch_cuts *b);
/* The cut the next update replays, or NULL when none is left. */
const char *batch_cuts_next(const batch_cuts *b);
/* Records that update `step` ends at last_id: a replayed cut is consumed, a new one appended. */
int batch_cuts_record(batch_cuts *b, int64_t step, const char *last_id, duel_error *err);
/* Makes the appended cuts durable. */
int batch_cuts_sync(batch_cuts *b, const durable_io *io, duel_error *err);
/* After a checkpoint that holds every update so far: empties the log once no replayed cut is
 * left. */
int batch_cuts_checkpointed(batch_cuts *b, duel_error *err);

#endif
