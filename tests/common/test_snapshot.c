/* test_snapshot.c: common/snapshot.c on hand-made snapshot folders: meta.json written and read
 * back, verification (a changed byte is refused naming the file), the path guard (file names
 * with '/', ".", "..", "" or meta.json itself never reach the file system), every malformed
 * meta.json refused with its reason, listing (strays, .tmp and .old folders, and a meta.json
 * naming another version skipped), and the Redis names with a custom prefix. */
#include "test_helpers.h"

#include <jansson.h>

#include "durable_file.h"
#include "snapshot.h"
#include "snapshot_fake.h"

/* Rewrites dir/meta.json with key set to the JSON value text (NULL: deleted). */
static void edit_meta(const char *dir, const char *key, const char *value) {
    char path[800];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    json_t *meta = json_load_file(path, 0, NULL);
    assert_non_null(meta);
    if (value) json_object_set_new(meta, key, json_loads(value, JSON_DECODE_ANY, NULL));
    else json_object_del(meta, key);
    assert_int_equal(json_dump_file(meta, path, 0), 0);
    json_decref(meta);
}

/* Replaces meta.json's files object by one entry name -> the sha256 of name's contents. */
static void meta_with_file(const char *dir, const char *name) {
    char value[512], hex[SHA256_HEX_BYTES];
    sha256_hex("x", 1, hex);
    snprintf(value, sizeof value, "{\"model.safetensors\":\"%s\",\"config.json\":\"%s\",\"erm.safetensors\":\"%s\","
             "\"%s\":\"%s\"}", hex, hex, hex, name, hex);
    edit_meta(dir, "files", value);
}

static void test_round_trip_and_verify(void **state) {
    (void)state;
    char data[512], dir[600], path[800];
    test_make_temp_dir("snapshot-verify", data, sizeof data);
    snapshot_fake(data, 12, 30, dir, sizeof dir);
    assert_non_null(strstr(dir, "/snapshots/v000012"));
    snapshot_meta m;
    duel_error err = {0};
    assert_int_equal(snapshot_meta_read(dir, &m, &err), 0);
    assert_int_equal(m.version, 12);
    assert_int_equal(m.parent, 11);
    assert_int_equal(m.step, 30);
    assert_int_equal(m.prefs_applied, 240);
    assert_string_equal(m.base_model, "models/default");
    assert_int_equal(m.num_files, 4);
    assert_int_equal(m.votes_mean_ms, 0); /* optional: absent in older snapshots */
    char *text = snapshot_meta_dump(&m);
    assert_null(strstr(text, "votes_mean_ms"));
    free(text);
    m.votes_mean_ms = 1699;
    text = snapshot_meta_dump(&m);
    assert_non_null(strstr(text, "\"votes_mean_ms\": 1699"));
    free(text);
    edit_meta(dir, "votes_mean_ms", "1699");
    assert_int_equal(snapshot_meta_read(dir, &m, &err), 0);
    assert_int_equal(m.votes_mean_ms, 1699);
    int64_t v = 0;
    assert_int_equal(snapshot_verify(dir, &v, &err), 0);
    assert_int_equal(v, 12);
    /* one changed byte in any file */
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    test_write_file(path, "tokenizer.json of v013", 22);
    assert_int_equal(snapshot_verify(dir, &v, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "tokenizer.json"));
    assert_non_null(strstr(err.message, "does not match"));
    /* a listed file that is missing */
    unlink(path);
    assert_int_equal(snapshot_verify(dir, NULL, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, "tokenizer.json"));
    /* no meta.json */
    snprintf(path, sizeof path, "%s/meta.json", dir);
    unlink(path);
    assert_int_equal(snapshot_verify(dir, NULL, &err), DUEL_ENOTFOUND);
    assert_int_equal(snapshot_path(data, 0, path, sizeof path, &err), DUEL_EINVAL);
    durable_remove_tree(data);
}

static void test_path_guard(void **state) {
    (void)state;
    assert_true(snapshot_file_name_ok("model.safetensors"));
    assert_true(snapshot_file_name_ok("..hidden"));
    const char *bad[] = {"", ".", "..", "../meta", "a/b", "/etc/passwd", "meta.json",
                         "a-name-longer-than-sixty-three-bytes-is-refused-as-well-xxxxxxxxxx"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) assert_false(snapshot_file_name_ok(bad[i]));
    /* A meta.json naming a file outside its folder is refused before anything is opened, even
     * when the hash would match: here ../secret exists beside the snapshot with that hash. */
    char data[512], dir[600], path[800];
    test_make_temp_dir("snapshot-guard", data, sizeof data);
    snapshot_fake(data, 1, 1, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/snapshots/secret", data);
    test_write_file(path, "x", 1);
    const char *names[] = {"../secret", "..", ".", "sub/file", "/etc/hostname", "meta.json"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        meta_with_file(dir, names[i]);
        duel_error err = {0};
        assert_int_equal(snapshot_verify(dir, NULL, &err), DUEL_EFORMAT);
        if (!strstr(err.message, "bad file entry")) fail_msg("%s: %s", names[i], err.message);
    }
    durable_remove_tree(data);
}

static void test_malformed_meta(void **state) {
    (void)state;
    char data[512], dir[600];
    test_make_temp_dir("snapshot-meta", data, sizeof data);
    snapshot_fake(data, 3, 3, dir, sizeof dir);
    struct {
        const char *key, *value, *reason;
    } cases[] = {
        {"format", "\"other\"", "not a duel-snapshot meta.json"},
        {"files", "[]", "not a duel-snapshot meta.json"},
        {"version", "0", "version 0"},
        {"version", "\"3\"", "version is missing"},
        {"parent", "3", "parent 3"},
        {"step", "-1", "step is missing or not a non-negative integer"},
        {"created_ms", NULL, "created_ms is missing"},
        {"votes_mean_ms", "-5", "votes_mean_ms is missing or not a non-negative integer"},
        {"base_model", "7", "base_model"},
        {"files", "{\"model.safetensors\":\"00\",\"config.json\":\"00\",\"erm.safetensors\":\"00\"}", "64 lowercase hex"},
        {"files", "{\"model.safetensors\":\"" "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" "\"}",
         "lists no config.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snapshot_fake(data, 3, 3, dir, sizeof dir);
        edit_meta(dir, cases[i].key, cases[i].value);
        snapshot_meta m;
        duel_error err = {0};
        assert_int_equal(snapshot_meta_read(dir, &m, &err), DUEL_EFORMAT);
        if (!strstr(err.message, cases[i].reason)) fail_msg("%s=%s: '%s'", cases[i].key, cases[i].value, err.message);
        assert_non_null(strstr(err.message, "meta.json"));
    }
    durable_remove_tree(data);
}

static void test_list(void **state) {
    (void)state;
    char data[512], dir[600], path[800];
    test_make_temp_dir("snapshot-list", data, sizeof data);
    snapshot_listing *list = NULL;
    int n = -1;
    assert_int_equal(snapshot_list(data, &list, &n, NULL), 0); /* no snapshots/ at all */
    assert_int_equal(n, 0);
    assert_null(list);
    snapshot_fake(data, 10, 100, dir, sizeof dir);
    snapshot_fake(data, 2, 20, dir, sizeof dir);
    snapshot_fake(data, 7, 70, dir, sizeof dir);
    snapshot_fake(data, 5, 50, dir, sizeof dir);
    edit_meta(dir, "version", "6"); /* v000005 says it is version 6: skipped */
    const char *strays[] = {"v000011.tmp", "v000012.old", "vfoo", "w000001", "v000000", "v000013"};
    for (size_t i = 0; i < sizeof strays / sizeof *strays; i++) {
        snprintf(path, sizeof path, "%s/snapshots/%s", data, strays[i]);
        mkdir(path, 0755); /* v000013: no meta.json */
    }
    assert_int_equal(snapshot_list(data, &list, &n, NULL), 0);
    assert_int_equal(n, 3);
    const int64_t want[] = {2, 7, 10};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(list[i].version, want[i]);
        assert_int_equal(list[i].step, 10 * want[i]);
    }
    free(list);
    durable_remove_tree(data);
}

static void test_redis_names(void **state) {
    (void)state;
    char key[SNAPSHOT_KEY_MAX];
    assert_int_equal(snapshot_key_registry("duel:", key, sizeof key, NULL), 0);
    assert_string_equal(key, "duel:snapshots");
    assert_int_equal(snapshot_key_version("test:", 12, key, sizeof key, NULL), 0);
    assert_string_equal(key, "test:snapshot:12");
    assert_int_equal(snapshot_key_notify("a{b}:", key, sizeof key, NULL), 0);
    assert_string_equal(key, "a{b}:notify");
    duel_error err = {0};
    assert_int_equal(snapshot_key_version("duel:", 12, key, 10, &err), DUEL_EINVAL);
    /* the registration: every field from meta.json, then each file's hash */
    char data[512], dir[600];
    test_make_temp_dir("snapshot-keys", data, sizeof data);
    snapshot_fake(data, 4, 9, dir, sizeof dir);
    snapshot_meta m;
    assert_int_equal(snapshot_meta_read(dir, &m, NULL), 0);
    snapshot_registration reg;
    assert_int_equal(snapshot_registration_fields(&m, dir, "{\"loss\":1}", &reg, NULL), 0);
    assert_int_equal(reg.num_fields, 6 + 4);
    assert_string_equal(reg.names[0], SNAPSHOT_FIELD_PATH);
    assert_string_equal(reg.values[0], dir);
    const char *want[][2] = {{"parent", "3"}, {"step", "9"}, {"prefs_applied", "72"}, {"created_ms", "1700"},
                             {"metrics", "{\"loss\":1}"}};
    for (int i = 0; i < 5; i++) {
        assert_string_equal(reg.names[1 + i], want[i][0]);
        assert_string_equal(reg.values[1 + i], want[i][1]);
    }
    for (int i = 0; i < 4; i++) {
        char name[80];
        snprintf(name, sizeof name, "sha256:%s", m.files[i].name);
        assert_string_equal(reg.names[6 + i], name);
        assert_int_equal(strlen(reg.values[6 + i]), 64);
    }
    /* the note: a path with quotes stays valid JSON; only snapshot notes count */
    char *note = snapshot_note_json(4, "/data/\"odd\" dir");
    assert_non_null(note);
    json_t *j = json_loads(note, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "path")), "/data/\"odd\" dir");
    assert_int_equal(json_integer_value(json_object_get(j, "version")), 4);
    json_decref(j);
    assert_true(snapshot_note_is_snapshot(note, strlen(note)));
    free(note);
    assert_false(snapshot_note_is_snapshot("{\"kind\":\"knobs\"}", 16));
    assert_false(snapshot_note_is_snapshot("snapshot", 8));
    durable_remove_tree(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_verify),
        cmocka_unit_test(test_path_guard),
        cmocka_unit_test(test_malformed_meta),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_redis_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
