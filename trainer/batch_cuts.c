/* batch_cuts.c: the batch-cut log (see batch_cuts.h). */
#include "batch_cuts.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CUT_LINE_MAX 64 /* "<update> <stream id>\n" */

/* Reads the cuts to replay from the log at path (absent: none). */
static int read_cuts(batch_cuts *b, const char *path, int64_t checkpoint_step, duel_error *err) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[128];
    int64_t next = checkpoint_step + 1;
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        long long step = 0;
        char id[STREAM_ID_MAX];
        uint64_t ms, seq;
        size_t n = strlen(line);
        if (n == 0 || line[n - 1] != '\n' || sscanf(line, "%lld %47s", &step, id) != 2 ||
            stream_id_parse(id, &ms, &seq) != 0)
            break; /* torn */
        if (step < next) continue; /* in the checkpoint already */
        if (step != next) break;   /* a gap */
        void *grown = realloc(b->replay, (size_t)(b->num_replay + 1) * sizeof *b->replay);
        if (!grown) {
            rc = duel_error_set(err, DUEL_ENOMEM, "batch cuts: out of memory");
            break;
        }
        b->replay = grown;
        snprintf(b->replay[b->num_replay++], STREAM_ID_MAX, "%s", id);
        next++;
    }
    fclose(f);
    return rc;
}

int batch_cuts_open(batch_cuts *b, const char *trainer_dir, int64_t checkpoint_step, const durable_io *io,
                    duel_error *err) {
    memset(b, 0, sizeof *b);
    b->fd = -1;
    char path[DURABLE_PATH_MAX];
    int rc = durable_path_join(path, trainer_dir, "batch_cuts.log", err);
    if (rc || (rc = read_cuts(b, path, checkpoint_step, err))) return rc;
    char *text = malloc((size_t)b->num_replay * CUT_LINE_MAX + 1);
    if (!text) return duel_error_set(err, DUEL_ENOMEM, "batch cuts: out of memory");
    size_t len = 0;
    for (int i = 0; i < b->num_replay; i++)
        len += (size_t)snprintf(text + len, CUT_LINE_MAX, "%lld %s\n", (long long)(checkpoint_step + 1 + i),
                                b->replay[i]);
    rc = durable_replace_file(io, path, text, len, err);
    free(text);
    if (rc) return rc;
    b->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (b->fd < 0) return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    return 0;
}

void batch_cuts_close(batch_cuts *b) {
    if (b->fd >= 0) close(b->fd);
    free(b->replay);
    memset(b, 0, sizeof *b);
    b->fd = -1;
}

const char *batch_cuts_next(const batch_cuts *b) {
    return b->next_replay < b->num_replay ? b->replay[b->next_replay] : NULL;
}

int batch_cuts_record(batch_cuts *b, int64_t step, const char *last_id, duel_error *err) {
    if (batch_cuts_next(b)) { /* a replayed update: its line is in the log already */
        b->next_replay++;
        return 0;
    }
    char line[CUT_LINE_MAX];
    int n = snprintf(line, sizeof line, "%lld %s\n", (long long)step, last_id);
    if (b->fd >= 0 && write(b->fd, line, (size_t)n) != n)
        return duel_error_set(err, DUEL_EIO, "batch_cuts.log: write failed: %s", strerror(errno));
    return 0;
}

int batch_cuts_sync(batch_cuts *b, const durable_io *io, duel_error *err) {
    if (b->fd >= 0 && durable_fsync(io, b->fd) != 0)
        return duel_error_set(err, DUEL_EIO, "batch_cuts.log: fsync failed: %s", strerror(errno));
    return 0;
}

int batch_cuts_checkpointed(batch_cuts *b, duel_error *err) {
    if (b->fd >= 0 && !batch_cuts_next(b) && ftruncate(b->fd, 0) != 0)
        return duel_error_set(err, DUEL_EIO, "batch_cuts.log: cannot truncate: %s", strerror(errno));
    return 0;
}
