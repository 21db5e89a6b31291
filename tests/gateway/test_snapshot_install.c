/* test_snapshot_install.c: every way a snapshot is refused on its way into serving.
 * The loader (gateway/snapshot_loader.c), against a real redis-server and a stand-in backend
 * that records installs (no model): a registry hash without a path, a folder without
 * meta.json, a file whose sha256 does not match, a meta.json naming a file outside its folder,
 * a meta.json of another version, and a backend whose install fails. Each is refused once
 * (counted, its reason in last_error), never retried, and the backend keeps serving what it
 * served; then a good snapshot installs. Snapshots are registered with common/snapshot.h's keys
 * and fields, as the trainer registers them.
 * The engine adapter's install (gateway/backend_engine.c) on the fixture model tiny-llama-f32:
 * version 0, weights that do not load, another vocabulary, an ERM of another width, a model of
 * another KV shape, and a version already resident are each an error that leaves the serving
 * arm as it was; a good snapshot then serves. */
#include "test_helpers.h"

#include <jansson.h>
#include <pthread.h>

#include "durable_file.h"
#include "lm_trainer.h"
#include "model.h"
#include "rng.h"
#include "snapshot_write.h"
#include "redis_fixture.h"
#include "snapshot.h"
#include "snapshot_fake.h"
#include "duel_backend.h"
#include "snapshot_loader.h"

typedef struct fake_backend {
    pthread_mutex_t mu;
    long long serving, fail_version;
    int installs;
} fake_backend;

static int fake_install(void *impl, long long version, const char *dir, duel_error *err) {
    fake_backend *b = impl;
    (void)dir;
    pthread_mutex_lock(&b->mu);
    b->installs++;
    int rc = 0;
    if (version == b->fail_version)
        rc = duel_error_set(err, DUEL_EFORMAT, "snapshot v%lld: 99 logits, the base model 64", version);
    else b->serving = version;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static long long fake_serving(void *impl) {
    fake_backend *b = impl;
    pthread_mutex_lock(&b->mu);
    long long v = b->serving;
    pthread_mutex_unlock(&b->mu);
    return v;
}

static redis_fixture g_redis;

static int teardown(void **state) {
    (void)state;
    redis_fixture_remove_dir(&g_redis);
    return 0;
}

/* Registers version v at dir as the trainer does (HSET of the registration fields, or only
 * `step` when dir is NULL; ZADD; PUBLISH the note). */
static void register_version(redisContext *c, long long v, const char *dir) {
    char key[SNAPSHOT_KEY_MAX], zkey[SNAPSHOT_KEY_MAX], notify[SNAPSHOT_KEY_MAX];
    assert_int_equal(snapshot_key_version("duel:", v, key, sizeof key, NULL), 0);
    assert_int_equal(snapshot_key_registry("duel:", zkey, sizeof zkey, NULL), 0);
    assert_int_equal(snapshot_key_notify("duel:", notify, sizeof notify, NULL), 0);
    snapshot_meta m = {.version = v, .step = 1};
    snapshot_registration reg;
    assert_int_equal(snapshot_registration_fields(&m, dir ? dir : "", NULL, &reg, NULL), 0);
    const char *argv[2 + 2 * SNAPSHOT_REGISTRATION_MAX_FIELDS] = {"HSET", key};
    int n = 2;
    for (int i = dir ? 0 : 2; i < reg.num_fields; i++) { /* no dir: without the path field */
        argv[n++] = reg.names[i];
        argv[n++] = reg.values[i];
    }
    redisReply *r = redisCommandArgv(c, n, argv, NULL);
    assert_non_null(r);
    freeReplyObject(r);
    r = redisCommand(c, "ZADD %s %lld %lld", zkey, v, v);
    assert_non_null(r);
    freeReplyObject(r);
    char *note = snapshot_note_json(v, dir ? dir : "");
    r = redisCommand(c, "PUBLISH %s %s", notify, note);
    assert_non_null(r);
    freeReplyObject(r);
    free(note);
}

/* Waits (10 s at most) until the loader has refused `rejected` snapshots and loaded `loaded`. */
static void wait_for(snapshot_loader *l, unsigned long long rejected, unsigned long long loaded,
                     snapshot_loader_stats *out) {
    for (int i = 0; i < 1000; i++) {
        snapshot_loader_get_stats(l, out);
        if (out->rejected == rejected && out->loaded == loaded) return;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fail_msg("loader: %llu refused, %llu loaded; wanted %llu and %llu (last error: %s)", out->rejected, out->loaded,
             rejected, loaded, out->last_error);
}

static void edit_meta(const char *dir, const char *key, json_t *value) {
    char path[800];
    snprintf(path, sizeof path, "%s/meta.json", dir);
    json_t *meta = json_load_file(path, 0, NULL);
    assert_non_null(meta);
    json_object_set_new(meta, key, value);
    assert_int_equal(json_dump_file(meta, path, 0), 0);
    json_decref(meta);
}

static void test_every_refusal(void **state) {
    (void)state;
    assert_int_equal(redis_fixture_start_with(&g_redis, "snapshot-loader", REDIS_SERVER_EPHEMERAL), 0);
    redisContext *c = redis_fixture_connect(&g_redis);
    assert_non_null(c);
    char data[512], dir[600], path[800];
    test_make_temp_dir("snapshot-loader", data, sizeof data);
    fake_backend fb = {.fail_version = 6};
    pthread_mutex_init(&fb.mu, NULL);
    duel_backend backend = {.name = "fake", .impl = &fb, .install_snapshot = fake_install,
                            .serving_version = fake_serving};
    snapshot_loader_config cfg = {.host = "127.0.0.1", .port = g_redis.port, .poll_ms = 100};
    snapshot_loader *l = NULL;
    duel_error err = {0};
    if (snapshot_loader_create(&cfg, &backend, &l, &err)) fail_msg("%s", err.message);
    snapshot_loader_stats st;
    struct {
        const char *reason;
    } want[] = {{"no usable path field"}, {"no meta.json"}, {"does not match"}, {"bad file entry"},
                {"meta.json says version 6"}, {"99 logits"}};
    for (long long v = 1; v <= 6; v++) {
        snapshot_fake(data, v, v, dir, sizeof dir);
        if (v == 2) {
            snprintf(path, sizeof path, "%s/meta.json", dir);
            unlink(path);
        } else if (v == 3) {
            snprintf(path, sizeof path, "%s/erm.safetensors", dir);
            test_write_file(path, "changed", 7);
        } else if (v == 4) {
            json_t *files = json_pack("{s:s}", "../v000003/erm.safetensors", "0000000000000000000000000000000000000000000000000000000000000000");
            edit_meta(dir, "files", files);
        } else if (v == 5) {
            edit_meta(dir, "version", json_integer(6));
        }
        register_version(c, v, v == 1 ? NULL : dir);
        wait_for(l, (unsigned long long)v, 0, &st);
        if (!strstr(st.last_error, want[v - 1].reason))
            fail_msg("v%lld refused with '%s', wanted '%s'", v, st.last_error, want[v - 1].reason);
        assert_int_equal(st.serving_version, 0); /* still the base model */
        assert_int_equal(fb.installs, v == 6 ? 1 : 0); /* only a verified folder reaches the backend */
    }
    /* Refused versions are not retried, however often the loader polls. */
    struct timespec ts = {0, 400 * 1000000L};
    nanosleep(&ts, NULL);
    snapshot_loader_get_stats(l, &st);
    assert_int_equal(st.rejected, 6);
    assert_true(st.polls >= 3);
    assert_int_equal(fb.installs, 1);
    /* A good one installs. */
    snapshot_fake(data, 7, 7, dir, sizeof dir);
    register_version(c, 7, dir);
    wait_for(l, 6, 1, &st);
    assert_int_equal(st.serving_version, 7);
    assert_int_equal(fb.installs, 2);
    snapshot_loader_destroy(l);
    pthread_mutex_destroy(&fb.mu);
    redisFree(c);
    durable_remove_tree(data);
}

/* ---- the engine adapter's install ------------------------------------------------------------ */

static void ignore_events(void *ctx, duel_backend_event *ev) {
    (void)ctx;
    (void)ev;
}

/* Writes version v under data: the policy of config_json (random weights) and an ERM of width
 * d_feat. */
static void write_model_snapshot(const char *data, int64_t v, const char *config_json, int d_feat, char *dir,
                                 size_t cap) {
    model_config config;
    assert_int_equal(model_config_parse(config_json, strlen(config_json), "config", &config, NULL), 0);
    train_model *m = NULL;
    assert_int_equal(train_model_create(&config, &m, NULL), 0);
    lm_model_init_random(m, (uint64_t)v, 0.02);
    erm_config ec = {2, d_feat, 8};
    duel_rng rng;
    duel_rng_seed(&rng, (uint64_t)v);
    erm *e = NULL;
    assert_int_equal(erm_create(&ec, &rng, &e, NULL), 0);
    snapshot_info info = {v, 0, v, v, 1700000000000LL, "test", NULL, 0};
    duel_error err = {0};
    if (snapshot_write(data, &info, m, config_json, e, NULL, dir, cap, &err)) fail_msg("%s", err.message);
    erm_free(e);
    train_model_free(m);
}

/* tiny-llama-f32's shape with one key changed (value as JSON text). */
static void config_with(char *out, size_t cap, const char *key, const char *value) {
    const char *base[][2] = {{"vocab_size", "512"}, {"hidden_size", "64"}, {"intermediate_size", "172"},
                             {"num_hidden_layers", "3"}, {"num_attention_heads", "4"}, {"num_key_value_heads", "2"}};
    size_t n = (size_t)snprintf(out, cap, "{\"architectures\": [\"LlamaForCausalLM\"], \"max_position_embeddings\": 2048,"
                                " \"rms_norm_eps\": 1e-5, \"rope_theta\": 100000.0, \"hidden_act\": \"silu\","
                                " \"tie_word_embeddings\": true");
    for (int i = 0; i < 6; i++)
        n += (size_t)snprintf(out + n, cap - n, ", \"%s\": %s", base[i][0],
                              key && strcmp(key, base[i][0]) == 0 ? value : base[i][1]);
    snprintf(out + n, cap - n, "}");
}

static void test_engine_install_failures(void **state) {
    (void)state;
    char model_dir[1024], data[512], dir[700], config[1024], path[800];
    snprintf(model_dir, sizeof model_dir, "%s/test-models/tiny-llama-f32", test_env("DUEL_BUILD_DIR", "."));
    test_make_temp_dir("snapshot-engine-install", data, sizeof data);
    backend_engine_config cfg = {.model_dir = model_dir, .erm_seed = 1, .num_candidates = 2, .temperature = 1.0f,
                                 .max_new_tokens = 8, .kv_memory_bytes = 4u << 20, .snapshots = true};
    duel_backend b;
    duel_error err = {0};
    if (backend_engine_create(&cfg, &b, &err)) fail_msg("%s", err.message);
    if (b.start(b.impl, ignore_events, NULL, &err)) fail_msg("%s", err.message);
    assert_non_null(b.install_snapshot);
    /* version 0 */
    config_with(config, sizeof config, NULL, NULL);
    write_model_snapshot(data, 1, config, 128, dir, sizeof dir);
    assert_int_equal(b.install_snapshot(b.impl, 0, dir, &err), DUEL_EINVAL);
    /* weights that do not load: config.json says 4 layers, the weights hold 3 */
    write_model_snapshot(data, 2, config, 128, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    config_with(config, sizeof config, "num_hidden_layers", "4");
    test_write_file(path, config, strlen(config));
    assert_int_not_equal(b.install_snapshot(b.impl, 2, dir, &err), 0);
    /* another vocabulary: the base model's tokenizer cannot drive it */
    config_with(config, sizeof config, "vocab_size", "256");
    write_model_snapshot(data, 3, config, 128, dir, sizeof dir);
    assert_int_equal(b.install_snapshot(b.impl, 3, dir, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "logits"));
    /* an ERM over features of another width */
    config_with(config, sizeof config, NULL, NULL);
    write_model_snapshot(data, 4, config, 64, dir, sizeof dir);
    assert_int_not_equal(b.install_snapshot(b.impl, 4, dir, &err), 0);
    assert_non_null(strstr(err.message, "erm.safetensors"));
    /* another KV shape: the engine refuses the arm */
    config_with(config, sizeof config, "num_hidden_layers", "2");
    write_model_snapshot(data, 5, config, 128, dir, sizeof dir);
    assert_int_equal(b.install_snapshot(b.impl, 5, dir, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "KV shape"));
    assert_int_equal(b.serving_version(b.impl), 0); /* still the base model */
    /* a good one serves; the same version again is the resident arm (a rollout's pinned
     * version that becomes the newest is not loaded twice) and it keeps serving */
    config_with(config, sizeof config, NULL, NULL);
    write_model_snapshot(data, 6, config, 128, dir, sizeof dir);
    if (b.install_snapshot(b.impl, 6, dir, &err)) fail_msg("%s", err.message);
    assert_int_equal(b.serving_version(b.impl), 6);
    assert_int_equal(b.install_snapshot(b.impl, 6, "/nonexistent", &err), DUEL_OK);
    assert_int_equal(b.serving_version(b.impl), 6);
    assert_true(b.snapshot_resident(b.impl, 6));
    b.destroy(b.impl);
    durable_remove_tree(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_every_refusal, teardown),
        cmocka_unit_test(test_engine_install_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
