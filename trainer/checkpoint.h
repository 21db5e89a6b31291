/* checkpoint.h: training checkpoints (weights, optimizer state, progress) in one directory,
 * written atomically and verified on load.
 *
 * Layout of <dir>: model.safetensors (f32 master weights under their HF names), optimizer.safetensors
 * ("adamw.m", "adamw.v": flat f32 moments), config.json (the model's), and state.json (step,
 * optimizer step, seed, parameter count, and the FNV-1a 64-bit hash and size of every other
 * file). Writing goes to <dir>.tmp (each file fsynced, then the folder), then <dir> is renamed
 * to <dir>.old, <dir>.tmp to <dir>, the parent fsynced and <dir>.old removed; a crash at any
 * point leaves either the old or the new checkpoint complete (load falls back to <dir>.old when
 * <dir> is missing). Load checks sizes, hashes, shapes and the parameter count before touching
 * the model, so a corrupt checkpoint is an error that names the file, never a half-loaded model. */
#ifndef DUEL_CHECKPOINT_H
#define DUEL_CHECKPOINT_H

#include <stdint.h>

#include "adamw.h"
#include "error.h"
#include "train_model.h"

#define CHECKPOINT_MAX_FILE_BYTES ((size_t)32 << 30)

/* What a checkpoint records besides the tensors. */
typedef struct checkpoint_progress {
    int64_t step;  /* optimizer updates completed */
    uint64_t seed; /* the data order's seed, so a resume can refuse a mismatch */
    double tokens_seen;
} checkpoint_progress;

/* Writes the checkpoint of model (parameters), optimizer and progress into dir atomically.
 * config_json is the model's config.json text (copied in so the checkpoint stands alone). */
int checkpoint_save(const char *dir, train_model *model, const adamw_state *optimizer,
                    const checkpoint_progress *progress, const char *config_json,
                    duel_error *err);

/* Whether dir (or its .old fallback) holds a checkpoint's state.json. */
int checkpoint_exists(const char *dir);

/* Loads a checkpoint into a model of the same shape and an initialised optimizer of the same
 * size. DUEL_ENOTFOUND when there is none; DUEL_EFORMAT for corrupt files (hash or size
 * mismatch, bad JSON, missing or misshapen tensors) naming the file; the model and optimizer
 * are unchanged on error. */
int checkpoint_load(const char *dir, train_model *model, adamw_state *optimizer,
                    checkpoint_progress *progress, duel_error *err);

/* FNV-1a 64 of a file's bytes (the checksum state.json records). */
int checkpoint_hash_file(const char *path, uint64_t *hash, uint64_t *size, duel_error *err);

#endif
