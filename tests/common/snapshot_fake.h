/* snapshot_fake.h: snapshot folders made by hand for tests of the format and of loaders that do
 * not read the weights: small stand-in files whose sha256 meta.json (common/snapshot.h) lists.
 * Header-only. */
#ifndef DUEL_TEST_SNAPSHOT_FAKE_H
#define DUEL_TEST_SNAPSHOT_FAKE_H

#include "snapshot.h"
#include "test_helpers.h"

/* Writes snapshot v under data/snapshots with small stand-in files; returns its folder. */
static inline void snapshot_fake(const char *data, int64_t v, int64_t step, char *dir, size_t cap) {
    char root[600], path[800];
    snprintf(root, sizeof root, "%s/snapshots", data);
    mkdir(data, 0755);
    mkdir(root, 0755);
    assert_int_equal(snapshot_path(data, v, dir, cap, NULL), 0);
    mkdir(dir, 0755);
    snapshot_meta m = {.version = v, .parent = v - 1, .step = step, .prefs_applied = 8 * step, .created_ms = 1700};
    snprintf(m.base_model, sizeof m.base_model, "models/default");
    const char *names[] = {SNAPSHOT_FILE_MODEL, SNAPSHOT_FILE_CONFIG, SNAPSHOT_FILE_ERM, "tokenizer.json"};
    for (int i = 0; i < 4; i++) {
        char text[64];
        snprintf(text, sizeof text, "%s of v%lld", names[i], (long long)v);
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        test_write_file(path, text, strlen(text));
        snprintf(m.files[i].name, sizeof m.files[i].name, "%s", names[i]);
        sha256_hex(text, strlen(text), m.files[i].sha256);
    }
    m.num_files = 4;
    char *meta = snapshot_meta_dump(&m);
    assert_non_null(meta);
    snprintf(path, sizeof path, "%s/meta.json", dir);
    test_write_file(path, meta, strlen(meta));
    free(meta);
}

#endif
