/* test_config.c: the shared configuration (common/config.c) and config/default.json.
 * The file must never drift from the code: each section is fed to the real section parsers
 * (gateway_config_load, the oracle_*_from_json readers, the trainer's parser through `duel train`)
 * and compared with the code's own defaults. Bad paths: unknown section and key, wrong types,
 * malformed JSON with line and column, an oversized file, bad environment values (the knobs:
 * test_knobs.c). */
#include <sys/wait.h>

#include "config.h"
#include "duel.h"
#include "engine.h"
#include "erm.h"
#include "gateway.h"
#include "json_util.h"
#include "knobs.h"
#include "kv_cache.h"
#include "online_trainer.h"
#include "oracle.h"
#include "scheduler.h"
#include "stream_consumer.h"
#include "test_helpers.h"
#include "weight_transport.h"

#ifndef DUEL_EXE
#error "DUEL_EXE (path of the duel executable) must be defined by tests/common/config.cmake"
#endif

static void default_json_path(char *out, size_t cap) {
    snprintf(out, cap, "%s/config/default.json", test_env("DUEL_SOURCE_DIR", "."));
}

static json_t *load_ok(const char *path, const char *const *sets, size_t n_sets,
                       const char *const *envp) {
    json_t *root = NULL;
    duel_error err = {0};
    int rc = duel_config_load(path, sets, n_sets, envp, &root, NULL, &err);
    if (rc) fail_msg("duel_config_load: %s", err.message);
    return root;
}

/* Expects failure with code and every needle in the message. */
static void load_fails(const char *path, const char *const *sets, size_t n_sets,
                       const char *const *envp, int code, const char *needle1,
                       const char *needle2) {
    json_t *root = (json_t *)1;
    duel_error err = {0};
    int rc = duel_config_load(path, sets, n_sets, envp, &root, NULL, &err);
    if (rc != code) fail_msg("expected %d, got %d (%s)", code, rc, err.message);
    assert_null(root);
    if (needle1 && !strstr(err.message, needle1))
        fail_msg("message \"%s\" lacks \"%s\"", err.message, needle1);
    if (needle2 && !strstr(err.message, needle2))
        fail_msg("message \"%s\" lacks \"%s\"", err.message, needle2);
}

static json_t *at(const json_t *root, const char *section, const char *key) {
    json_t *s = duel_config_section(root, section);
    assert_non_null(s);
    json_t *v = json_object_get(s, key);
    if (!v) fail_msg("default.json has no %s.%s", section, key);
    return v;
}

static long long int_at(const json_t *root, const char *section, const char *key) {
    json_t *v = at(root, section, key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static double num_at(const json_t *root, const char *section, const char *key) {
    json_t *v = at(root, section, key);
    assert_true(json_is_number(v));
    return json_number_value(v);
}

static const char *str_at(const json_t *root, const char *section, const char *key) {
    json_t *v = at(root, section, key);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

/* ---- default.json against the code --------------------------------------------------------- */

static void test_file_equals_embedded_and_has_every_section(void **state) {
    (void)state;
    char path[4096];
    default_json_path(path, sizeof path);
    json_t *file = NULL, *embedded = NULL;
    duel_error err = {0};
    assert_int_equal(duel_json_load_file(path, DUEL_CONFIG_MAX_BYTES, &file, &err), 0);
    assert_int_equal(duel_config_defaults(&embedded, &err), 0);
    assert_true(json_equal(file, embedded));
    assert_int_equal(json_object_size(embedded), DUEL_CONFIG_SECTION_COUNT);
    for (int i = 0; i < DUEL_CONFIG_SECTION_COUNT; i++)
        assert_non_null(duel_config_section(embedded, duel_config_sections[i]));
    /* Loading the file itself changes nothing. */
    json_t *loaded = load_ok(path, NULL, 0, NULL);
    assert_true(json_equal(loaded, embedded));
    json_decref(loaded);
    json_decref(file);
    json_decref(embedded);
}

static void test_gateway_section_is_the_gateway_defaults(void **state) {
    (void)state;
    char path[4096];
    default_json_path(path, sizeof path);
    gateway_config want, got;
    gateway_config_defaults(&want);
    gateway_config_defaults(&got);
    duel_error err = {0};
    if (gateway_config_load(&got, path, &err)) fail_msg("gateway: %s", err.message);
    assert_memory_equal(&want, &got, sizeof want);
    /* And the parser really reads the file: a changed value arrives. */
    json_t *root = load_ok(path, (const char *const[]){"gateway.max_turns=7", "redis.port=7001"},
                           2, NULL);
    char dir[4096], tmp[4200];
    test_make_temp_dir("config-gw", dir, sizeof dir);
    snprintf(tmp, sizeof tmp, "%s/c.json", dir);
    assert_int_equal(json_dump_file(root, tmp, 0), 0);
    gateway_config_defaults(&got);
    if (gateway_config_load(&got, tmp, &err)) fail_msg("gateway: %s", err.message);
    assert_int_equal(got.max_turns, 7);
    assert_int_equal(got.redis_port, 7001);
    /* The same document without a file (what `duel serve` does), and its range check, which
     * names the dotted path. */
    gateway_config_defaults(&got);
    if (gateway_config_from_json(&got, root, "doc", &err)) fail_msg("gateway: %s", err.message);
    assert_int_equal(got.max_turns, 7);
    assert_int_equal(got.redis_port, 7001);
    json_object_set_new(duel_config_section(root, "gateway"), "port", json_integer(70000));
    assert_int_equal(gateway_config_from_json(&got, root, "doc", &err), DUEL_EFORMAT);
    assert_string_equal(err.message, "doc: gateway.port = 70000 is outside [0, 65535]");
    json_object_set_new(duel_config_section(root, "gateway"), "port", json_integer(80));
    json_object_set_new(duel_config_section(root, "gateway"), "nope", json_true());
    assert_int_equal(gateway_config_from_json(&got, root, "doc", &err), DUEL_EFORMAT);
    assert_string_equal(err.message, "doc: unknown key gateway.nope");
    unlink(tmp);
    rmdir(dir);
    json_decref(root);
}

static void test_oracle_section_is_the_oracle_defaults(void **state) {
    (void)state;
    json_t *root = load_ok(NULL, NULL, 0, NULL);
    json_t *o = duel_config_section(root, "oracle");
    duel_error err = {0};
    oracle_lexical_config lw, lg;
    oracle_lexical_config_default(&lw);
    oracle_lexical_config_default(&lg);
    if (oracle_lexical_config_from_json(json_object_get(o, "lexical"), "oracle.lexical", &lg,
                                        &err))
        fail_msg("%s", err.message);
    assert_memory_equal(&lw, &lg, sizeof lw);
    oracle_preference_config pw, pg;
    oracle_preference_config_default(&pw);
    oracle_preference_config_default(&pg);
    if (oracle_preference_config_from_json(json_object_get(o, "preference"), "oracle.preference",
                                           &pg, &err))
        fail_msg("%s", err.message);
    assert_int_equal(pw.stochastic, pg.stochastic);
    assert_true(pw.temperature == pg.temperature);
    assert_true(pw.tie_margin == pg.tie_margin && pw.flip_probability == pg.flip_probability);
    assert_int_equal(pw.both_bad, pg.both_bad);
    assert_true(pw.both_bad_below == pg.both_bad_below);
    oracle_judge_config jw, jg;
    oracle_judge_config_default(&jw);
    oracle_judge_config_default(&jg);
    if (oracle_judge_config_from_json(json_object_get(o, "judge"), "oracle.judge", &jg, &err))
        fail_msg("%s", err.message);
    assert_memory_equal(&jw, &jg, sizeof jw);
    oracle_kind kind;
    assert_int_equal(oracle_kind_parse(str_at(root, "oracle", "kind"), &kind, &err), 0);
    assert_int_equal(kind, ORACLE_LEXICAL);
    json_decref(root);
}

static void test_trainer_and_erm_values_are_the_code_defaults(void **state) {
    (void)state;
    json_t *root = load_ok(NULL, NULL, 0, NULL);
    online_trainer_options t;
    online_trainer_default_options(&t);
    stream_consumer_options c;
    stream_consumer_default_options(&c);
    assert_int_equal(int_at(root, "erm", "num_heads"), t.erm_heads);
    assert_int_equal(int_at(root, "erm", "num_heads"), ERM_DEFAULT_NUM_HEADS);
    assert_int_equal(int_at(root, "erm", "hidden"), t.erm_hidden);
    assert_true(num_at(root, "erm", "lr") == t.erm.lr);
    assert_true(num_at(root, "erm", "weight_decay") == t.erm.weight_decay);
    assert_true(num_at(root, "erm", "lambda") == t.erm.lambda);
    assert_int_equal(int_at(root, "erm", "min_pairs"), t.erm.min_pairs);
    assert_int_equal(int_at(root, "erm", "buffer_size"), t.erm.buffer_capacity);
    assert_int_equal(int_at(root, "erm", "minibatch"), t.erm.minibatch);
    assert_int_equal(int_at(root, "erm", "adam_steps"), t.erm.adam_steps);
    dap_loss_kind kind;
    duel_error err = {0};
    assert_int_equal(dap_loss_kind_parse(str_at(root, "trainer", "loss"), &kind, &err), 0);
    assert_int_equal(kind, t.loss.kind);
    assert_true(num_at(root, "trainer", "beta") == t.loss.beta);
    assert_int_equal(int_at(root, "trainer", "batch_size"), t.batch_size);
    assert_int_equal(int_at(root, "trainer", "max_batch_size"), t.max_batch_size);
    assert_true(num_at(root, "trainer", "lr") == t.lr);
    assert_true(num_at(root, "trainer", "min_lr") == t.min_lr);
    assert_int_equal(int_at(root, "trainer", "warmup_steps"), t.warmup_steps);
    assert_int_equal(int_at(root, "trainer", "total_steps"), t.total_steps);
    assert_true(num_at(root, "trainer", "clip_norm") == t.clip_norm);
    assert_true(num_at(root, "trainer", "weight_decay") == t.adamw.weight_decay);
    assert_int_equal(int_at(root, "trainer", "publish_every"), t.publish_every);
    assert_int_equal(int_at(root, "trainer", "recent_vote_ids"), t.recent_vote_ids);
    assert_int_equal(int_at(root, "trainer", "seed"), (long long)t.seed);
    assert_int_equal(int_at(root, "trainer", "burn_in"), t.burn_in);
    assert_true(num_at(root, "trainer", "gamma") == t.gamma);
    assert_int_equal(int_at(root, "trainer", "synthetic_store"), t.synthetic_store);
    assert_int_equal(int_at(root, "trainer", "checkpoint_every"), t.checkpoint_every);
    assert_true(num_at(root, "trainer", "publish_every_seconds") == t.publish_every_seconds);
    {
        json_t *tr = json_object_get(root, "trainer");
        assert_true(json_is_boolean(json_object_get(tr, "publish_when_idle")));
        assert_true(json_is_true(json_object_get(tr, "publish_when_idle")) == t.publish_when_idle);
        assert_true(json_is_boolean(json_object_get(tr, "vote_ref_logprobs")));
        assert_true(json_is_true(json_object_get(tr, "vote_ref_logprobs")) == t.vote_ref_logprobs);
    }
    assert_int_equal(int_at(root, "trainer", "max_deliveries"), c.max_deliveries);
    assert_string_equal(str_at(root, "trainer", "consumer"), c.consumer);
    assert_string_equal(str_at(root, "redis", "host"), c.host);
    assert_int_equal(int_at(root, "redis", "port"), c.port);
    weight_transport_options w;
    weight_transport_default_options(&w);
    weight_transport_kind kind_w;
    assert_int_equal(weight_transport_kind_parse(str_at(root, "trainer", "weight_transport"), &kind_w,
                                                 &err), 0);
    assert_int_equal(kind_w, w.kind);
    assert_int_equal(int_at(root, "trainer", "transport_device"), w.device);
    assert_int_equal(int_at(root, "trainer", "nccl_world_size"), w.world_size);
    json_decref(root);
}

static void test_engine_and_duel_values_are_the_code_defaults(void **state) {
    (void)state;
    json_t *root = load_ok(NULL, NULL, 0, NULL);
    assert_int_equal(int_at(root, "engine", "kv_memory_bytes"), (long long)ENGINE_DEFAULT_KV_BYTES);
    assert_int_equal(int_at(root, "engine", "block_size"), KV_BLOCK_SIZE);
    assert_int_equal(int_at(root, "engine", "max_batch_tokens"), SCHED_DEFAULT_BATCH_TOKENS);
    assert_int_equal(int_at(root, "engine", "max_running"), SCHED_DEFAULT_MAX_RUNNING);
    assert_int_equal(int_at(root, "engine", "max_candidates"), 64); /* engine.h: "0: 64" */
    assert_int_equal(int_at(root, "engine", "max_pilaf_jobs"), ENGINE_DEFAULT_MAX_PILAF_JOBS);
    duel_strategy s;
    duel_error err = {0};
    /* model_load's and the engine's own defaults: f32 weights, f32 KV */
    weight_format wf;
    int kv_bytes = 0;
    assert_int_equal(weight_format_parse(str_at(root, "engine", "weights"), &wf, &err), 0);
    assert_int_equal(wf, WEIGHT_F32);
    assert_int_equal(kv_dtype_parse(str_at(root, "engine", "kv_dtype"), &kv_bytes, &err), 0);
    assert_int_equal(kv_bytes, 4);
    assert_int_equal(duel_strategy_parse(str_at(root, "duel", "strategy"), &s, &err), 0);
    assert_int_equal(s, DUEL_STRATEGY_DEFAULT);
    json_t *strategies = at(root, "sim", "strategies");
    size_t i;
    json_t *e;
    json_array_foreach(strategies, i, e) {
        if (duel_strategy_parse(json_string_value(e), &s, &err)) fail_msg("%s", err.message);
    }
    /* Every knob's default is in the config and passes the knob (tests/common/test_knobs.c). */
    duel_knob_values defaults;
    if (duel_knobs_defaults(root, NULL, &defaults, &err)) fail_msg("%s", err.message);
    json_decref(root);
}

/* Runs `duel train --config path --model <missing> --data-dir dir`; returns its stderr (static). */
static const char *run_train(const char *config, const char *dir) {
    static char out[8192];
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "'%s' train --config '%s' --model '%s/no-such-model' --data-dir '%s/data' "
             "--redis 127.0.0.1:1 --quiet 2>&1",
             DUEL_EXE, config, dir, dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    assert_true(WIFEXITED(status));
    assert_int_not_equal(WEXITSTATUS(status), 0); /* the model does not exist */
    return out;
}

static void test_trainer_parser_accepts_the_sections(void **state) {
    (void)state;
    char dir[4096], path[4200];
    test_make_temp_dir("config-train", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/c.json", dir);
    json_t *root = load_ok(NULL, NULL, 0, NULL);
    json_t *tr = duel_config_section(root, "trainer");
    assert_int_equal(json_dump_file(root, path, JSON_INDENT(1)), 0);
    const char *first = run_train(path, dir);
    /* Past the config: the only error is the missing model. */
    if (strstr(first, "unknown key") || !strstr(first, "no-such-model"))
        fail_msg("duel train rejects default.json: %s", first);
    /* The check can fail: a key the trainer does not know is named. */
    json_object_set_new(tr, "no_such_key", json_integer(1));
    assert_int_equal(json_dump_file(root, path, JSON_INDENT(1)), 0);
    const char *out = run_train(path, dir);
    assert_non_null(strstr(out, "trainer.no_such_key"));
    json_decref(root);
    unlink(path);
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- overrides ----------------------------------------------------------------------------- */

static void test_file_env_and_set_overrides(void **state) {
    (void)state;
    char dir[4096], path[4200];
    test_make_temp_dir("config-ovr", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/c.json", dir);
    const char *text = "{\"trainer\": {\"lr\": 1, \"batch_size\": 16},\n"
                       " \"redis\": {\"host\": \"file-host\"},\n"
                       " \"oracle\": {\"judge\": {\"model\": \"m\"}}}";
    test_write_file(path, text, strlen(text));
    const char *env[] = {"PATH=/bin", "DUEL_REDIS=[::1]:7000", "DUEL_BIND=0.0.0.0:0",
                         "DUEL_JUDGE_URL=http://judge:9/v1", "DUEL_TOKENS=admin:ops:s3cret",
                         "DUEL_JUDGE_API_KEY=", "DUEL_UNRELATED=x", NULL};
    const char *sets[] = {"trainer.batch_size=32", "model.path=some dir/x", "model.id=\"q\"",
                          "oracle.preference={\"stochastic\": true}", "gateway.allowed_origins=[\"http://a\"]",
                          "redis.host=set-host", "trainer.lr=3e-6", "erm.lr=1"};
    json_t *root = NULL;
    duel_config_secrets secrets;
    duel_error err = {0};
    if (duel_config_load(path, sets, sizeof sets / sizeof *sets, env, &root, &secrets, &err))
        fail_msg("%s", err.message);
    assert_int_equal(int_at(root, "trainer", "batch_size"), 32); /* --set beats the file */
    assert_true(json_is_real(at(root, "trainer", "lr")));
    assert_true(num_at(root, "trainer", "lr") == 3e-6);
    assert_true(json_is_real(at(root, "erm", "lr"))); /* an integer for a real key: a real */
    assert_true(num_at(root, "erm", "lr") == 1.0);
    assert_string_equal(str_at(root, "model", "path"), "some dir/x");
    assert_string_equal(str_at(root, "model", "id"), "q");
    assert_string_equal(str_at(root, "redis", "host"), "set-host"); /* --set beats env and file */
    assert_int_equal(int_at(root, "redis", "port"), 7000);           /* env beats the default */
    assert_string_equal(str_at(root, "gateway", "bind"), "0.0.0.0");
    assert_int_equal(int_at(root, "gateway", "port"), 0);
    json_t *o = duel_config_section(root, "oracle");
    json_t *judge = json_object_get(o, "judge");
    assert_string_equal(json_string_value(json_object_get(judge, "url")), "http://judge:9/v1");
    assert_string_equal(json_string_value(json_object_get(judge, "model")), "m");
    json_t *pref = json_object_get(o, "preference");
    assert_true(json_is_true(json_object_get(pref, "stochastic")));
    assert_true(json_number_value(json_object_get(pref, "temperature")) == 1.0); /* kept */
    assert_string_equal(json_string_value(json_array_get(at(root, "gateway", "allowed_origins"), 0)),
                        "http://a");
    assert_string_equal(secrets.tokens, "admin:ops:s3cret");
    assert_string_equal(secrets.judge_api_key, "");
    /* Secrets never enter the document. */
    char *dump = json_dumps(root, 0);
    assert_null(strstr(dump, "s3cret"));
    free(dump);
    json_decref(root);
    unlink(path);
    rmdir(dir);
}

/* ---- bad paths ----------------------------------------------------------------------------- */

static void write_temp(const char *tag, const char *text, size_t len, char *dir, char *path) {
    test_make_temp_dir(tag, dir, 4096);
    snprintf(path, 4200, "%s/c.json", dir);
    test_write_file(path, text, len);
}

static void remove_temp(const char *dir, const char *path) {
    unlink(path);
    rmdir(dir);
}

static void test_unknown_sections_and_keys(void **state) {
    (void)state;
    char dir[4096], path[4200];
    const char *t1 = "{\"model\": {}, \"trainers\": {\"lr\": 1}}";
    write_temp("config-bad", t1, strlen(t1), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, "unknown section \"trainers\"", path);
    remove_temp(dir, path);
    const char *t2 = "{\"oracle\": {\"judge\": {\"url\": \"http://x/\", \"api_key\": \"k\"}}}";
    write_temp("config-bad", t2, strlen(t2), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, "unknown key oracle.judge.api_key", path);
    remove_temp(dir, path);
    const char *t3 = "[1, 2]";
    write_temp("config-bad", t3, strlen(t3), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, "must be a JSON object", NULL);
    remove_temp(dir, path);
    load_fails(NULL, (const char *const[]){"trainer.bogus=1"}, 1, NULL, DUEL_EFORMAT,
               "unknown key trainer.bogus", "--set trainer.bogus=1");
    load_fails(NULL, (const char *const[]){"nosuch.lr=1"}, 1, NULL, DUEL_EFORMAT,
               "unknown section \"nosuch\"", NULL);
    load_fails(NULL, (const char *const[]){"oracle.judge.nope=1"}, 1, NULL, DUEL_EFORMAT,
               "unknown key oracle.judge.nope", NULL);
    load_fails(NULL, (const char *const[]){"trainer.lr.x=1"}, 1, NULL, DUEL_EINVAL,
               "trainer.lr is a number", NULL);
    load_fails(NULL, (const char *const[]){"trainer"}, 1, NULL, DUEL_EINVAL,
               "expected section.key=value", NULL);
    load_fails(NULL, (const char *const[]){"trainer..lr=1"}, 1, NULL, DUEL_EINVAL, "empty part",
               NULL);
    load_fails(NULL, (const char *const[]){"=1"}, 1, NULL, DUEL_EINVAL, "expected", NULL);
}

static void test_wrong_types_name_the_path(void **state) {
    (void)state;
    char dir[4096], path[4200];
    const char *t1 = "{\"trainer\": {\"batch_size\": \"8\"}}";
    write_temp("config-type", t1, strlen(t1), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, "trainer.batch_size must be an integer",
               "not a string");
    remove_temp(dir, path);
    const char *t2 = "{\"trainer\": {\"batch_size\": 8.5}}";
    write_temp("config-type", t2, strlen(t2), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, "trainer.batch_size must be an integer", NULL);
    remove_temp(dir, path);
    const char *t3 = "{\"erm\": 5}";
    write_temp("config-type", t3, strlen(t3), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, "erm must be an object", NULL);
    remove_temp(dir, path);
    load_fails(NULL, (const char *const[]){"trainer.batch_size=abc"}, 1, NULL, DUEL_EINVAL,
               "trainer.batch_size must be an integer", "abc");
    load_fails(NULL, (const char *const[]){"sim.strategies=[\"ee_ts\", 1]"}, 1, NULL,
               DUEL_EFORMAT, "sim.strategies[1] must be a string", NULL);
    load_fails(NULL, (const char *const[]){"gateway.allowed_origins=\"x\""}, 1, NULL, DUEL_EFORMAT,
               "gateway.allowed_origins must be an array", NULL);
    load_fails(NULL, (const char *const[]){"oracle.preference.stochastic=yes"}, 1, NULL,
               DUEL_EINVAL, "oracle.preference.stochastic must be true or false", NULL);
    load_fails(NULL, (const char *const[]){"model.id=\"unterminated"}, 1, NULL, DUEL_EINVAL,
               "model.id", NULL);
    load_fails(NULL, (const char *const[]){"oracle.judge=3"}, 1, NULL, DUEL_EFORMAT,
               "oracle.judge must be an object", NULL);
    load_fails(NULL, (const char *const[]){"oracle.judge={\"x\":1}"}, 1, NULL, DUEL_EFORMAT,
               "unknown key oracle.judge.x", NULL);
}

static void test_malformed_and_oversized_files(void **state) {
    (void)state;
    char dir[4096], path[4200];
    const char *t1 = "{\"trainer\": {\n  \"lr\": 1e-5,\n  \"beta\": ,\n}}";
    write_temp("config-json", t1, strlen(t1), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, "line 3", "column");
    remove_temp(dir, path);
    const char *t2 = "{\"trainer\": {\"lr\": 1, \"lr\": 2}}";
    write_temp("config-json", t2, strlen(t2), dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_EFORMAT, path, "duplicate");
    remove_temp(dir, path);
    size_t big = DUEL_CONFIG_MAX_BYTES + 2;
    char *text = malloc(big);
    assert_non_null(text);
    memset(text, ' ', big);
    text[0] = '{';
    text[big - 1] = '}';
    write_temp("config-big", text, big, dir, path);
    load_fails(path, NULL, 0, NULL, DUEL_ELIMIT, path, NULL);
    remove_temp(dir, path);
    free(text);
    load_fails("/nonexistent/duel.json", NULL, 0, NULL, DUEL_EIO, "/nonexistent/duel.json", NULL);
}

static void test_bad_environment_values(void **state) {
    (void)state;
    load_fails(NULL, NULL, 0, (const char *const[]){"DUEL_REDIS=localhost", NULL}, DUEL_EINVAL,
               "DUEL_REDIS", "HOST:PORT");
    load_fails(NULL, NULL, 0, (const char *const[]){"DUEL_REDIS=localhost:0", NULL}, DUEL_EINVAL,
               "DUEL_REDIS", "port");
    load_fails(NULL, NULL, 0, (const char *const[]){"DUEL_REDIS=localhost:70000", NULL},
               DUEL_EINVAL, "DUEL_REDIS", "port");
    load_fails(NULL, NULL, 0, (const char *const[]){"DUEL_REDIS=:6379", NULL}, DUEL_EINVAL,
               "DUEL_REDIS", NULL);
    load_fails(NULL, NULL, 0, (const char *const[]){"DUEL_BIND=0.0.0.0:x", NULL}, DUEL_EINVAL,
               "DUEL_BIND", NULL);
    load_fails(NULL, NULL, 0, (const char *const[]){"DUEL_JUDGE_URL=https://x/", NULL},
               DUEL_EINVAL, "DUEL_JUDGE_URL", "http://");
    load_fails(NULL, NULL, 0, (const char *const[]){"DUEL_TOKENS=a\nb", NULL}, DUEL_EINVAL,
               "DUEL_TOKENS", "control");
    char long_token[400];
    snprintf(long_token, sizeof long_token, "DUEL_JUDGE_API_KEY=%0300d", 7);
    load_fails(NULL, NULL, 0, (const char *const[]){long_token, NULL}, DUEL_ELIMIT,
               "DUEL_JUDGE_API_KEY", NULL);
    /* A bad variable is reported even when the caller does not want the secrets, and an error
     * leaves no half-filled secrets behind. */
    duel_config_secrets secrets;
    memset(&secrets, 'x', sizeof secrets);
    json_t *root = NULL;
    duel_error err = {0};
    assert_int_equal(duel_config_load(NULL, NULL, 0,
                                      (const char *const[]){"DUEL_TOKENS=ok",
                                                            "DUEL_REDIS=bad", NULL},
                                      &root, &secrets, &err),
                     DUEL_EINVAL);
    assert_string_equal(secrets.tokens, "");
}

static void test_take_sets_from_argv(void **state) {
    (void)state;
    char a1[] = "--set", a2[] = "trainer.lr=1e-6", a3[] = "--model", a4[] = "m",
         a5[] = "--set=redis.port=7000", a6[] = "--", a7[] = "--set";
    char *argv[] = {a1, a2, a3, a4, a5, a6, a7, NULL}; /* a subcommand's options, as main passes them */
    int argc = 7;
    const char *sets[4];
    size_t n = 0;
    duel_error err = {0};
    assert_int_equal(duel_config_take_sets(&argc, argv, sets, 4, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(sets[0], "trainer.lr=1e-6");
    assert_string_equal(sets[1], "redis.port=7000");
    assert_int_equal(argc, 4); /* --model m -- --set */
    assert_string_equal(argv[0], "--model");
    assert_string_equal(argv[1], "m");
    assert_string_equal(argv[2], "--");
    assert_string_equal(argv[3], "--set");
    assert_null(argv[4]);
    char b1[] = "--set";
    char *bad[] = {b1, NULL};
    argc = 1;
    assert_int_equal(duel_config_take_sets(&argc, bad, sets, 4, &n, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "--set needs"));
    char c1[] = "--set=a.b=1", c2[] = "--set=a.b=2";
    char *many[] = {c1, c2, NULL};
    argc = 2;
    assert_int_equal(duel_config_take_sets(&argc, many, sets, 1, &n, &err), DUEL_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_equals_embedded_and_has_every_section),
        cmocka_unit_test(test_gateway_section_is_the_gateway_defaults),
        cmocka_unit_test(test_oracle_section_is_the_oracle_defaults),
        cmocka_unit_test(test_trainer_and_erm_values_are_the_code_defaults),
        cmocka_unit_test(test_engine_and_duel_values_are_the_code_defaults),
        cmocka_unit_test(test_trainer_parser_accepts_the_sections),
        cmocka_unit_test(test_file_env_and_set_overrides),
        cmocka_unit_test(test_unknown_sections_and_keys),
        cmocka_unit_test(test_wrong_types_name_the_path),
        cmocka_unit_test(test_malformed_and_oversized_files),
        cmocka_unit_test(test_bad_environment_values),
        cmocka_unit_test(test_take_sets_from_argv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
