/* snapshot_write.c: writing and removing snapshot folders (see snapshot_write.h). */
#include "snapshot_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lm_trainer.h"

#define SNAPSHOT_COPY_MAX_BYTES ((size_t)1 << 30) /* a tokenizer file larger than this is not one */

/* Fills tmp (the folder being written) and meta->files: the policy, the ERM, the tokenizer
 * files, each synced and hashed. */
static int write_files(const snapshot_info *info, train_model *policy, const char *config_json,
                       const erm *erm_model, const char *tokenizer_dir, const char *tmp, snapshot_meta *meta,
                       duel_error *err) {
    char path[DURABLE_PATH_MAX];
    int rc;
    if ((rc = lm_model_export_hf(policy, config_json, tmp, false, err)) ||
        (rc = durable_path_join(path, tmp, SNAPSHOT_FILE_ERM, err)) || (rc = erm_save(erm_model, path, err)))
        return rc;
    const char *names[3 + SNAPSHOT_NUM_TOKENIZER_FILES] = {SNAPSHOT_FILE_MODEL, SNAPSHOT_FILE_CONFIG,
                                                           SNAPSHOT_FILE_ERM};
    int n = 3;
    for (int i = 0; tokenizer_dir && i < SNAPSHOT_NUM_TOKENIZER_FILES; i++) {
        char from[DURABLE_PATH_MAX];
        struct stat st;
        if (durable_path_join(from, tokenizer_dir, snapshot_tokenizer_files[i], NULL) != 0 || stat(from, &st) != 0)
            continue; /* a base model without this file */
        if ((rc = durable_path_join(path, tmp, snapshot_tokenizer_files[i], err)) ||
            (rc = durable_copy_file(info->io, from, path, SNAPSHOT_COPY_MAX_BYTES, err)))
            return rc;
        names[n++] = snapshot_tokenizer_files[i];
    }
    for (int i = 0; i < n; i++) {
        snapshot_file *f = &meta->files[meta->num_files++];
        snprintf(f->name, sizeof f->name, "%s", names[i]);
        if ((rc = durable_path_join(path, tmp, names[i], err)) || (rc = durable_fsync_path(info->io, path, err)) ||
            (rc = sha256_file_hex(path, f->sha256, err)))
            return rc;
    }
    return 0;
}

int snapshot_write(const char *data_dir, const snapshot_info *info, train_model *policy,
                   const char *config_json, const erm *erm_model, const char *tokenizer_dir,
                   char *path_out, size_t cap, duel_error *err) {
    if (info->version < 1 || info->parent < 0 || info->parent >= info->version)
        return duel_error_set(err, DUEL_EINVAL, "snapshot: version %lld (parent %lld) is invalid",
                              (long long)info->version, (long long)info->parent);
    char root[DURABLE_PATH_MAX], dir[DURABLE_PATH_MAX], tmp[DURABLE_PATH_MAX], path[DURABLE_PATH_MAX];
    int rc;
    if ((rc = snapshot_root(data_dir, root, sizeof root, err)) ||
        (rc = snapshot_path(data_dir, info->version, dir, sizeof dir, err)))
        return rc;
    if (path_out && strlen(dir) >= cap)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long for the caller", dir);
    mkdir(data_dir, 0755);
    if (mkdir(root, 0755) != 0 && errno != EEXIST)
        return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", root, strerror(errno));
    if ((rc = durable_dir_begin(dir, tmp, sizeof tmp, err))) return rc;
    snapshot_meta *meta = calloc(1, sizeof *meta);
    char *text = NULL;
    if (!meta) {
        rc = duel_error_set(err, DUEL_ENOMEM, "snapshot: out of memory");
        goto done;
    }
    *meta = (snapshot_meta){.version = info->version, .parent = info->parent, .step = info->step,
                            .prefs_applied = info->prefs_applied, .created_ms = info->created_ms,
                            .votes_mean_ms = info->votes_mean_ms};
    snprintf(meta->base_model, sizeof meta->base_model, "%s", info->base_model ? info->base_model : "");
    if ((rc = write_files(info, policy, config_json, erm_model, tokenizer_dir, tmp, meta, err))) goto done;
    if (!(text = snapshot_meta_dump(meta))) {
        rc = duel_error_set(err, DUEL_ENOMEM, "snapshot: cannot build meta.json");
        goto done;
    }
    if ((rc = durable_path_join(path, tmp, SNAPSHOT_FILE_META, err)) ||
        (rc = durable_write_file(info->io, path, text, strlen(text), err)) ||
        (rc = durable_dir_commit(info->io, dir, err)))
        goto done;
    if (path_out) memcpy(path_out, dir, strlen(dir) + 1);
done:
    if (rc) durable_remove_tree(tmp);
    free(text);
    free(meta);
    return rc;
}

int snapshot_remove(const char *data_dir, int64_t version, duel_error *err) {
    char dir[DURABLE_PATH_MAX];
    int rc = snapshot_path(data_dir, version, dir, sizeof dir, err);
    if (rc) return rc;
    durable_remove_tree(dir);
    struct stat st;
    if (stat(dir, &st) == 0) return duel_error_set(err, DUEL_EIO, "%s: could not be removed", dir);
    return 0;
}
