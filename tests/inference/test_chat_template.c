/* test_chat_template.c: exact strings of the chatml, llama3, plain and qa templates, detection from
 * tokenizer_config.json files written to a temporary directory, and errors (unknown names and
 * roles, broken config files). */
#include "test_helpers.h"

#include "chat_template.h"

static const chat_message conversation[] = {
    {"system", "Be brief."},
    {"user", "Hi!"},
    {"assistant", "Hello."},
    {"user", "2+2?"},
};

static void expect_render(chat_template_kind kind, bool gen, const char *want) {
    char *out = NULL;
    duel_error err = {0};
    assert_int_equal(chat_template_render(kind, conversation, 4, gen, &out, &err), 0);
    assert_string_equal(out, want);
    free(out);
}

static void test_chatml(void **state) {
    (void)state;
    expect_render(CHAT_TEMPLATE_CHATML, true,
                  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                  "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_render(CHAT_TEMPLATE_CHATML, false,
                  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
                  "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n");
    assert_string_equal(chat_template_end_of_turn(CHAT_TEMPLATE_CHATML), "<|im_end|>");
}

static void test_llama3(void **state) {
    (void)state;
    expect_render(CHAT_TEMPLATE_LLAMA3, true,
                  "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    assert_string_equal(chat_template_end_of_turn(CHAT_TEMPLATE_LLAMA3), "<|eot_id|>");
}

static void test_plain(void **state) {
    (void)state;
    expect_render(CHAT_TEMPLATE_PLAIN, true, "Be brief.\nUser: Hi!\nAssistant: Hello.\nUser: 2+2?\nAssistant:");
    expect_render(CHAT_TEMPLATE_PLAIN, false, "Be brief.\nUser: Hi!\nAssistant: Hello.\nUser: 2+2?\n");
    assert_null(chat_template_end_of_turn(CHAT_TEMPLATE_PLAIN));
    char *out;
    assert_int_equal(chat_template_render(CHAT_TEMPLATE_PLAIN, NULL, 0, true, &out, NULL), 0);
    assert_string_equal(out, "Assistant:");
    free(out);
}

static void test_qa(void **state) {
    (void)state;
    /* The default model's pretraining text reads "Question: ... Answer: ...": the generation
     * prompt ends with "Answer:" and an answer follows after a space. */
    expect_render(CHAT_TEMPLATE_QA, true,
                  "Be brief. Question: Hi! Answer: Hello.<|endoftext|>Question: 2+2? Answer:");
    expect_render(CHAT_TEMPLATE_QA, false,
                  "Be brief. Question: Hi! Answer: Hello.<|endoftext|>Question: 2+2? Answer:");
    /* The model generates the answer with its leading space; the kept answer drops it and
     * rendering puts it back, as the Jinja template in tokenizer_config.json does (it adds ' ' to
     * every assistant message). */
    const char *generated = " Hello.";
    assert_string_equal(chat_template_strip_answer_prefix(CHAT_TEMPLATE_QA, generated), "Hello.");
    assert_string_equal(chat_template_strip_answer_prefix(CHAT_TEMPLATE_QA, "Hello."), "Hello.");
    assert_string_equal(chat_template_strip_answer_prefix(CHAT_TEMPLATE_QA, ""), "");
    assert_string_equal(chat_template_strip_answer_prefix(CHAT_TEMPLATE_CHATML, " Hello."), " Hello.");
    const chat_message kept[] = {{"user", "Hi!"},
                                 {"assistant", chat_template_strip_answer_prefix(CHAT_TEMPLATE_QA, generated)},
                                 {"user", "2+2?"}};
    char *out = NULL;
    assert_int_equal(chat_template_render(CHAT_TEMPLATE_QA, kept, 3, true, &out, NULL), 0);
    assert_string_equal(out, "Question: Hi! Answer: Hello.<|endoftext|>Question: 2+2? Answer:");
    free(out);
    assert_string_equal(chat_template_end_of_turn(CHAT_TEMPLATE_QA), "<|endoftext|>");
    assert_string_equal(chat_template_answer_prefix(CHAT_TEMPLATE_QA), " ");
    assert_string_equal(chat_template_answer_prefix(CHAT_TEMPLATE_CHATML), "");
    assert_string_equal(chat_template_answer_prefix(CHAT_TEMPLATE_PLAIN), "");
}

static void test_names(void **state) {
    (void)state;
    chat_template_kind kind = CHAT_TEMPLATE_PLAIN;
    const char *names[] = {"plain", "chatml", "llama3", "qa"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(chat_template_from_name(names[i], &kind, NULL), 0);
        assert_int_equal(kind, i);
        assert_string_equal(chat_template_name(kind), names[i]);
    }
    duel_error err = {0};
    assert_int_equal(chat_template_from_name("jinja", &kind, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "jinja"));
    assert_non_null(strstr(err.message, "chatml"));
    assert_int_equal(chat_template_from_name(NULL, &kind, &err), DUEL_EINVAL);
}

static void test_render_errors(void **state) {
    (void)state;
    char *out = (char *)1;
    duel_error err = {0};
    chat_message bad_role[] = {{"user", "a"}, {"tool", "b"}};
    assert_int_equal(chat_template_render(CHAT_TEMPLATE_CHATML, bad_role, 2, true, &out, &err), DUEL_EINVAL);
    assert_null(out);
    assert_non_null(strstr(err.message, "tool"));
    assert_non_null(strstr(err.message, "message 1"));
    chat_message no_content[] = {{"user", NULL}};
    assert_int_equal(chat_template_render(CHAT_TEMPLATE_LLAMA3, no_content, 1, true, &out, &err), DUEL_EINVAL);
    chat_message no_role[] = {{NULL, "x"}};
    assert_int_equal(chat_template_render(CHAT_TEMPLATE_PLAIN, no_role, 1, true, &out, &err), DUEL_EINVAL);
    assert_int_equal(chat_template_render((chat_template_kind)7, conversation, 1, true, &out, &err), DUEL_EINVAL);
}

/* Writes tokenizer_config.json with the given text (NULL: none) and runs detection. */
static int detect(const char *config, chat_template_kind *kind, duel_error *err) {
    char dir[512], path[600];
    test_make_temp_dir("chat-template", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (config) test_write_file(path, config, strlen(config));
    *kind = CHAT_TEMPLATE_LLAMA3; /* detection must overwrite it */
    int rc = chat_template_detect(dir, kind, err);
    unlink(path);
    rmdir(dir);
    return rc;
}

static void test_detect(void **state) {
    (void)state;
    chat_template_kind kind;
    duel_error err = {0};
    assert_int_equal(detect(NULL, &kind, &err), 0);
    assert_int_equal(kind, CHAT_TEMPLATE_PLAIN);
    assert_int_equal(detect("{\"eos_token\": \"</s>\"}", &kind, &err), 0);
    assert_int_equal(kind, CHAT_TEMPLATE_PLAIN);
    /* Qwen2 / SmolLM2 style */
    assert_int_equal(detect("{\"chat_template\": \"{% for message in messages %}{{'<|im_start|>' + "
                            "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                            "{% endfor %}\"}",
                            &kind, &err),
                     0);
    assert_int_equal(kind, CHAT_TEMPLATE_CHATML);
    /* Llama 3 style */
    assert_int_equal(detect("{\"chat_template\": \"{{ bos_token }}{% for m in messages %}"
                            "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
                            "{% endfor %}\"}",
                            &kind, &err),
                     0);
    assert_int_equal(kind, CHAT_TEMPLATE_LLAMA3);
    /* An unknown Jinja template is plain. */
    assert_int_equal(detect("{\"chat_template\": \"{{ messages[0]['content'] }}\"}", &kind, &err), 0);
    assert_int_equal(kind, CHAT_TEMPLATE_PLAIN);
    /* A list of named templates: the default one decides. */
    assert_int_equal(detect("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": "
                            "\"<|start_header_id|>\"}, {\"name\": \"default\", \"template\": "
                            "\"<|im_start|>\"}]}",
                            &kind, &err),
                     0);
    assert_int_equal(kind, CHAT_TEMPLATE_CHATML);
    /* duel_chat_template wins over the Jinja markers. */
    assert_int_equal(detect("{\"duel_chat_template\": \"plain\", \"chat_template\": \"<|im_start|>\"}",
                            &kind, &err),
                     0);
    assert_int_equal(kind, CHAT_TEMPLATE_PLAIN);
    assert_int_equal(detect("{\"duel_chat_template\": \"llama3\"}", &kind, &err), 0);
    assert_int_equal(kind, CHAT_TEMPLATE_LLAMA3);
}

static void test_detect_errors(void **state) {
    (void)state;
    chat_template_kind kind;
    duel_error err = {0};
    assert_int_equal(detect("{\"duel_chat_template\": \"vicuna\"}", &kind, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "tokenizer_config.json"));
    assert_non_null(strstr(err.message, "vicuna"));
    assert_int_equal(detect("{\"duel_chat_template\": 3}", &kind, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "duel_chat_template"));
    assert_int_equal(detect("{\"chat_template\": 3}", &kind, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "chat_template"));
    assert_int_equal(detect("{not json", &kind, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "tokenizer_config.json"));
    assert_int_equal(detect("[]", &kind, &err), DUEL_EFORMAT);
    assert_int_equal(chat_template_detect(NULL, &kind, &err), DUEL_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chatml),         cmocka_unit_test(test_llama3),
        cmocka_unit_test(test_plain),          cmocka_unit_test(test_qa),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_render_errors),  cmocka_unit_test(test_detect),
        cmocka_unit_test(test_detect_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
