/* snapshot_write.h: the trainer writes and removes snapshot folders (the format, verification,
 * listing and Redis names are common/snapshot.h's). A snapshot is written into v000012.tmp,
 * every file synced, meta.json last, then swapped into place with durable_file.h's folder swap,
 * so a reader never sees a partial one and a crash leaves the old folder of that version or the
 * new one; a stale folder of the same version (a crash before the trainer's checkpoint recorded
 * it) is replaced. */
#ifndef DUEL_SNAPSHOT_WRITE_H
#define DUEL_SNAPSHOT_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "durable_file.h"
#include "erm.h"
#include "error.h"
#include "snapshot.h"
#include "train_model.h"

typedef struct snapshot_info {
    int64_t version; /* >= 1 */
    int64_t parent;  /* previous version, 0 for none */
    int64_t step, prefs_applied, created_ms;
    const char *base_model; /* path or name of the initial policy */
    const durable_io *io;   /* file I/O hooks (fault tests); NULL: real I/O */
    int64_t votes_mean_ms;  /* meta.json's votes_mean_ms (0: none) */
} snapshot_info;

/* Writes snapshot info->version under <data_dir>/snapshots; path_out (optional, cap bytes)
 * receives its folder. tokenizer_dir (optional): its tokenizer files are copied in. On failure
 * nothing is left at the version's folder that was not there before. */
int snapshot_write(const char *data_dir, const snapshot_info *info, train_model *policy,
                   const char *config_json, const erm *erm_model, const char *tokenizer_dir,
                   char *path_out, size_t cap, duel_error *err);

/* Deletes snapshot `version`'s folder; an absent one is fine. */
int snapshot_remove(const char *data_dir, int64_t version, duel_error *err);

#endif
