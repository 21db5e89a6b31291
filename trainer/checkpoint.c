/* checkpoint.c: atomic checkpoint folders with SHA-256-hashed files (see checkpoint.h). */
#include "checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_util.h"
#include "safetensors.h"
#include "sha256.h"

#define CHECKPOINT_PATH_MAX 4096
static const char *const CHECKPOINT_FILES[] = {"model.safetensors", "optimizer.safetensors",
                                               "config.json"};
#define CHECKPOINT_NUM_FILES 3

static int join(char *out, const char *dir, const char *name, duel_error *err) {
    if (snprintf(out, CHECKPOINT_PATH_MAX, "%s/%s", dir, name) >= CHECKPOINT_PATH_MAX) {
        return duel_error_set(err, DUEL_EINVAL, "%s: checkpoint path too long", dir);
    }
    return 0;
}

/* The SHA-256 and size of a file (what state.json records). */
static int hash_file(const char *path, char hex[SHA256_HEX_BYTES], uint64_t *size, duel_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        return duel_error_set(err, DUEL_EIO, "%s: cannot stat: %s", path, strerror(errno));
    }
    *size = (uint64_t)st.st_size;
    return sha256_file_hex(path, hex, err);
}

int checkpoint_write_files(const char *dir, train_model *model, const adamw_state *optimizer,
                           const checkpoint_progress *progress, const char *config_json,
                           const durable_io *io, duel_error *err) {
    size_t n = train_model_num_parameters(model);
    if (optimizer->num_parameters != n) {
        return duel_error_set(err, DUEL_EINVAL, "checkpoint: optimizer has %zu moments, model %zu",
                              optimizer->num_parameters, n);
    }
    char path[CHECKPOINT_PATH_MAX];
    int num_tensors = train_model_num_tensors(model);
    safetensors_write_tensor *tensors = calloc((size_t)num_tensors, sizeof(*tensors));
    train_tensor *views = calloc((size_t)num_tensors, sizeof(*views));
    json_t *state = NULL, *files = NULL;
    char *text = NULL;
    int rc = 0;
    if (tensors == NULL || views == NULL) {
        rc = duel_error_set(err, DUEL_ENOMEM, "checkpoint: out of memory");
        goto done;
    }
    for (int i = 0; i < num_tensors; i++) {
        train_model_tensor_at(model, i, &views[i]);
        tensors[i].name = views[i].name;
        tensors[i].dtype = SAFETENSORS_F32;
        tensors[i].ndim = views[i].ndim;
        for (int d = 0; d < views[i].ndim; d++) {
            tensors[i].shape[d] = views[i].shape[d];
        }
        tensors[i].data = views[i].param;
    }
    safetensors_write_tensor moments[2] = {
        {"adamw.m", SAFETENSORS_F32, 1, {(int64_t)n}, optimizer->m},
        {"adamw.v", SAFETENSORS_F32, 1, {(int64_t)n}, optimizer->v},
    };
    if ((rc = join(path, dir, "model.safetensors", err)) != 0 ||
        (rc = safetensors_write_file(path, tensors, (size_t)num_tensors, NULL, err)) != 0 ||
        (rc = join(path, dir, "optimizer.safetensors", err)) != 0 ||
        (rc = safetensors_write_file(path, moments, 2, NULL, err)) != 0 ||
        (rc = join(path, dir, "config.json", err)) != 0 ||
        (rc = durable_write_file(io, path, config_json, strlen(config_json), err)) != 0) {
        goto done;
    }
    files = json_object();
    for (int f = 0; f < CHECKPOINT_NUM_FILES; f++) {
        uint64_t size = 0;
        char hex[SHA256_HEX_BYTES];
        if ((rc = join(path, dir, CHECKPOINT_FILES[f], err)) != 0 ||
            (rc = durable_fsync_path(io, path, err)) != 0 ||
            (rc = hash_file(path, hex, &size, err)) != 0) {
            goto done;
        }
        json_object_set_new(files, CHECKPOINT_FILES[f],
                            json_pack("{s:s, s:I}", "sha256", hex, "bytes", (json_int_t)size));
    }
    char seed[24];
    snprintf(seed, sizeof(seed), "%" PRIu64, progress->seed); /* as a string: JSON ints are signed */
    state = json_pack("{s:i, s:I, s:I, s:s, s:I, s:f, s:O}", "format", CHECKPOINT_FORMAT, "step",
                      (json_int_t)progress->step, "optimizer_step", (json_int_t)optimizer->step,
                      "seed", seed, "num_parameters", (json_int_t)n, "tokens_seen",
                      progress->tokens_seen, "files", files);
    text = state ? json_dumps(state, JSON_PRESERVE_ORDER | JSON_INDENT(2)) : NULL;
    if (text == NULL) {
        rc = duel_error_set(err, DUEL_ENOMEM, "checkpoint: out of memory");
        goto done;
    }
    if ((rc = join(path, dir, "state.json", err)) == 0) {
        rc = durable_write_file(io, path, text, strlen(text), err);
    }
done:
    free(text);
    json_decref(state);
    json_decref(files);
    free(tensors);
    free(views);
    return rc;
}

int checkpoint_save(const char *dir, train_model *model, const adamw_state *optimizer,
                    const checkpoint_progress *progress, const char *config_json,
                    const durable_io *io, duel_error *err) {
    char tmp[CHECKPOINT_PATH_MAX];
    int rc = durable_dir_begin(dir, tmp, sizeof(tmp), err);
    if (rc == 0) {
        rc = checkpoint_write_files(tmp, model, optimizer, progress, config_json, io, err);
    }
    if (rc == 0) {
        rc = durable_dir_commit(io, dir, err);
    }
    if (rc != 0) {
        durable_remove_tree(tmp);
    }
    return rc;
}

/* The folder to load: dir, or dir.old when a crash came between the two renames. */
static int resolve_dir(const char *dir, char *out) {
    char path[CHECKPOINT_PATH_MAX];
    struct stat st;
    snprintf(out, CHECKPOINT_PATH_MAX, "%s", dir);
    if (snprintf(path, sizeof(path), "%s/state.json", dir) < (int)sizeof(path) &&
        stat(path, &st) == 0) {
        return 1;
    }
    if (snprintf(out, CHECKPOINT_PATH_MAX, "%s.old", dir) < CHECKPOINT_PATH_MAX &&
        snprintf(path, sizeof(path), "%s/state.json", out) < (int)sizeof(path) &&
        stat(path, &st) == 0) {
        return 1;
    }
    return 0;
}

int checkpoint_exists(const char *dir) {
    char real[CHECKPOINT_PATH_MAX];
    return resolve_dir(dir, real);
}

static int verify_files(const char *dir, const json_t *state, const char *state_path,
                        duel_error *err) {
    const json_t *files = json_object_get(state, "files");
    if (!json_is_object(files)) {
        return duel_error_set(err, DUEL_EFORMAT, "%s: no \"files\" object", state_path);
    }
    for (int f = 0; f < CHECKPOINT_NUM_FILES; f++) {
        char path[CHECKPOINT_PATH_MAX], want[SHA256_HEX_BYTES + 1] = "", got[SHA256_HEX_BYTES];
        const json_t *entry = json_object_get(files, CHECKPOINT_FILES[f]);
        long long bytes = -1;
        int rc;
        if (!json_is_object(entry)) {
            return duel_error_set(err, DUEL_EFORMAT, "%s: no entry for %s", state_path,
                                  CHECKPOINT_FILES[f]);
        }
        if ((rc = duel_json_get_string(entry, "sha256", want, sizeof(want), state_path, err)) != 0 ||
            (rc = duel_json_get_int(entry, "bytes", 0, (long long)CHECKPOINT_MAX_FILE_BYTES, &bytes,
                                    state_path, err)) != 0 ||
            (rc = join(path, dir, CHECKPOINT_FILES[f], err)) != 0) {
            return rc;
        }
        if (strlen(want) != SHA256_HEX_BYTES - 1 || bytes < 0) {
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s needs a sha256 and a size", state_path,
                                  CHECKPOINT_FILES[f]);
        }
        uint64_t size = 0;
        if ((rc = hash_file(path, got, &size, err)) != 0) {
            return duel_error_prefix(err, "checkpoint %s", dir);
        }
        if ((long long)size != bytes) {
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: corrupt checkpoint: %lld bytes recorded, %llu found", path,
                                  bytes, (unsigned long long)size);
        }
        if (strcmp(got, want) != 0) {
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: corrupt checkpoint: hash %s does not match the recorded %s",
                                  path, got, want);
        }
    }
    return 0;
}

int checkpoint_load(const char *dir, train_model *model, adamw_state *optimizer,
                    checkpoint_progress *progress, duel_error *err) {
    char path[CHECKPOINT_PATH_MAX];
    int rc = durable_dir_recover(dir, err); /* a crash between the swap's renames */
    if (rc < 0) {
        return rc;
    }
    if (rc == 0 || !checkpoint_exists(dir)) {
        return duel_error_set(err, DUEL_ENOTFOUND, "%s: no checkpoint (state.json) there", dir);
    }
    const char *real = dir;
    json_t *state = NULL;
    safetensors_archive *weights = NULL, *moments = NULL;
    if ((rc = join(path, real, "state.json", err)) != 0 ||
        (rc = duel_json_load_file(path, 1 << 20, &state, err)) != 0) {
        return rc;
    }
    long long step = 0, optimizer_step = 0, num_parameters = 0;
    double tokens_seen = 0;
    char seed[32] = ""; /* a missing seed fails the parse below */
    json_t *format = json_object_get(state, "format");
    if (!json_is_integer(format) || json_integer_value(format) != CHECKPOINT_FORMAT) {
        rc = duel_error_set(err, DUEL_EFORMAT,
                            json_is_integer(format) && json_integer_value(format) == 1
                                ? "%s: a checkpoint of format 1 (FNV-1a file hashes), which this "
                                  "version no longer reads (format %d, SHA-256): start the run "
                                  "again, or resume it with the duel build that wrote it"
                                : "%s: not a checkpoint of format %d",
                            path, CHECKPOINT_FORMAT);
        goto done;
    }
    if ((rc = duel_json_get_int(state, "step", 0, INT64_MAX, &step, path, err)) != 0 ||
        (rc = duel_json_get_int(state, "optimizer_step", 0, INT64_MAX, &optimizer_step, path,
                                err)) != 0 ||
        (rc = duel_json_get_int(state, "num_parameters", 1, TRAIN_MAX_PARAMETERS, &num_parameters,
                                path, err)) != 0 ||
        (rc = duel_json_get_double(state, "tokens_seen", &tokens_seen, path, err)) != 0 ||
        (rc = duel_json_get_string(state, "seed", seed, sizeof(seed), path, err)) != 0) {
        goto done;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long seed_value = strtoull(seed, &end, 10);
    if (errno != 0 || end == seed || *end != '\0') {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: \"seed\" is not an unsigned integer", path);
        goto done;
    }
    size_t n = train_model_num_parameters(model);
    if ((size_t)num_parameters != n || optimizer->num_parameters != n) {
        rc = duel_error_set(err, DUEL_EFORMAT,
                            "%s: checkpoint has %lld parameters, the model %zu", path,
                            num_parameters, n);
        goto done;
    }
    if ((rc = verify_files(real, state, path, err)) != 0) {
        goto done;
    }
    if ((rc = join(path, real, "model.safetensors", err)) != 0 ||
        (rc = safetensors_open_file(path, &weights, err)) != 0 ||
        (rc = join(path, real, "optimizer.safetensors", err)) != 0 ||
        (rc = safetensors_open_file(path, &moments, err)) != 0) {
        goto done;
    }
    /* Check every shape before writing anything. */
    int num_tensors = train_model_num_tensors(model);
    const safetensors_tensor *m = NULL, *v = NULL;
    int64_t flat[1] = {(int64_t)n};
    if ((rc = safetensors_expect(moments, "adamw.m", 1, flat, &m, err)) != 0 ||
        (rc = safetensors_expect(moments, "adamw.v", 1, flat, &v, err)) != 0) {
        goto done;
    }
    for (int i = 0; i < num_tensors; i++) {
        train_tensor t;
        int64_t shape[2];
        const safetensors_tensor *st = NULL;
        train_model_tensor_at(model, i, &t);
        for (int d = 0; d < t.ndim; d++) {
            shape[d] = t.shape[d];
        }
        if ((rc = safetensors_expect(weights, t.name, t.ndim, shape, &st, err)) != 0) {
            goto done;
        }
        if (st->dtype != SAFETENSORS_F32) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: %s is not F32", path, t.name);
            goto done;
        }
    }
    if (m->dtype != SAFETENSORS_F32 || v->dtype != SAFETENSORS_F32) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: moments are not F32", path);
        goto done;
    }
    for (int i = 0; i < num_tensors; i++) {
        train_tensor t;
        train_model_tensor_at(model, i, &t);
        const safetensors_tensor *st = safetensors_find(weights, t.name);
        if ((rc = safetensors_to_f32(st, t.param, err)) != 0) {
            goto done;
        }
    }
    if ((rc = safetensors_to_f32(m, optimizer->m, err)) != 0 ||
        (rc = safetensors_to_f32(v, optimizer->v, err)) != 0) {
        goto done;
    }
    optimizer->step = optimizer_step;
    progress->step = step;
    progress->seed = seed_value;
    progress->tokens_seen = tokens_seen;
done:
    safetensors_close(weights);
    safetensors_close(moments);
    json_decref(state);
    return rc;
}
