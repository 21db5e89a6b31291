/* test_bpe_train.c: the byte-level BPE trainer (trainer/bpe_train.c): the tokenizer.json it
 * writes loads in inference/tokenizer.c, round-trips any text, compresses the training text,
 * keeps special tokens whole at the last ids, is deterministic; bad options and bad UTF-8 fail. */
#include <string.h>

#include "bpe_train.h"
#include "file_map.h"
#include "test_helpers.h"
#include "tokenizer.h"

static const char *const SPECIAL[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

static const char *CORPUS =
    "the cat sat on the mat. the dog sat on the log. a cat and a dog are animals.\n"
    "What does cat mean? feline mammal usually having thick soft fur.\n"
    "What does dog mean? a member of the genus Canis. the the the then there these\n";

static void train_to(const char *path, int vocab_size, int *merges) {
    bpe_trainer *t = NULL;
    duel_error err = {0};
    assert_int_equal(bpe_trainer_create(&t, &err), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(bpe_trainer_add_text(t, CORPUS, strlen(CORPUS), "corpus", &err), 0);
    }
    bpe_train_options o = {vocab_size, 2, SPECIAL, 3};
    int rc = bpe_trainer_train(t, &o, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    *merges = bpe_trainer_num_merges(t);
    rc = bpe_trainer_write_json(t, path, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    bpe_trainer_free(t);
}

static void test_round_trip_and_compression(void **state) {
    (void)state;
    char dir[512], path[600];
    test_make_temp_dir("bpe_train", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    int merges = 0;
    train_to(path, 256 + 40 + 3, &merges);
    assert_int_equal(merges, 40);
    tokenizer *tok = NULL;
    duel_error err = {0};
    int rc = tokenizer_load(path, &tok, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(tokenizer_vocab_size(tok), 256 + 40 + 3);
    assert_int_equal(tokenizer_token_id(tok, "<|endoftext|>"), 296);
    assert_int_equal(tokenizer_token_id(tok, "<|im_end|>"), 298);
    assert_true(tokenizer_is_special(tok, 297));

    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(tokenizer_encode(tok, CORPUS, strlen(CORPUS), false, &ids, &n, &err), 0);
    assert_true(n < strlen(CORPUS) * 2 / 3); /* merges compress the text they were trained on */
    free(ids);

    const char *texts[] = {"the cat", "unseen wörds ☃ and\ttabs\n\n  spaces", "x", "<|im_start|>user\nhi<|im_end|>"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(tokenizer_encode(tok, texts[i], strlen(texts[i]), true, &ids, &n, &err), 0);
        char *back = NULL;
        size_t len = 0;
        assert_int_equal(tokenizer_decode(tok, ids, n, false, &back, &len, &err), 0);
        assert_string_equal(back, texts[i]);
        if (i == 0) {
            assert_true(n <= 4); /* "the" and " cat" are frequent: fewer tokens than the 7 bytes */
        }
        if (i == 3) {
            assert_int_equal(ids[0], 297);
            assert_int_equal(ids[n - 1], 298);
        }
        free(back);
        free(ids);
    }
    tokenizer_free(tok);

    /* Deterministic: the same input gives the same file. */
    char path2[600];
    snprintf(path2, sizeof(path2), "%s/tokenizer2.json", dir);
    train_to(path2, 256 + 40 + 3, &merges);
    char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    assert_int_equal(duel_file_read_all(path, 1 << 24, &a, &la, NULL), 0);
    assert_int_equal(duel_file_read_all(path2, 1 << 24, &b, &lb, NULL), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    free(a);
    free(b);
}

static void test_small_corpus_stops_early(void **state) {
    (void)state;
    char dir[512], path[600];
    test_make_temp_dir("bpe_train_small", dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    int merges = 0;
    train_to(path, 5000, &merges); /* fewer frequent pairs than asked for */
    assert_true(merges > 40 && merges < 5000 - 259);
    tokenizer *tok = NULL;
    assert_int_equal(tokenizer_load(path, &tok, NULL), 0);
    tokenizer_free(tok);
}

static void test_bad_input(void **state) {
    (void)state;
    bpe_trainer *t = NULL;
    duel_error err = {0};
    assert_int_equal(bpe_trainer_create(&t, &err), 0);
    assert_int_equal(bpe_trainer_add_text(t, "ok \xff bad", 8, "input.txt", &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "input.txt"));
    assert_non_null(strstr(err.message, "byte 3"));
    bpe_train_options o = {100, 1, SPECIAL, 3};
    assert_int_equal(bpe_trainer_train(t, &o, &err), DUEL_EINVAL);
    const char *dup[] = {"<a>", "<a>"};
    bpe_train_options o2 = {300, 1, dup, 2};
    assert_int_equal(bpe_trainer_train(t, &o2, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "twice"));
    bpe_train_options o3 = {300, 0, SPECIAL, 3};
    assert_int_equal(bpe_trainer_train(t, &o3, &err), DUEL_EINVAL);
    assert_int_equal(bpe_trainer_write_json(t, "/tmp/never.json", &err), DUEL_EINVAL);
    bpe_trainer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_compression),
        cmocka_unit_test(test_small_corpus_stops_early),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
