/* snapshot.h: published policy snapshots on disk (DESIGN.md section 9):
 *   <data_dir>/snapshots/v000012/  model.safetensors, config.json (the policy, f32, HF layout),
 *                                  erm.safetensors (current and initial heads),
 *                                  tokenizer.json, tokenizer_config.json (copied from the base
 *                                  model when it has them), meta.json
 * meta.json: {"format":"duel-snapshot","version":12,"parent":11,"base_model":...,"step":...,
 * "prefs_applied":...,"created_ms":...,"files":{"model.safetensors":"<sha256>",...}} with the
 * sha256 of every other file. A snapshot is written into v000012.tmp, every file and the folder
 * fsynced, then renamed into place and the parent fsynced, so a reader never sees a partial
 * one; a stale folder of the same version (a crash before the trainer's checkpoint recorded it)
 * is replaced. snapshot_verify is what a loader runs before using one. */
#ifndef DUEL_SNAPSHOT_H
#define DUEL_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "erm.h"
#include "error.h"
#include "train_model.h"

#define SNAPSHOT_META_MAX_BYTES (1u << 20)

typedef struct snapshot_info {
    int64_t version; /* >= 1 */
    int64_t parent;  /* previous version, 0 for none */
    int64_t step, prefs_applied, created_ms;
    const char *base_model; /* path or name of the initial policy */
} snapshot_info;

/* Writes snapshot info->version; path_out (optional, cap bytes) receives its folder. */
int snapshot_write(const char *data_dir, const snapshot_info *info, train_model *policy,
                   const char *config_json, const erm *erm_model, const char *tokenizer_dir,
                   char *path_out, size_t cap, duel_error *err);

/* Checks meta.json and the sha256 of every file it lists (and that model.safetensors,
 * config.json, erm.safetensors are among them). DUEL_EFORMAT naming the file on a mismatch,
 * DUEL_ENOTFOUND when meta.json is absent. *version_out (optional) receives the version. */
int snapshot_verify(const char *dir, int64_t *version_out, duel_error *err);

/* "<data_dir>/snapshots/v%06lld" into out. */
int snapshot_path(const char *data_dir, int64_t version, char *out, size_t cap, duel_error *err);

typedef struct snapshot_listing {
    int64_t version, step; /* from the folder's meta.json */
} snapshot_listing;

/* The snapshot folders under <data_dir>/snapshots whose meta.json reads (a missing folder: none;
 * v*.tmp and folders without a readable meta.json are skipped; hashes are not checked), sorted
 * by version. *out is malloc'd (NULL when *count is 0). */
int snapshot_list(const char *data_dir, snapshot_listing **out, int *count, duel_error *err);

/* Deletes snapshot `version`'s folder (its files, then the folder); an absent one is fine. */
int snapshot_remove(const char *data_dir, int64_t version, duel_error *err);

#endif
