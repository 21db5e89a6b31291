/* checkpoint.h: training checkpoints (weights, optimizer state, progress) in one folder,
 * written atomically and verified on load.
 *
 * Layout of <dir>: model.safetensors (f32 master weights under their HF names),
 * optimizer.safetensors ("adamw.m", "adamw.v": flat f32 moments), config.json (the model's), and
 * state.json: {"format": 2, step, optimizer step, seed, parameter count, tokens seen, and for
 * every other file its SHA-256 and size} (format 1 recorded FNV-1a hashes; it is refused with a
 * message saying so). The files are written into <dir>.tmp, each synced, and swapped into place
 * with durable_file.h's folder swap (<dir> -> <dir>.old, <dir>.tmp -> <dir>, parent synced,
 * <dir>.old removed), so a crash at any point leaves the old or the new checkpoint complete; load
 * restores <dir>.old when a crash fell between the renames. Load checks sizes, hashes, shapes and
 * the parameter count before touching the model, so a corrupt checkpoint is an error that names
 * the file, never a half-loaded model. */
#ifndef DUEL_CHECKPOINT_H
#define DUEL_CHECKPOINT_H

#include <stdint.h>

#include "adamw.h"
#include "durable_file.h"
#include "error.h"
#include "train_model.h"

#define CHECKPOINT_FORMAT 2
#define CHECKPOINT_MAX_FILE_BYTES ((size_t)32 << 30)

/* What a checkpoint records besides the tensors. */
typedef struct checkpoint_progress {
    int64_t step;  /* optimizer updates completed */
    uint64_t seed; /* the data order's seed, so a resume can refuse a mismatch */
    double tokens_seen;
} checkpoint_progress;

/* Writes the checkpoint of model (parameters), optimizer and progress into dir atomically.
 * config_json is the model's config.json text (copied in so the checkpoint stands alone). io:
 * file I/O hooks for fault tests (NULL: real I/O). On failure the previous checkpoint stays. */
int checkpoint_save(const char *dir, train_model *model, const adamw_state *optimizer,
                    const checkpoint_progress *progress, const char *config_json,
                    const durable_io *io, duel_error *err);

/* The same files written into dir, an existing empty folder, each synced, without a swap: for
 * a caller whose own atomic folder holds the checkpoint (the online trainer's). */
int checkpoint_write_files(const char *dir, train_model *model, const adamw_state *optimizer,
                           const checkpoint_progress *progress, const char *config_json,
                           const durable_io *io, duel_error *err);

/* Whether dir (or its .old fallback) holds a checkpoint's state.json. */
int checkpoint_exists(const char *dir);

/* Loads a checkpoint into a model of the same shape and an initialised optimizer of the same
 * size. DUEL_ENOTFOUND when there is none; DUEL_EFORMAT for corrupt files (hash or size
 * mismatch, bad JSON, missing or misshapen tensors) naming the file, and for a checkpoint of
 * another format; the model and optimizer are unchanged on error. */
int checkpoint_load(const char *dir, train_model *model, adamw_state *optimizer,
                    checkpoint_progress *progress, duel_error *err);

#endif
