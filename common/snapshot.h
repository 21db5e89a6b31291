/* snapshot.h: the one home of published policy snapshots (DESIGN.md sections 8 and 9): their
 * folders, meta.json, verification, listing, and the Redis names under which they are
 * registered and announced. The trainer writes snapshots (trainer/snapshot_write.h) and
 * registers them (trainer/stream_consumer.c); the servers find, verify and load them
 * (gateway/snapshot_loader.c, the file weight transport). Both sides use this module, so the
 * format and the key names are stated once. No Redis client here: keys, fields and notes are
 * strings that trainer/ and gateway/ send.
 *
 * On disk, <data_dir>/snapshots/v000012/ holds model.safetensors and config.json (the policy,
 * HF layout), erm.safetensors (the ensemble: current and initial heads), tokenizer.json and
 * tokenizer_config.json when the base model has them, and meta.json:
 *   {"format":"duel-snapshot","version":12,"parent":11,"base_model":"...","step":...,
 *    "prefs_applied":...,"created_ms":...,"votes_mean_ms":...,"files":{"model.safetensors":"<sha256>",...}}
 * listing the sha256 of every other file. votes_mean_ms (optional: absent in older snapshots and
 * when no vote is new in this one) is the mean time of the votes this snapshot is the first to
 * hold, so that a server can tell the vote-to-serving latency when it installs the snapshot. File names in meta.json are plain names: one with a
 * '/', or ".", "..", "" is refused (snapshot_file_name_ok), so a meta.json cannot point a
 * verifier or a loader outside its folder. v000012.tmp and v000012.old are the writer's
 * (durable_file.h's folder swap) and never listed.
 *
 * In Redis (prefix "duel:" by default): the zset <prefix>snapshots (member and score = version),
 * the hash <prefix>snapshot:<v> (path, parent, step, prefs_applied, created_ms, metrics and
 * sha256:<file> for each file), and a note {"kind":"snapshot","version":v,"path":"..."} on the
 * channel <prefix>notify. A server reads the newest member, the hash's path field, and
 * verifies the folder before it loads anything. */
#ifndef DUEL_SNAPSHOT_H
#define DUEL_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "sha256.h"

#define SNAPSHOT_FORMAT "duel-snapshot"
#define SNAPSHOT_META_MAX_BYTES (1u << 20)
#define SNAPSHOT_PATH_MAX 4096
#define SNAPSHOT_MAX_FILES 16
#define SNAPSHOT_FILE_NAME_MAX 64
#define SNAPSHOT_KEY_MAX 320 /* a key: a prefix of up to 255 bytes and a name */

/* The files every snapshot has, and meta.json. */
#define SNAPSHOT_FILE_MODEL "model.safetensors"
#define SNAPSHOT_FILE_CONFIG "config.json"
#define SNAPSHOT_FILE_ERM "erm.safetensors"
#define SNAPSHOT_FILE_META "meta.json"
/* The base model's tokenizer files a writer copies in when they exist. */
#define SNAPSHOT_NUM_TOKENIZER_FILES 2
extern const char *const snapshot_tokenizer_files[SNAPSHOT_NUM_TOKENIZER_FILES];

/* The field of <prefix>snapshot:<v> that holds the folder. */
#define SNAPSHOT_FIELD_PATH "path"

typedef struct snapshot_file {
    char name[SNAPSHOT_FILE_NAME_MAX];
    char sha256[SHA256_HEX_BYTES];
} snapshot_file;

/* meta.json, parsed. */
typedef struct snapshot_meta {
    int64_t version;    /* >= 1 */
    int64_t parent;     /* previous version, 0 for none; < version */
    int64_t step, prefs_applied, created_ms;
    int64_t votes_mean_ms; /* unix ms; 0: none new in this snapshot, or unknown */
    char base_model[SNAPSHOT_PATH_MAX];
    int num_files;
    snapshot_file files[SNAPSHOT_MAX_FILES];
} snapshot_meta;

/* "<data_dir>/snapshots" and "<data_dir>/snapshots/v%06lld" into out; DUEL_EINVAL when too
 * long or (path) for a version below 1. */
int snapshot_root(const char *data_dir, char *out, size_t cap, duel_error *err);
int snapshot_path(const char *data_dir, int64_t version, char *out, size_t cap, duel_error *err);

/* Whether name may appear in meta.json's files: not empty, no '/', not "." or "..", shorter
 * than SNAPSHOT_FILE_NAME_MAX, and not meta.json itself. */
bool snapshot_file_name_ok(const char *name);

/* Reads and checks <dir>/meta.json: the format, every field's type and range, the file names
 * (snapshot_file_name_ok), 64 lowercase hex digits per file, and that model.safetensors,
 * config.json and erm.safetensors are listed. Hashes are not checked (snapshot_verify does).
 * DUEL_ENOTFOUND when meta.json is absent, DUEL_EFORMAT naming meta.json and the problem. */
int snapshot_meta_read(const char *dir, snapshot_meta *out, duel_error *err);
/* meta as meta.json's text (malloc'd, sorted keys); NULL when out of memory. */
char *snapshot_meta_dump(const snapshot_meta *meta);

/* snapshot_meta_read, then the sha256 of every listed file. DUEL_EFORMAT naming the file on a
 * mismatch, DUEL_EIO when one cannot be read. *version_out (optional) receives the version. */
int snapshot_verify(const char *dir, int64_t *version_out, duel_error *err);

typedef struct snapshot_listing {
    int64_t version, step; /* from the folder's meta.json */
} snapshot_listing;

/* The snapshot folders under <data_dir>/snapshots whose meta.json reads and names the folder's
 * own version, sorted by version (a missing folder: none; v*.tmp, v*.old and folders without a
 * good meta.json are skipped; hashes are not checked). *out is malloc'd (NULL when *count is
 * 0). */
int snapshot_list(const char *data_dir, snapshot_listing **out, int *count, duel_error *err);

/* ---- Redis names -------------------------------------------------------------------------- */

/* "<prefix>snapshots" (the zset), "<prefix>snapshot:<v>" (a version's hash), "<prefix>notify"
 * (the announcement channel). DUEL_EINVAL when out is too small. */
int snapshot_key_registry(const char *prefix, char *out, size_t cap, duel_error *err);
int snapshot_key_version(const char *prefix, int64_t version, char *out, size_t cap, duel_error *err);
int snapshot_key_notify(const char *prefix, char *out, size_t cap, duel_error *err);

/* The fields of <prefix>snapshot:<v> for a snapshot at dir with meta, in HSET order: path,
 * parent, step, prefs_applied, created_ms, metrics (metrics_json as given, "{}" when NULL),
 * then sha256:<file> per file. */
#define SNAPSHOT_REGISTRATION_MAX_FIELDS (6 + SNAPSHOT_MAX_FILES)
typedef struct snapshot_registration {
    int num_fields;
    char names[SNAPSHOT_REGISTRATION_MAX_FIELDS][SNAPSHOT_FILE_NAME_MAX + 8];
    const char *values[SNAPSHOT_REGISTRATION_MAX_FIELDS]; /* into numbers, the path and meta */
    char numbers[4][24];
    char path[SNAPSHOT_PATH_MAX];
} snapshot_registration;
int snapshot_registration_fields(const snapshot_meta *meta, const char *dir, const char *metrics_json,
                                 snapshot_registration *out, duel_error *err);

/* The announcement {"kind":"snapshot","version":v,"path":dir} (malloc'd JSON, path escaped);
 * NULL when out of memory. */
char *snapshot_note_json(int64_t version, const char *dir);
/* Whether a message on the notify channel announces a snapshot (any other kind, or text that
 * is not a JSON object, is not one). */
bool snapshot_note_is_snapshot(const char *payload, size_t len);

#endif
