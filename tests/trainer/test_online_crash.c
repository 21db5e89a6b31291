/* test_online_crash.c: crash safety of `duel train` (DESIGN.md section 6, exactly-once effect).
 * A scripted producer XADDs 241 votes (a/b, ties and three malformed ones) with fixed stream ids.
 * Run A consumes them without interruption. The stream is then rebuilt identically and run B is
 * killed with SIGKILL at random points twenty times (and Redis restarted from its AOF once) before
 * a last run finishes. Checked: every vote applied exactly once (counts, ids in the checkpoint,
 * nothing pending), malformed entries dead-lettered exactly once, and B's final policy weights,
 * optimizer, ERM and every published snapshot's weights byte-identical to A's (CPU, one BLAS
 * thread). The SEA mixture is on (burn-in 24 pairs, gamma 0.7, a store of 40 duels that wraps),
 * so the duel store and the mixture RNG go through the kills too. (checkpoint_every stays 1
 * here: with 3, a fast machine finishes the run before the twentieth kill; deferred
 * acknowledgements are crash-tested in test_online_service.c.) */
#include "test_helpers.h"

#include <jansson.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#ifndef DUEL_EXE
#error "DUEL_EXE (path of the duel executable) must be defined by the build"
#endif

#include "json_util.h"
#include "online_test_env.h"
#include "redis_fixture.h"
#include "sha256.h"
#include "test_online_votes.h"

#define N_VOTES 241 /* 224 a/b pairs (whole batches of 4), 14 ties, 3 malformed */
#define N_KILLS 20

static redis_fixture g_redis;

static int stop_redis(void **state) {
    (void)state;
    redis_fixture_stop(&g_redis);
    return 0;
}

static pid_t spawn_trainer(const char *config, const char *data, const char *log) {
    return online_test_spawn_train(g_redis.port, config, data, log, "700");
}

static int wait_trainer(pid_t pid) { return online_test_wait_exit(pid, 120); }

static void produce(redisContext *c) {
    vote_producer p;
    vote_producer_init(&p, 2024, 128, "tiny");
    for (int i = 0; i < N_VOTES; i++) {
        char id[32];
        snprintf(id, sizeof id, "1-%d", i + 1);
        vote_producer_add(&p, c, "duel:prefs", id, vote_script_kind(i), NULL);
    }
}

static void file_hash(const char *dir, const char *name, char hex[SHA256_HEX_BYTES]) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    duel_error err;
    if (sha256_file_hex(path, hex, &err)) fail_msg("%s", err.message);
}

static json_t *load_json(const char *dir, const char *name) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    json_t *j = NULL;
    duel_error err;
    if (duel_json_load_file(path, 64 << 20, &j, &err)) fail_msg("%s", err.message);
    return j;
}

static long long state_int(json_t *s, const char *key) { return json_integer_value(json_object_get(s, key)); }

/* The step recorded in the checkpoint under dir, or -1 while there is none. */
static long long checkpoint_step(const char *dir) {
    char path[1200];
    snprintf(path, sizeof path, "%s/state.json", dir);
    json_t *j = NULL;
    if (duel_json_load_file(path, 64 << 20, &j, NULL)) return -1;
    long long step = json_integer_value(json_object_get(j, "step"));
    json_decref(j);
    return step;
}

static void check_exactly_once(redisContext *c, json_t *state, int n_ab, int n_tie) {
    assert_int_equal(state_int(state, "prefs_applied"), n_ab);
    assert_int_equal(state_int(state, "ties"), n_tie);
    assert_int_equal(state_int(state, "duplicates"), 0);
    assert_int_equal(state_int(state, "erm_pairs_seen"), n_ab);
    /* Every trainable or counted vote id once (the producer numbers them vote000000...). */
    json_t *recent = json_object_get(state, "recent_vote_ids");
    assert_int_equal((int)json_array_size(recent), n_ab + n_tie);
    for (size_t i = 0; i < json_array_size(recent); i++)
        for (size_t j = i + 1; j < json_array_size(recent); j++)
            assert_string_not_equal(json_string_value(json_array_get(recent, i)),
                                    json_string_value(json_array_get(recent, j)));
    redisReply *r = redisCommand(c, "XPENDING duel:prefs trainers");
    assert_non_null(r);
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    r = redisCommand(c, "XLEN duel:prefs:dead");
    assert_int_equal(r->integer, 3);
    freeReplyObject(r);
}

static void test_kill9_resume_is_exact(void **state) {
    (void)state;
    char model[1024], root[512], config[700], data_a[700], data_b[700], log[700];
    snprintf(model, sizeof model, "%s", online_test_model());
    test_make_temp_dir("online-crash", root, sizeof root);
    snprintf(config, sizeof config, "%s/config.json", root);
    snprintf(data_a, sizeof data_a, "%s/a", root);
    snprintf(data_b, sizeof data_b, "%s/b", root);
    snprintf(log, sizeof log, "%s/train.log", root);
    char text[2048];
    snprintf(text, sizeof text,
             "{\"model\":{\"path\":\"%s\",\"id\":\"tiny\"},"
             "\"erm\":{\"num_heads\":4,\"hidden\":32,\"min_pairs\":8},"
             "\"trainer\":{\"loss\":\"dpo\",\"batch_size\":4,\"max_batch_size\":4,\"lr\":0.001,\"min_lr\":0.0001,"
             "\"warmup_steps\":2,\"total_steps\":200,\"publish_every\":5,\"max_deliveries\":1000,"
             "\"seed\":99,\"burn_in\":24,\"gamma\":0.7,\"synthetic_store\":40,"
             "\"publish_every_seconds\":0,\"publish_when_idle\":false,\"keep_snapshots\":0,\"checkpoint_every\":1}}",
             model);
    test_write_file(config, text, strlen(text));
    setenv("OPENBLAS_NUM_THREADS", "1", 1); /* one summation order in both runs */
    int n_ab = 0, n_tie = 0;
    for (int i = 0; i < N_VOTES; i++) {
        n_ab += vote_script_kind(i) == VOTE_AB;
        n_tie += vote_script_kind(i) == VOTE_TIE;
    }
    assert_int_equal(n_ab % 4, 0);
    assert_int_equal(redis_fixture_start(&g_redis, "online-crash"), 0);
    redisContext *c = redis_fixture_connect(&g_redis);
    assert_non_null(c);

    /* Run A: uninterrupted. */
    produce(c);
    double t0 = (double)clock();
    assert_int_equal(wait_trainer(spawn_trainer(config, data_a, log)), 0);
    (void)t0;
    char ckpt_a[800], ckpt_b[800];
    snprintf(ckpt_a, sizeof ckpt_a, "%s/trainer/checkpoint", data_a);
    snprintf(ckpt_b, sizeof ckpt_b, "%s/trainer/checkpoint", data_b);
    json_t *state_a = load_json(ckpt_a, "state.json");
    check_exactly_once(c, state_a, n_ab, n_tie);
    assert_int_equal(state_int(state_a, "step"), n_ab / 4);
    /* floor(4 * 0.3 / 0.7 + 0.5) = 2 synthetic pairs per update from the 7th (24 pairs applied) */
    assert_int_equal(state_int(state_a, "synthetic_total"), 2 * (n_ab / 4 - 6));

    /* Run B: the same stream, killed at random points; Redis restarted once from its AOF. */
    freeReplyObject(redisCommand(c, "FLUSHALL"));
    produce(c);
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    for (int k = 0; k < N_KILLS; k++) {
        /* Odd kills land at a random time (possibly during start-up); even kills wait until the
         * trainer has checkpointed a new step and then land a random moment later, so the run
         * makes progress however slow the machine is (a purely timed kill can starve it). Either
         * kind lands at once when the run got two steps past where it was, so that a fast
         * machine does not finish the run before the last kill. */
        long long before = checkpoint_step(ckpt_b);
        pid_t pid = spawn_trainer(config, data_b, log);
        if (k % 2 == 0) {
            for (int t = 0; t < 6000 && checkpoint_step(ckpt_b) <= before; t++) {
                int status;
                if (waitpid(pid, &status, WNOHANG) == pid) fail_msg("duel train exited early");
                online_test_sleep_ms(10);
            }
        }
        const int wait_ms = (int)duel_rng_below(&rng, k % 2 == 0 ? 40 : 300);
        for (int t = 0; t < wait_ms && checkpoint_step(ckpt_b) < before + 2; t += 2) online_test_sleep_ms(2);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        if (k == N_KILLS / 2) {
            redisFree(c);
            assert_int_equal(redis_fixture_restart(&g_redis), 0);
            c = redis_fixture_connect(&g_redis);
            assert_non_null(c);
        }
    }
    json_t *mid = load_json(ckpt_b, "state.json");
    long long mid_step = state_int(mid, "step");
    json_decref(mid);
    fprintf(stderr, "after %d kills: step %lld of %d\n", N_KILLS, mid_step, n_ab / 4);
    assert_true(mid_step > 0 && mid_step < n_ab / 4); /* the kills landed mid-run */
    assert_int_equal(wait_trainer(spawn_trainer(config, data_b, log)), 0);
    json_t *state_b = load_json(ckpt_b, "state.json");
    check_exactly_once(c, state_b, n_ab, n_tie);
    assert_int_equal(state_int(state_b, "step"), state_int(state_a, "step"));
    assert_int_equal(state_int(state_b, "synthetic_total"), state_int(state_a, "synthetic_total"));
    assert_string_equal(json_string_value(json_object_get(state_b, "last_applied_id")),
                        json_string_value(json_object_get(state_a, "last_applied_id")));
    /* Bit-exact weights, optimizer and ERM. */
    static const char *files[] = {"policy/model.safetensors", "policy/optimizer.safetensors",
                                  "erm.safetensors", "erm_optimizer.safetensors", "entries.bin"};
    for (int i = 0; i < 5; i++) {
        char ha[SHA256_HEX_BYTES], hb[SHA256_HEX_BYTES];
        file_hash(ckpt_a, files[i], ha);
        file_hash(ckpt_b, files[i], hb);
        if (strcmp(ha, hb) != 0) fail_msg("%s differs after kill -9 and resume", files[i]);
    }
    /* Every snapshot the uninterrupted run published exists with the same weights. */
    long long published = state_int(state_a, "published_version");
    assert_int_equal(published, n_ab / 4 / 5);
    assert_int_equal(state_int(state_b, "published_version"), published);
    for (long long v = 1; v <= published; v++) {
        char sa[900], sb[900];
        snprintf(sa, sizeof sa, "%s/snapshots/v%06lld", data_a, v);
        snprintf(sb, sizeof sb, "%s/snapshots/v%06lld", data_b, v);
        json_t *ma = load_json(sa, "meta.json"), *mb = load_json(sb, "meta.json");
        json_t *fa = json_object_get(ma, "files"), *fb = json_object_get(mb, "files");
        assert_string_equal(json_string_value(json_object_get(fa, "model.safetensors")),
                            json_string_value(json_object_get(fb, "model.safetensors")));
        assert_string_equal(json_string_value(json_object_get(fa, "erm.safetensors")),
                            json_string_value(json_object_get(fb, "erm.safetensors")));
        json_decref(ma);
        json_decref(mb);
    }
    redisReply *r = redisCommand(c, "ZCARD duel:snapshots");
    assert_int_equal(r->integer, published);
    freeReplyObject(r);
    json_decref(state_a);
    json_decref(state_b);
    redisFree(c);
    redis_fixture_stop(&g_redis);
    redis_fixture_remove_dir(&g_redis);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* trainer.weight_transport cuda_ipc / nccl on a device that does not exist: `duel train` stops
 * at start with the transport's "no CUDA device" error (exit status 1); an unknown kind is a
 * config error naming the key. */
static void test_gpu_transport_without_device(void **state) {
    (void)state;
    char model[1024], root[512], config[700], data[700], log[700], text[2048];
    snprintf(model, sizeof model, "%s", online_test_model());
    test_make_temp_dir("online-transport", root, sizeof root);
    snprintf(config, sizeof config, "%s/config.json", root);
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(log, sizeof log, "%s/train.log", root);
    assert_int_equal(redis_fixture_start(&g_redis, "online-transport"), 0);
    const char *kinds[] = {"cuda_ipc", "nccl", "carrier_pigeon"};
    const char *want[] = {"cuda_ipc transport: no CUDA device", "nccl transport: no CUDA device",
                          "trainer.weight_transport 'carrier_pigeon' is not file, cuda_ipc or nccl"};
    for (int k = 0; k < 3; k++) {
        snprintf(text, sizeof text,
                 "{\"model\":{\"path\":\"%s\",\"id\":\"tiny\"},\"erm\":{\"num_heads\":4,\"hidden\":32},"
                 "\"trainer\":{\"weight_transport\":\"%s\",\"transport_device\":4096}}",
                 model, kinds[k]);
        test_write_file(config, text, strlen(text));
        unlink(log);
        assert_int_equal(wait_trainer(spawn_trainer(config, data, log)), 1);
        char *out = read_text(log);
        if (!strstr(out, want[k])) fail_msg("%s: log says '%s'", kinds[k], out);
        free(out);
    }
    redis_fixture_stop(&g_redis);
    redis_fixture_remove_dir(&g_redis);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_gpu_transport_without_device, stop_redis),
        cmocka_unit_test_teardown(test_kill9_resume_is_exact, stop_redis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
