/* test_rm.c: the reward-model oracle (oracle/rm.c) on small random Llama and GPT-NeoX sequence
 * classifiers with two labels, against the float64 PyTorch reference (tests/tools/
 * torch_reference.py): the label-0 score at the last token of every prefix of the reference
 * sequence. Also text scoring through the chat template and tokenizer, and refusals (a causal
 * LM, bad token counts and ids, no tokenizer). Models come from the agent_reward_models fixture
 * (tests/oracle/make_reward_models.py) in $DUEL_BUILD_DIR/test-models-oracle. */
#include "test_helpers.h"

#include "chat_template.h"
#include "oracle.h"
#include "safetensors.h"
#include "tokenizer.h"

static void model_dir(const char *name, char *out, size_t cap) {
    const char *build = test_env("DUEL_BUILD_DIR", NULL);
    if (!build) fail_msg("DUEL_BUILD_DIR is not set (run through ctest)");
    snprintf(out, cap, "%s/test-models-oracle/%s", build, name);
}

static oracle_rm *load(const char *name) {
    char dir[1024];
    model_dir(name, dir, sizeof dir);
    oracle_rm *rm = NULL;
    duel_error err;
    int rc = oracle_rm_load(dir, &rm, &err);
    if (rc) fail_msg("%s (the agent_reward_models fixture writes it)", err.message);
    return rm;
}

static void check_against_reference(const char *name) {
    char dir[1024], path[1100];
    model_dir(name, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    safetensors_archive *st;
    duel_error err;
    if (safetensors_open_file(path, &st, &err)) fail_msg("%s", err.message);
    const safetensors_tensor *tt = safetensors_find(st, "tokens"), *lt = safetensors_find(st, "logits");
    assert_non_null(tt);
    assert_non_null(lt);
    int T = (int)tt->shape[0];
    assert_int_equal(lt->ndim, 2);
    assert_int_equal(lt->shape[0], T);
    assert_int_equal(lt->shape[1], 2);
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)T);
    double *logits = malloc(sizeof(double) * (size_t)T * 2);
    memcpy(tokens, tt->data, sizeof(int32_t) * (size_t)T);
    memcpy(logits, lt->data, sizeof(double) * (size_t)T * 2);
    safetensors_close(st);

    oracle_rm *rm = load(name);
    float *got = malloc(sizeof(float) * (size_t)T);
    double *label0 = malloc(sizeof(double) * (size_t)T), *label1 = malloc(sizeof(double) * (size_t)T);
    for (int k = 1; k <= T; k++) {
        double s;
        int rc = oracle_rm_score_tokens(rm, tokens, k, &s, &err);
        if (rc) fail_msg("%s", err.message);
        got[k - 1] = (float)s;
        label0[k - 1] = logits[(size_t)(k - 1) * 2];
        label1[k - 1] = logits[(size_t)(k - 1) * 2 + 1];
    }
    double rel = test_relative_error(got, label0, (size_t)T);
    fprintf(stderr, "%s: %d prefixes, relative error %.3g\n", name, T, rel);
    assert_true(rel < 1e-5);
    /* Label 1 is a different function: reading the wrong label would fail. */
    assert_true(test_relative_error(got, label1, (size_t)T) > 0.1);
    /* Scores vary along the sequence (not a constant). */
    double lo = label0[0], hi = label0[0];
    for (int k = 0; k < T; k++) {
        lo = label0[k] < lo ? label0[k] : lo;
        hi = label0[k] > hi ? label0[k] : hi;
    }
    assert_true(hi - lo > 1e-3);
    oracle_rm_free(rm);
    free(tokens);
    free(logits);
    free(got);
    free(label0);
    free(label1);
}

static void test_llama_reward_matches_torch(void **state) {
    (void)state;
    check_against_reference("oracle-llama-reward");
}

static void test_neox_reward_matches_torch(void **state) {
    (void)state;
    check_against_reference("oracle-neox-reward");
}

static void test_score_text(void **state) {
    (void)state;
    char dir[1024], path[1100];
    model_dir("oracle-llama-reward", dir, sizeof dir);
    oracle_rm *rm = load("oracle-llama-reward");
    duel_error err;
    double s1, s2, s3;
    assert_int_equal(oracle_rm_score_text(rm, "What is a duel?", "A contest between two people.",
                                          &s1, &err), 0);
    assert_int_equal(oracle_rm_score_text(rm, "What is a duel?", "The lazy dog.", &s2, &err), 0);
    assert_true(isfinite(s1) && isfinite(s2) && s1 != s2);
    /* The same as rendering and encoding by hand with the model's template (chatml here). */
    chat_template_kind kind;
    assert_int_equal(chat_template_detect(dir, &kind, &err), 0);
    assert_int_equal(kind, CHAT_TEMPLATE_CHATML);
    chat_message msgs[2] = {{"user", "What is a duel?"}, {"assistant", "A contest between two people."}};
    char *text;
    assert_int_equal(chat_template_render(kind, msgs, 2, false, &text, &err), 0);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    tokenizer *tok;
    assert_int_equal(tokenizer_load(path, &tok, &err), 0);
    int32_t *ids;
    size_t n;
    assert_int_equal(tokenizer_encode(tok, text, strlen(text), true, &ids, &n, &err), 0);
    assert_true(n > 5);
    assert_int_equal(oracle_rm_score_tokens(rm, ids, (int)n, &s3, &err), 0);
    assert_true(s3 == s1);
    free(ids);
    free(text);
    tokenizer_free(tok);
    /* Invalid UTF-8 is refused by the tokenizer with an error, not a score. */
    double s4 = 12345;
    assert_true(oracle_rm_score_text(rm, "q", "bad \xff", &s4, &err) < 0);
    assert_true(s4 == 12345);
    oracle_rm_free(rm);
}

static void test_bad_input(void **state) {
    (void)state;
    oracle_rm *rm = load("oracle-neox-reward");
    duel_error err;
    double s = 7;
    int32_t ids[3] = {1, 2, 3};
    assert_int_equal(oracle_rm_score_tokens(rm, ids, 0, &s, &err), DUEL_EINVAL);
    assert_int_equal(oracle_rm_score_tokens(rm, ids, 1 << 20, &s, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "tokens outside"));
    ids[1] = 512; /* vocab_size */
    assert_int_equal(oracle_rm_score_tokens(rm, ids, 3, &s, &err), DUEL_EINVAL);
    ids[1] = -1;
    assert_int_equal(oracle_rm_score_tokens(rm, ids, 3, &s, &err), DUEL_EINVAL);
    assert_true(s == 7);
    oracle_rm_free(rm);

    /* A causal LM is not a reward model. */
    char dir[1024];
    model_dir("causal-lm", dir, sizeof dir);
    oracle_rm *bad = (oracle_rm *)&s;
    assert_int_equal(oracle_rm_load(dir, &bad, &err), DUEL_EUNSUPPORTED);
    assert_null(bad);
    assert_non_null(strstr(err.message, "LlamaForCausalLM is not a sequence classifier"));
    assert_true(oracle_rm_load("/nonexistent/rm", &bad, &err) < 0);
    assert_null(bad);

    /* Without tokenizer.json: token scoring works, text scoring says why it cannot. */
    char tmp[512], src[1024], link[1100], target[1100];
    test_make_temp_dir("rm", tmp, sizeof tmp);
    model_dir("oracle-neox-reward", src, sizeof src);
    const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(link, sizeof link, "%s/%s", tmp, files[i]);
        snprintf(target, sizeof target, "%s/%s", src, files[i]);
        assert_int_equal(symlink(target, link), 0);
    }
    oracle_rm *nt;
    assert_int_equal(oracle_rm_load(tmp, &nt, &err), 0);
    int32_t ok[2] = {5, 6};
    assert_int_equal(oracle_rm_score_tokens(nt, ok, 2, &s, &err), 0);
    assert_int_equal(oracle_rm_score_text(nt, "q", "a", &s, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "no tokenizer.json"));
    oracle_rm_free(nt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_reward_matches_torch),
        cmocka_unit_test(test_neox_reward_matches_torch),
        cmocka_unit_test(test_score_text),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
