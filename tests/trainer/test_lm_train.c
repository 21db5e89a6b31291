/* test_lm_train.c: the pretrain/SFT loop (trainer/lm_trainer.c), its data readers
 * (trainer/lm_data.c) and checkpoints (trainer/checkpoint.c) on a tiny Llama: an interrupted and
 * resumed run ends bit-identical to an uninterrupted one; the loss falls; corrupt checkpoints
 * are errors naming the file and leave the model untouched; the .old fallback; malformed JSONL
 * lines are errors with line numbers or skipped and reported; the SFT loss mask; offline DPO
 * raises the implicit reward margin and the preferred answer's log-probability on held-out pairs. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bpe_train.h"
#include "checkpoint.h"
#include "dpo_trainer.h"
#include "lm_trainer.h"
#include "model_config.h"
#include "test_helpers.h"

static const char *const SPECIAL[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
static const char *TEXT =
    "cat (noun): feline mammal usually having thick soft fur.\n"
    "dog (noun): a member of the genus Canis that has been domesticated.\n"
    "run (verb): move fast by using one's feet.\n"
    "red (adj): having the color of blood.\n"
    "quickly (adv): with rapid movements.\n"
    "tree (noun): a tall perennial woody plant having a main trunk and branches.\n";

typedef struct fixture {
    char dir[512];
    char text_path[600], sft_path[600], tok_path[600];
    tokenizer *tok;
    char config_json[1024];
    model_config config;
} fixture;

static fixture fx;

static int setup(void **state) {
    (void)state;
    test_make_temp_dir("lm_train", fx.dir, sizeof fx.dir);
    snprintf(fx.text_path, sizeof fx.text_path, "%s/text.txt", fx.dir);
    snprintf(fx.sft_path, sizeof fx.sft_path, "%s/sft.jsonl", fx.dir);
    snprintf(fx.tok_path, sizeof fx.tok_path, "%s/tokenizer.json", fx.dir);
    char text[8192] = "";
    for (int i = 0; i < 6; i++) strcat(text, TEXT);
    test_write_file(fx.text_path, text, strlen(text));
    const char *sft =
        "{\"prompt\": \"What does cat mean?\", \"response\": \"feline mammal usually having thick soft fur\"}\n"
        "{\"prompt\": \"What does dog mean?\", \"response\": \"a member of the genus Canis\"}\n"
        "{\"prompt\": \"What does run mean?\", \"response\": \"move fast by using one's feet\"}\n"
        "{\"prompt\": \"What does red mean?\", \"response\": \"having the color of blood\"}\n"
        "{\"prompt\": \"What does tree mean?\", \"response\": \"a tall perennial woody plant\"}\n"
        "{\"prompt\": \"What does quickly mean?\", \"response\": \"with rapid movements\"}\n";
    test_write_file(fx.sft_path, sft, strlen(sft));
    bpe_trainer *t = NULL;
    assert_int_equal(bpe_trainer_create(&t, NULL), 0);
    assert_int_equal(bpe_trainer_add_text(t, text, strlen(text), "text", NULL), 0);
    bpe_train_options o = {256 + 60 + 3, 2, SPECIAL, 3};
    assert_int_equal(bpe_trainer_train(t, &o, NULL), 0);
    assert_int_equal(bpe_trainer_write_json(t, fx.tok_path, NULL), 0);
    int vocab = bpe_trainer_vocab_size(t);
    bpe_trainer_free(t);
    assert_int_equal(tokenizer_load(fx.tok_path, &fx.tok, NULL), 0);
    snprintf(fx.config_json, sizeof fx.config_json,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": %d, \"hidden_size\": 32,"
             " \"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
             " \"num_key_value_heads\": 2, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5,"
             " \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", \"tie_word_embeddings\": true}",
             vocab);
    duel_error err = {0};
    int rc = model_config_parse(fx.config_json, strlen(fx.config_json), "config", &fx.config, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tokenizer_free(fx.tok);
    return 0;
}

static train_model *fresh_model(void) {
    train_model *m = NULL;
    assert_int_equal(train_model_create(&fx.config, &m, NULL), 0);
    lm_model_init_random(m, 7, 0.05);
    return m;
}

static void options(lm_train_options *o, const char *checkpoint_dir) {
    lm_train_default_options(o);
    o->batch_size = 3;
    o->grad_accum = 2;
    o->total_steps = 8;
    o->warmup_steps = 2;
    o->lr = 3e-3;
    o->eval_every = 4;
    o->eval_batches = 1;
    o->checkpoint_every = 3;
    o->checkpoint_dir = checkpoint_dir;
    o->config_json = fx.config_json;
    o->seed = 99;
}

static void load_text(lm_dataset *d, int seq_len) {
    lm_data_options o = {fx.tok, CHAT_TEMPLATE_CHATML, seq_len, false, 0};
    duel_error err = {0};
    int rc = lm_data_load_text(fx.text_path, &o, d, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
}

static void test_resume_is_bit_exact(void **state) {
    (void)state;
    lm_dataset data;
    load_text(&data, 16);
    assert_true(data.num_examples >= 8);
    size_t n = 0;
    /* uninterrupted, no checkpoints */
    train_model *a = fresh_model();
    n = train_model_num_parameters(a);
    lm_train_options o;
    options(&o, NULL);
    lm_train_progress pa;
    assert_int_equal(lm_train_run(a, &data, &data, &o, NULL, NULL, &pa, NULL), 0);
    assert_int_equal(pa.step, 8);
    /* interrupted after step 5 (last checkpoint at 5), resumed in a fresh model */
    char ckpt[700];
    snprintf(ckpt, sizeof ckpt, "%s/resume-ckpt", fx.dir);
    train_model *b = fresh_model();
    options(&o, ckpt);
    o.stop_at_step = 5;
    lm_train_progress pb;
    assert_int_equal(lm_train_run(b, &data, &data, &o, NULL, NULL, &pb, NULL), 0);
    assert_int_equal(pb.step, 5);
    assert_true(memcmp(train_model_parameter_memory(a), train_model_parameter_memory(b),
                       n * sizeof(float)) != 0);
    train_model_free(b);
    train_model *c = fresh_model(); /* different weights until the checkpoint loads */
    lm_model_init_random(c, 12345, 0.05);
    o.stop_at_step = 0;
    lm_train_progress pc;
    duel_error err = {0};
    int rc = lm_train_run(c, &data, &data, &o, NULL, NULL, &pc, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(pc.step, 8);
    assert_memory_equal(train_model_parameter_memory(a), train_model_parameter_memory(c),
                        n * sizeof(float));
    assert_true(pc.tokens_seen == pa.tokens_seen);
    /* a resume with another seed is refused */
    o.seed = 100;
    o.total_steps = 9;
    assert_int_equal(lm_train_run(c, &data, &data, &o, NULL, NULL, &pc, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "seed"));
    train_model_free(a);
    train_model_free(c);
    lm_data_free(&data);
}

static void test_sft_loss_falls(void **state) {
    (void)state;
    lm_data_options d = {fx.tok, CHAT_TEMPLATE_CHATML, 64, false, 0};
    lm_dataset data;
    assert_int_equal(lm_data_load_sft(fx.sft_path, &d, &data, NULL), 0);
    assert_int_equal(data.num_examples, 6);
    assert_int_equal(data.truncated, 0);
    /* the loss starts at the first response token and the example ends with <|im_end|> */
    const lm_example *e = &data.examples[0];
    int32_t *prompt = NULL;
    size_t np = 0;
    assert_int_equal(lm_data_encode_prompt(&d, "What does cat mean?", &prompt, &np, NULL), 0);
    assert_int_equal(e->loss_start, (int)np - 1);
    assert_memory_equal(e->tokens, prompt, np * sizeof(int32_t));
    assert_int_equal(e->tokens[e->len - 1], tokenizer_token_id(fx.tok, "<|im_end|>"));
    free(prompt);
    train_model *m = fresh_model();
    double before = 0, after = 0;
    assert_int_equal(lm_train_evaluate(m, &data, 4, 0, &before, NULL), 0);
    lm_train_options o;
    options(&o, NULL);
    o.total_steps = 40;
    o.batch_size = 6;
    o.grad_accum = 1;
    o.lr = 1e-2;
    lm_train_progress p;
    assert_int_equal(lm_train_run(m, &data, NULL, &o, NULL, NULL, &p, NULL), 0);
    assert_int_equal(lm_train_evaluate(m, &data, 4, 0, &after, NULL), 0);
    assert_true(isfinite(after) && after < before * 0.5);
    train_model_free(m);
    lm_data_free(&data);
}

static void flip_byte(const char *path, long offset) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, offset, SEEK_SET);
    int c = fgetc(f);
    fseek(f, offset, SEEK_SET);
    fputc(c ^ 0x10, f);
    fclose(f);
}

static void test_corrupt_checkpoints(void **state) {
    (void)state;
    char ckpt[700], path[800], old[800];
    snprintf(ckpt, sizeof ckpt, "%s/corrupt-ckpt", fx.dir);
    train_model *m = fresh_model();
    size_t n = train_model_num_parameters(m);
    adamw_state opt;
    assert_int_equal(adamw_init(&opt, n, NULL), 0);
    for (size_t i = 0; i < n; i++) opt.m[i] = (float)i, opt.v[i] = 1.0f / (float)(i + 1);
    opt.step = 17;
    checkpoint_progress p = {17, 5, 1234.0}, q;
    duel_error err = {0};
    assert_int_equal(checkpoint_save(ckpt, m, &opt, &p, fx.config_json, NULL, &err), 0);
    /* a second save replaces the first and leaves no .tmp or .old behind */
    assert_int_equal(checkpoint_save(ckpt, m, &opt, &p, fx.config_json, NULL, &err), 0);
    snprintf(path, sizeof path, "%s.tmp", ckpt);
    assert_int_not_equal(access(path, F_OK), 0);
    snprintf(old, sizeof old, "%s.old", ckpt);
    assert_int_not_equal(access(old, F_OK), 0);

    train_model *other = fresh_model();
    lm_model_init_random(other, 555, 0.05);
    adamw_state opt2;
    assert_int_equal(adamw_init(&opt2, n, NULL), 0);
    assert_int_equal(checkpoint_load(ckpt, other, &opt2, &q, &err), 0);
    assert_memory_equal(train_model_parameter_memory(m), train_model_parameter_memory(other),
                        n * sizeof(float));
    assert_memory_equal(opt.m, opt2.m, n * sizeof(float));
    assert_memory_equal(opt.v, opt2.v, n * sizeof(float));
    assert_true(opt2.step == 17 && q.step == 17 && q.seed == 5 && q.tokens_seen == 1234.0);

    /* one flipped bit in the weights: a hash error naming the file, the model untouched */
    lm_model_init_random(other, 556, 0.05);
    float *before = malloc(n * sizeof(float));
    memcpy(before, train_model_parameter_memory(other), n * sizeof(float));
    snprintf(path, sizeof path, "%s/model.safetensors", ckpt);
    flip_byte(path, 200);
    assert_int_equal(checkpoint_load(ckpt, other, &opt2, &q, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "model.safetensors"));
    assert_non_null(strstr(err.message, "hash"));
    assert_memory_equal(before, train_model_parameter_memory(other), n * sizeof(float));
    flip_byte(path, 200);
    assert_int_equal(checkpoint_load(ckpt, other, &opt2, &q, &err), 0);
    /* truncated optimizer state */
    snprintf(path, sizeof path, "%s/optimizer.safetensors", ckpt);
    assert_int_equal(truncate(path, 100), 0);
    assert_int_equal(checkpoint_load(ckpt, other, &opt2, &q, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "optimizer.safetensors"));
    /* a fresh save repairs it; then a broken state.json */
    assert_int_equal(checkpoint_save(ckpt, m, &opt, &p, fx.config_json, NULL, &err), 0);
    snprintf(path, sizeof path, "%s/state.json", ckpt);
    test_write_file(path, "{\"format\": 1, \"step\":", 20);
    assert_int_equal(checkpoint_load(ckpt, other, &opt2, &q, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "state.json"));
    /* a model of another shape is refused */
    assert_int_equal(checkpoint_save(ckpt, m, &opt, &p, fx.config_json, NULL, &err), 0);
    adamw_state small;
    assert_int_equal(adamw_init(&small, n - 1, NULL), 0);
    assert_int_equal(checkpoint_load(ckpt, other, &small, &q, &err), DUEL_EFORMAT);
    adamw_free(&small);
    /* crash between the two renames: only <dir>.old exists, and it loads */
    assert_int_equal(rename(ckpt, old), 0);
    assert_true(checkpoint_exists(ckpt));
    assert_int_equal(checkpoint_load(ckpt, other, &opt2, &q, &err), 0);
    assert_int_equal(checkpoint_save(ckpt, m, &opt, &p, fx.config_json, NULL, &err), 0);
    assert_int_not_equal(access(old, F_OK), 0);
    /* nothing there */
    snprintf(path, sizeof path, "%s/none", fx.dir);
    assert_false(checkpoint_exists(path));
    assert_int_equal(checkpoint_load(path, other, &opt2, &q, &err), DUEL_ENOTFOUND);
    free(before);
    adamw_free(&opt);
    adamw_free(&opt2);
    train_model_free(m);
    train_model_free(other);
}

/* With the qa template an SFT example is exactly the conversation the template renders: the
 * answer after "Answer:" starts with a space and ends with <|endoftext|>, so the first trained
 * token is the one the model generates after the prompt. */
static void test_sft_qa_matches_template(void **state) {
    (void)state;
    char path[700];
    snprintf(path, sizeof path, "%s/qa.jsonl", fx.dir);
    const char *text = "{\"prompt\": \"What does cat mean?\", \"response\": \"a small feline\"}\n";
    test_write_file(path, text, strlen(text));
    lm_data_options o = {fx.tok, CHAT_TEMPLATE_QA, 64, false, 0};
    lm_dataset d;
    assert_int_equal(lm_data_load_sft(path, &o, &d, NULL), 0);
    assert_int_equal(d.num_examples, 1);
    const chat_message turn[] = {{"user", "What does cat mean?"}, {"assistant", "a small feline"}};
    int32_t *want = NULL, *prompt = NULL;
    size_t n = 0, np = 0;
    assert_int_equal(chat_template_encode(CHAT_TEMPLATE_QA, fx.tok, turn, 2, false, &want, &n, NULL), 0);
    assert_int_equal(chat_template_encode(CHAT_TEMPLATE_QA, fx.tok, turn, 1, true, &prompt, &np, NULL), 0);
    assert_int_equal(d.examples[0].len, (int)n);
    assert_memory_equal(d.examples[0].tokens, want, n * sizeof(int32_t));
    assert_int_equal(d.examples[0].loss_start, (int)np - 1);
    assert_int_equal(want[n - 1], tokenizer_token_id(fx.tok, "<|endoftext|>"));
    free(want);
    free(prompt);
    lm_data_free(&d);
}

static void test_bad_jsonl_lines(void **state) {
    (void)state;
    char path[700];
    snprintf(path, sizeof path, "%s/bad.jsonl", fx.dir);
    const char *text =
        "{\"prompt\": \"What does cat mean?\", \"response\": \"a feline\"}\n"
        "\n"
        "{\"prompt\": \"What does dog mean?\", \"response\": \n"
        "{\"prompt\": \"What does run mean?\", \"response\": \"move fast\"}\n"
        "{\"prompt\": \"What does red mean?\"}\n"
        "{\"prompt\": \"bad \xff utf8\", \"response\": \"x\"}\n"
        "[1, 2]\n"
        "{\"prompt\": \"What does tree mean?\", \"response\": 5}\n"
        "{\"prompt\": \"What does tree mean?\", \"response\": \"a plant\"}\n";
    test_write_file(path, text, strlen(text));
    lm_data_options o = {fx.tok, CHAT_TEMPLATE_CHATML, 48, false, 0};
    lm_dataset d;
    duel_error err = {0};
    assert_int_equal(lm_data_load_sft(path, &o, &d, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "bad.jsonl:3:"));
    assert_non_null(strstr(err.message, "malformed JSON"));
    o.skip_bad_lines = true;
    assert_int_equal(lm_data_load_sft(path, &o, &d, &err), 0);
    assert_int_equal(d.num_examples, 3);
    assert_int_equal(d.bad_lines, 5);
    long long expect[5] = {3, 5, 6, 7, 8};
    for (int i = 0; i < 5; i++) assert_int_equal(d.first_bad_lines[i], expect[i]);
    lm_data_free(&d);
    /* each kind of bad line, alone, names its line and problem */
    o.skip_bad_lines = false;
    const char *cases[][2] = {
        {"{\"prompt\": \"p\", \"response\": \"r\"}\n{\"prompt\": \"p\"}\n", ":2: \"response\" is missing"},
        {"{\"prompt\": \"p\", \"response\": \"\"}\n", ":1: \"response\" is empty"},
        {"{\"prompt\": \"p\", \"response\": \"r\"}\n\n\n\xc3(\n", ":4: invalid UTF-8 at column 1"},
        {"{\"prompt\": \"p\", \"response\": \"r\", \"response\": \"s\"}\n", ":1: malformed JSON"},
        {"", "no usable lines"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_write_file(path, cases[i][0], strlen(cases[i][0]));
        assert_int_equal(lm_data_load_sft(path, &o, &d, &err), DUEL_EFORMAT);
        if (strstr(err.message, cases[i][1]) == NULL) fprintf(stderr, "case %zu: %s\n", i, err.message);
        assert_non_null(strstr(err.message, cases[i][1]));
    }
    /* preference pairs need chosen and rejected */
    const char *pairs = "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n"
                        "{\"prompt\": \"p\", \"chosen\": \"a\"}\n";
    test_write_file(path, pairs, strlen(pairs));
    assert_int_equal(lm_data_load_pairs(path, &o, &d, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, ":2: \"rejected\" is missing"));
}

static void write_pairs(const char *path, const char *const *subjects, int n) {
    char text[8192] = "";
    for (int i = 0; i < n; i++) {
        char line[512];
        snprintf(line, sizeof line,
                 "{\"prompt\": \"Tell me about %s.\", \"chosen\": \"a good answer about %s\", "
                 "\"rejected\": \"a bad answer about %s\"}\n",
                 subjects[i], subjects[i], subjects[i]);
        strcat(text, line);
    }
    test_write_file(path, text, strlen(text));
}

static void test_dpo_raises_margin(void **state) {
    (void)state;
    static const char *const train_subjects[] = {"cat", "dog", "run", "red", "tree", "fur",
                                                 "blood", "plant", "feet", "genus", "trunk",
                                                 "soft"};
    static const char *const held_out[] = {"quickly", "mammal", "branches", "color"};
    char train_path[700], valid_path[700];
    snprintf(train_path, sizeof train_path, "%s/pairs.jsonl", fx.dir);
    snprintf(valid_path, sizeof valid_path, "%s/pairs_valid.jsonl", fx.dir);
    write_pairs(train_path, train_subjects, 12);
    write_pairs(valid_path, held_out, 4);
    lm_data_options d = {fx.tok, CHAT_TEMPLATE_CHATML, 64, false, 0};
    lm_dataset train, valid;
    assert_int_equal(lm_data_load_pairs(train_path, &d, &train, NULL), 0);
    assert_int_equal(lm_data_load_pairs(valid_path, &d, &valid, NULL), 0);
    assert_int_equal(train.num_pairs, 12);
    train_model *policy = fresh_model();
    dpo_logprobs ref, valid_ref;
    assert_int_equal(dpo_logprobs_compute(policy, &train, 5, &ref, NULL), 0);
    assert_int_equal(dpo_logprobs_compute(policy, &valid, 5, &valid_ref, NULL), 0);
    dpo_train_options o;
    dpo_train_default_options(DAP_LOSS_DPO, &o);
    dap_loss_options loss = o.loss;
    dpo_eval before, after;
    assert_int_equal(dpo_evaluate(policy, &valid, &valid_ref, &loss, 5, &before, NULL), 0);
    assert_true(fabs(before.reward_margin) < 1e-9); /* the policy is the reference */
    o.pairs_per_batch = 4;
    o.total_steps = 30;
    o.warmup_steps = 3;
    o.lr = 3e-3;
    o.min_lr = 3e-4;
    o.seed = 5;
    dpo_progress p;
    duel_error err = {0};
    int rc = dpo_train_run(policy, &train, &ref, &valid, &valid_ref, &o, NULL, NULL, &p, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(dpo_evaluate(policy, &valid, &valid_ref, &loss, 5, &after, NULL), 0);
    assert_true(after.reward_margin > 0.5);
    assert_true(after.accuracy == 1.0);
    assert_true(after.chosen_logprob > before.chosen_logprob);
    assert_true(after.loss < before.loss);
    /* IPO and SLiC train too */
    dap_loss_kind kinds[2] = {DAP_LOSS_IPO, DAP_LOSS_SLIC};
    for (int k = 0; k < 2; k++) {
        train_model *m = fresh_model();
        dpo_train_default_options(kinds[k], &o);
        o.pairs_per_batch = 4;
        o.total_steps = 20;
        o.warmup_steps = 2;
        o.lr = 3e-3;
        assert_int_equal(dpo_train_run(m, &train, &ref, NULL, NULL, &o, NULL, NULL, &p, NULL), 0);
        assert_int_equal(dpo_evaluate(m, &valid, &valid_ref, &o.loss, 5, &after, NULL), 0);
        assert_true(after.reward_margin > 0);
        train_model_free(m);
    }
    dpo_logprobs_free(&ref);
    dpo_logprobs_free(&valid_ref);
    train_model_free(policy);
    lm_data_free(&train);
    lm_data_free(&valid);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_is_bit_exact),
        cmocka_unit_test(test_sft_loss_falls),
        cmocka_unit_test(test_sft_qa_matches_template),
        cmocka_unit_test(test_corrupt_checkpoints),
        cmocka_unit_test(test_bad_jsonl_lines),
        cmocka_unit_test(test_dpo_raises_margin),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
