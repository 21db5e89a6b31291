/* snapshot.c: writing and verifying snapshot folders (see snapshot.h). */
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file_map.h"
#include "json_util.h"
#include "lm_trainer.h"
#include "sha256.h"

#define SNAPSHOT_PATH_MAX 4096
static const char *const REQUIRED_FILES[] = {"model.safetensors", "config.json", "erm.safetensors"};
static const char *const TOKENIZER_FILES[] = {"tokenizer.json", "tokenizer_config.json"};

int snapshot_path(const char *data_dir, int64_t version, char *out, size_t cap, duel_error *err) {
    if (snprintf(out, cap, "%s/snapshots/v%06" PRId64, data_dir, version) >= (int)cap)
        return duel_error_set(err, DUEL_EINVAL, "%s: snapshot path too long", data_dir);
    return 0;
}

static void remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[SNAPSHOT_PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path) unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int fsync_path(const char *path, duel_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return duel_error_set(err, DUEL_EIO, "%s: fsync failed: %s", path, strerror(e));
    }
    close(fd);
    return 0;
}

static int copy_file(const char *from, const char *to, duel_error *err) {
    char *text = NULL;
    size_t len = 0;
    int rc = duel_file_read_all(from, (size_t)1 << 30, &text, &len, err);
    if (rc) return rc;
    int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t off = 0;
    while (fd >= 0 && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    free(text);
    if (fd < 0 || off < len || close(fd) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot write: %s", to, strerror(errno));
    return 0;
}

int snapshot_write(const char *data_dir, const snapshot_info *info, train_model *policy,
                   const char *config_json, const erm *erm_model, const char *tokenizer_dir,
                   char *path_out, size_t cap, duel_error *err) {
    if (info->version < 1 || info->parent < 0 || info->parent >= info->version)
        return duel_error_set(err, DUEL_EINVAL, "snapshot: version %lld (parent %lld) is invalid",
                              (long long)info->version, (long long)info->parent);
    char root[SNAPSHOT_PATH_MAX], dir[SNAPSHOT_PATH_MAX], tmp[SNAPSHOT_PATH_MAX], path[SNAPSHOT_PATH_MAX];
    int rc;
    if (snprintf(root, sizeof root, "%s/snapshots", data_dir) >= (int)sizeof root ||
        (rc = snapshot_path(data_dir, info->version, dir, sizeof dir, err)) != 0 ||
        snprintf(tmp, sizeof tmp, "%s.tmp", dir) >= (int)sizeof tmp)
        return duel_error_set(err, DUEL_EINVAL, "%s: snapshot path too long", data_dir);
    mkdir(data_dir, 0755);
    if (mkdir(root, 0755) != 0 && errno != EEXIST)
        return duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", root, strerror(errno));
    remove_flat_dir(tmp);
    if ((rc = lm_model_export_hf(policy, config_json, tmp, false, err))) return rc;
    if (snprintf(path, sizeof path, "%s/erm.safetensors", tmp) >= (int)sizeof path)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", tmp);
    if ((rc = erm_save(erm_model, path, err))) return rc;
    const char *names[8];
    int n_names = 0;
    for (int i = 0; i < 3; i++) names[n_names++] = REQUIRED_FILES[i];
    for (int i = 0; tokenizer_dir && i < 2; i++) {
        char from[SNAPSHOT_PATH_MAX];
        struct stat st;
        if (snprintf(from, sizeof from, "%s/%s", tokenizer_dir, TOKENIZER_FILES[i]) >= (int)sizeof from ||
            stat(from, &st) != 0)
            continue;
        if (snprintf(path, sizeof path, "%s/%s", tmp, TOKENIZER_FILES[i]) >= (int)sizeof path)
            return duel_error_set(err, DUEL_EINVAL, "%s: path too long", tmp);
        if ((rc = copy_file(from, path, err))) return rc;
        names[n_names++] = TOKENIZER_FILES[i];
    }
    json_t *files = json_object();
    for (int i = 0; i < n_names; i++) {
        char hex[SHA256_HEX_BYTES];
        if (snprintf(path, sizeof path, "%s/%s", tmp, names[i]) >= (int)sizeof path) {
            json_decref(files);
            return duel_error_set(err, DUEL_EINVAL, "%s: path too long", tmp);
        }
        if ((rc = fsync_path(path, err)) || (rc = sha256_file_hex(path, hex, err))) {
            json_decref(files);
            return rc;
        }
        json_object_set_new(files, names[i], json_string(hex));
    }
    json_t *meta = json_pack("{s:s, s:I, s:I, s:s, s:I, s:I, s:I, s:o}", "format", "duel-snapshot",
                             "version", (json_int_t)info->version, "parent", (json_int_t)info->parent,
                             "base_model", info->base_model ? info->base_model : "", "step",
                             (json_int_t)info->step, "prefs_applied", (json_int_t)info->prefs_applied,
                             "created_ms", (json_int_t)info->created_ms, "files", files);
    char *text = meta ? json_dumps(meta, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(meta);
    if (!text) return duel_error_set(err, DUEL_ENOMEM, "snapshot: cannot build meta.json");
    if (snprintf(path, sizeof path, "%s/meta.json", tmp) >= (int)sizeof path) {
        free(text);
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", tmp);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text);
    bool ok = fd >= 0 && write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    if (fd >= 0 && close(fd) != 0) ok = false;
    free(text);
    if (!ok) return duel_error_set(err, DUEL_EIO, "%s: cannot write: %s", path, strerror(errno));
    if ((rc = fsync_path(tmp, err))) return rc;
    remove_flat_dir(dir); /* a stale copy of this version from before a crash */
    if (rename(tmp, dir) != 0)
        return duel_error_set(err, DUEL_EIO, "%s: cannot rename: %s", tmp, strerror(errno));
    if ((rc = fsync_path(root, err))) return rc;
    if (path_out && snprintf(path_out, cap, "%s", dir) >= (int)cap)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long for the caller", dir);
    return 0;
}

int snapshot_verify(const char *dir, int64_t *version_out, duel_error *err) {
    char path[SNAPSHOT_PATH_MAX];
    if (snprintf(path, sizeof path, "%s/meta.json", dir) >= (int)sizeof path)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
    struct stat st;
    if (stat(path, &st) != 0) return duel_error_set(err, DUEL_ENOTFOUND, "%s: no meta.json", dir);
    json_t *meta = NULL;
    int rc = duel_json_load_file(path, SNAPSHOT_META_MAX_BYTES, &meta, err);
    if (rc) return rc;
    json_t *files = json_object_get(meta, "files"), *version = json_object_get(meta, "version");
    const char *format = json_string_value(json_object_get(meta, "format"));
    if (!format || strcmp(format, "duel-snapshot") != 0 || !json_is_object(files) ||
        !json_is_integer(version) || json_integer_value(version) < 1) {
        json_decref(meta);
        return duel_error_set(err, DUEL_EFORMAT, "%s: not a duel-snapshot meta.json", path);
    }
    for (int i = 0; i < 3; i++)
        if (!json_object_get(files, REQUIRED_FILES[i])) {
            json_decref(meta);
            return duel_error_set(err, DUEL_EFORMAT, "%s: lists no %s", path, REQUIRED_FILES[i]);
        }
    const char *name;
    json_t *want;
    json_object_foreach(files, name, want) {
        char file[SNAPSHOT_PATH_MAX], hex[SHA256_HEX_BYTES];
        if (strchr(name, '/') || strcmp(name, "..") == 0 || strcmp(name, ".") == 0 || !json_is_string(want) ||
            snprintf(file, sizeof file, "%s/%s", dir, name) >= (int)sizeof file) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad file entry '%s'", path, name);
            break;
        }
        if ((rc = sha256_file_hex(file, hex, err))) break;
        if (strcmp(hex, json_string_value(want)) != 0) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: sha256 %s does not match meta.json's %s", file,
                                hex, json_string_value(want));
            break;
        }
    }
    if (rc == 0 && version_out) *version_out = json_integer_value(version);
    json_decref(meta);
    return rc;
}

static int compare_listing(const void *a, const void *b) {
    int64_t x = ((const snapshot_listing *)a)->version, y = ((const snapshot_listing *)b)->version;
    return (x > y) - (x < y);
}

int snapshot_list(const char *data_dir, snapshot_listing **out, int *count, duel_error *err) {
    *out = NULL;
    *count = 0;
    char root[SNAPSHOT_PATH_MAX];
    if (snprintf(root, sizeof root, "%s/snapshots", data_dir) >= (int)sizeof root)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", data_dir);
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT) return 0;
        return duel_error_set(err, DUEL_EIO, "%s: cannot list: %s", root, strerror(errno));
    }
    snapshot_listing *list = NULL;
    int n = 0, cap = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end = NULL;
        if (e->d_name[0] != 'v' || e->d_name[1] < '0' || e->d_name[1] > '9') continue;
        long long v = strtoll(e->d_name + 1, &end, 10);
        if (*end != '\0' || v < 1) continue; /* v000012.tmp and strays */
        char path[SNAPSHOT_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s/meta.json", root, e->d_name) >= (int)sizeof path) continue;
        json_t *meta = NULL;
        duel_error ignored;
        if (duel_json_load_file(path, SNAPSHOT_META_MAX_BYTES, &meta, &ignored)) continue;
        json_t *step = json_object_get(meta, "step"), *version = json_object_get(meta, "version");
        bool ok = json_is_integer(step) && json_is_integer(version) && json_integer_value(version) == v;
        int64_t step_value = json_integer_value(step);
        json_decref(meta);
        if (!ok) continue;
        if (n == cap) {
            int grown = cap ? 2 * cap : 16;
            snapshot_listing *bigger = realloc(list, (size_t)grown * sizeof *bigger);
            if (!bigger) {
                rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory listing snapshots", root);
                break;
            }
            list = bigger;
            cap = grown;
        }
        list[n++] = (snapshot_listing){v, step_value};
    }
    closedir(d);
    if (rc) {
        free(list);
        return rc;
    }
    if (n > 1) qsort(list, (size_t)n, sizeof *list, compare_listing);
    *out = list;
    *count = n;
    return 0;
}

int snapshot_remove(const char *data_dir, int64_t version, duel_error *err) {
    char dir[SNAPSHOT_PATH_MAX];
    int rc = snapshot_path(data_dir, version, dir, sizeof dir, err);
    if (rc) return rc;
    remove_flat_dir(dir);
    struct stat st;
    if (stat(dir, &st) == 0) return duel_error_set(err, DUEL_EIO, "%s: could not be removed", dir);
    return 0;
}
