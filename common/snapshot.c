/* snapshot.c: snapshot folders, meta.json, verification, listing and Redis names (see
 * snapshot.h). meta.json is untrusted input (a server reads whatever the registry points at):
 * it is parsed and checked here, in snapshot_meta_read, and nowhere else. */
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json_util.h"

const char *const snapshot_tokenizer_files[SNAPSHOT_NUM_TOKENIZER_FILES] = {"tokenizer.json",
                                                                            "tokenizer_config.json"};
static const char *const REQUIRED_FILES[] = {SNAPSHOT_FILE_MODEL, SNAPSHOT_FILE_CONFIG, SNAPSHOT_FILE_ERM};
#define NUM_REQUIRED_FILES 3

int snapshot_root(const char *data_dir, char *out, size_t cap, duel_error *err) {
    if (snprintf(out, cap, "%s/snapshots", data_dir) >= (int)cap)
        return duel_error_set(err, DUEL_EINVAL, "%s: snapshot path too long", data_dir);
    return 0;
}

int snapshot_path(const char *data_dir, int64_t version, char *out, size_t cap, duel_error *err) {
    if (version < 1) return duel_error_set(err, DUEL_EINVAL, "snapshot version %lld (from 1)", (long long)version);
    if (snprintf(out, cap, "%s/snapshots/v%06" PRId64, data_dir, version) >= (int)cap)
        return duel_error_set(err, DUEL_EINVAL, "%s: snapshot path too long", data_dir);
    return 0;
}

bool snapshot_file_name_ok(const char *name) {
    size_t n = strlen(name);
    return n > 0 && n < SNAPSHOT_FILE_NAME_MAX && !strchr(name, '/') && strcmp(name, ".") != 0 &&
           strcmp(name, "..") != 0 && strcmp(name, SNAPSHOT_FILE_META) != 0;
}

static bool is_sha256_hex(const char *s) {
    if (!s || strlen(s) != SHA256_HEX_BYTES - 1) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
    return true;
}

/* A non-negative integer field; DUEL_EFORMAT naming it. */
static int get_count(json_t *meta, const char *key, int64_t *out, const char *path, duel_error *err) {
    json_t *v = json_object_get(meta, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s is missing or not a non-negative integer", path, key);
    *out = json_integer_value(v);
    return 0;
}

int snapshot_meta_read(const char *dir, snapshot_meta *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    char path[SNAPSHOT_PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, SNAPSHOT_FILE_META) >= (int)sizeof path)
        return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
    struct stat st;
    if (stat(path, &st) != 0) return duel_error_set(err, DUEL_ENOTFOUND, "%s: no meta.json", dir);
    json_t *meta = NULL;
    int rc = duel_json_load_file(path, SNAPSHOT_META_MAX_BYTES, &meta, err);
    if (rc) return rc;
    const char *format = json_string_value(json_object_get(meta, "format"));
    const char *base = json_string_value(json_object_get(meta, "base_model"));
    json_t *files = json_object_get(meta, "files");
    if (!json_is_object(meta) || !format || strcmp(format, SNAPSHOT_FORMAT) != 0 || !json_is_object(files)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: not a %s meta.json", path, SNAPSHOT_FORMAT);
        goto done;
    }
    if ((rc = get_count(meta, "version", &out->version, path, err)) ||
        (rc = get_count(meta, "parent", &out->parent, path, err)) ||
        (rc = get_count(meta, "step", &out->step, path, err)) ||
        (rc = get_count(meta, "prefs_applied", &out->prefs_applied, path, err)) ||
        (rc = get_count(meta, "created_ms", &out->created_ms, path, err)) ||
        (json_object_get(meta, "votes_mean_ms") && /* optional: older snapshots lack it */
         (rc = get_count(meta, "votes_mean_ms", &out->votes_mean_ms, path, err))))
        goto done;
    if (out->version < 1 || out->parent >= out->version) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: version %lld (parent %lld) is invalid", path,
                            (long long)out->version, (long long)out->parent);
        goto done;
    }
    if (!base || strlen(base) >= sizeof out->base_model) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: base_model is missing, not a string or too long", path);
        goto done;
    }
    memcpy(out->base_model, base, strlen(base) + 1);
    if (json_object_size(files) > SNAPSHOT_MAX_FILES) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: lists %zu files, at most %d", path, json_object_size(files),
                            SNAPSHOT_MAX_FILES);
        goto done;
    }
    const char *name;
    json_t *hash;
    json_object_foreach(files, name, hash) {
        const char *hex = json_string_value(hash);
        if (!snapshot_file_name_ok(name) || !is_sha256_hex(hex)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: bad file entry '%.80s' (a plain file name and 64 "
                                "lowercase hex digits)", path, name);
            goto done;
        }
        snapshot_file *f = &out->files[out->num_files++];
        memcpy(f->name, name, strlen(name) + 1);
        memcpy(f->sha256, hex, SHA256_HEX_BYTES);
    }
    for (int i = 0; i < NUM_REQUIRED_FILES; i++)
        if (!json_object_get(files, REQUIRED_FILES[i])) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: lists no %s", path, REQUIRED_FILES[i]);
            goto done;
        }
done:
    json_decref(meta);
    return rc;
}

char *snapshot_meta_dump(const snapshot_meta *m) {
    json_t *files = json_object();
    for (int i = 0; files && i < m->num_files; i++)
        if (json_object_set_new(files, m->files[i].name, json_string(m->files[i].sha256)) != 0) {
            json_decref(files);
            files = NULL;
        }
    if (!files) return NULL;
    json_t *meta = json_pack("{s:s, s:I, s:I, s:s, s:I, s:I, s:I, s:o}", "format", SNAPSHOT_FORMAT, "version",
                             (json_int_t)m->version, "parent", (json_int_t)m->parent, "base_model", m->base_model,
                             "step", (json_int_t)m->step, "prefs_applied", (json_int_t)m->prefs_applied,
                             "created_ms", (json_int_t)m->created_ms, "files", files);
    if (meta && m->votes_mean_ms > 0) json_object_set_new(meta, "votes_mean_ms", json_integer(m->votes_mean_ms));
    char *text = meta ? json_dumps(meta, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(meta);
    return text;
}

int snapshot_verify(const char *dir, int64_t *version_out, duel_error *err) {
    snapshot_meta meta;
    int rc = snapshot_meta_read(dir, &meta, err);
    for (int i = 0; rc == 0 && i < meta.num_files; i++) {
        char file[SNAPSHOT_PATH_MAX], hex[SHA256_HEX_BYTES];
        if (snprintf(file, sizeof file, "%s/%s", dir, meta.files[i].name) >= (int)sizeof file)
            return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
        if ((rc = sha256_file_hex(file, hex, err))) break;
        if (strcmp(hex, meta.files[i].sha256) != 0)
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: sha256 %s does not match meta.json's %s", file, hex,
                                meta.files[i].sha256);
    }
    if (rc == 0 && version_out) *version_out = meta.version;
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
    int rc = snapshot_root(data_dir, root, sizeof root, err);
    if (rc) return rc;
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT) return 0;
        return duel_error_set(err, DUEL_EIO, "%s: cannot list: %s", root, strerror(errno));
    }
    snapshot_listing *list = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end = NULL;
        if (e->d_name[0] != 'v' || e->d_name[1] < '0' || e->d_name[1] > '9') continue;
        long long v = strtoll(e->d_name + 1, &end, 10);
        if (*end != '\0' || v < 1) continue; /* v000012.tmp, .old and strays */
        char dir[SNAPSHOT_PATH_MAX];
        if (snprintf(dir, sizeof dir, "%s/%s", root, e->d_name) >= (int)sizeof dir) continue;
        snapshot_meta meta;
        if (snapshot_meta_read(dir, &meta, NULL) != 0 || meta.version != v) continue;
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
        list[n++] = (snapshot_listing){v, meta.step};
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

/* ---- Redis names -------------------------------------------------------------------------- */

static int key(char *out, size_t cap, duel_error *err, const char *prefix, const char *name) {
    if (snprintf(out, cap, "%s%s", prefix ? prefix : "", name) >= (int)cap)
        return duel_error_set(err, DUEL_EINVAL, "Redis key %s%s is too long", prefix ? prefix : "", name);
    return 0;
}

int snapshot_key_registry(const char *prefix, char *out, size_t cap, duel_error *err) {
    return key(out, cap, err, prefix, "snapshots");
}

int snapshot_key_version(const char *prefix, int64_t version, char *out, size_t cap, duel_error *err) {
    char name[48];
    snprintf(name, sizeof name, "snapshot:%" PRId64, version);
    return key(out, cap, err, prefix, name);
}

int snapshot_key_notify(const char *prefix, char *out, size_t cap, duel_error *err) {
    return key(out, cap, err, prefix, "notify");
}

int snapshot_registration_fields(const snapshot_meta *m, const char *dir, const char *metrics_json,
                                 snapshot_registration *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    if (strlen(dir) >= sizeof out->path) return duel_error_set(err, DUEL_EINVAL, "%s: path too long", dir);
    memcpy(out->path, dir, strlen(dir) + 1);
    const int64_t numbers[4] = {m->parent, m->step, m->prefs_applied, m->created_ms};
    static const char *const names[6] = {SNAPSHOT_FIELD_PATH, "parent", "step", "prefs_applied", "created_ms",
                                         "metrics"};
    for (int i = 0; i < 4; i++) snprintf(out->numbers[i], sizeof out->numbers[i], "%" PRId64, numbers[i]);
    for (int i = 0; i < 6; i++) snprintf(out->names[i], sizeof out->names[i], "%s", names[i]);
    out->values[0] = out->path;
    for (int i = 0; i < 4; i++) out->values[1 + i] = out->numbers[i];
    out->values[5] = metrics_json ? metrics_json : "{}";
    out->num_fields = 6;
    for (int i = 0; i < m->num_files; i++) {
        snprintf(out->names[out->num_fields], sizeof out->names[0], "sha256:%s", m->files[i].name);
        out->values[out->num_fields++] = m->files[i].sha256;
    }
    return 0;
}

char *snapshot_note_json(int64_t version, const char *dir) {
    json_t *note = json_pack("{s:s, s:I, s:s}", "kind", "snapshot", "version", (json_int_t)version, "path", dir);
    char *text = note ? json_dumps(note, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(note);
    return text;
}

bool snapshot_note_is_snapshot(const char *payload, size_t len) {
    json_t *note = json_loadb(payload, len, 0, NULL);
    const char *kind = json_string_value(json_object_get(note, "kind"));
    bool yes = kind && strcmp(kind, "snapshot") == 0;
    json_decref(note);
    return yes;
}
