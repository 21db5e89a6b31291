/* test_lexical.c: the lexical oracle (oracle/lexical.c) on fixed examples with hand-computed
 * scores: F1 overlap, word splitting (case, punctuation, apostrophes, UTF-8), the length and
 * repetition penalties, configurable weights, the graded mode (character trigrams) and bad
 * input. */
#include "test_helpers.h"

#include "oracle.h"

static oracle_lexical_detail score_of(const oracle_lexical_config *c, const char *ref,
                                      const char *ans, double *score) {
    oracle_lexical_detail d;
    duel_error err;
    int rc = oracle_lexical_score(c, ref, strlen(ref), ans, strlen(ans), score, &d, &err);
    if (rc) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(rc, 0);
    assert_true(d.score == *score);
    return d;
}

static void assert_near(double got, double want) {
    if (!(fabs(got - want) < 1e-12)) fprintf(stderr, "got %.17g want %.17g\n", got, want);
    assert_true(fabs(got - want) < 1e-12);
}

static void test_defaults(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    assert_true(c.overlap_weight == 1.0 && c.length_weight == 0.25);
    assert_true(c.length_target_ratio == 2.0 && c.repetition_weight == 1.0);
    assert_int_equal(oracle_lexical_config_validate(&c, NULL), 0);
}

static void test_identical_answer(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    double s;
    const char *ref = "A dog is a domesticated carnivorous mammal.";
    oracle_lexical_detail d = score_of(&c, ref, ref, &s);
    assert_int_equal(d.reference_words, 7);
    assert_int_equal(d.answer_words, 7);
    assert_int_equal(d.common_words, 7);
    assert_near(d.f1, 1.0);
    assert_near(d.repetition, 0.0);
    assert_near(s, 1.0);
}

/* "THE cat, the CAT!" against "the cat": words the cat the cat; common 2, P 1/2, R 1, F1 2/3;
 * ratio 2 (not beyond the target); bigrams (the cat)(cat the)(the cat): 1 of 3 repeated;
 * trigrams: none repeated; score = 2/3 - (1/3 + 0)/2 = 1/2. */
static void test_case_punctuation_repetition(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    double s;
    oracle_lexical_detail d = score_of(&c, "the cat", "THE cat, the CAT!", &s);
    assert_int_equal(d.answer_words, 4);
    assert_int_equal(d.common_words, 2);
    assert_near(d.precision, 0.5);
    assert_near(d.recall, 1.0);
    assert_near(d.f1, 2.0 / 3.0);
    assert_near(d.length_ratio, 2.0);
    assert_near(d.length_penalty, 0.0);
    assert_near(d.repetition_bigram, 1.0 / 3.0);
    assert_near(d.repetition_trigram, 0.0);
    assert_near(s, 0.5);
    /* A degenerate loop: "the the the the" -> bigrams 2/3 repeated, trigrams 1/2. */
    d = score_of(&c, "the cat", "the the the the", &s);
    assert_near(d.repetition_bigram, 2.0 / 3.0);
    assert_near(d.repetition_trigram, 0.5);
    assert_near(d.f1, 2 * 0.25 * 0.5 / 0.75); /* common 1: P 1/4, R 1/2 */
    assert_near(s, d.f1 - 7.0 / 12.0);
}

/* A 9-word answer to a 3-word reference: ratio 3, one unit beyond the target of 2. */
static void test_length_penalty(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    double s;
    oracle_lexical_detail d =
        score_of(&c, "small furry animal", "a small furry animal that lives in the woods", &s);
    assert_int_equal(d.answer_words, 9);
    assert_near(d.f1, 0.5); /* P 1/3, R 1 */
    assert_near(d.length_ratio, 3.0);
    assert_near(d.length_penalty, 1.0);
    assert_near(s, 0.5 - 0.25);
    /* Longer still: the penalty grows linearly. */
    d = score_of(&c, "small furry animal",
                 "a small furry animal that lives in the woods and eats nuts all day long", &s);
    assert_near(d.length_penalty, 15.0 / 3.0 - 2.0);
    assert_near(s, d.f1 - 0.25 * 3.0);
    /* Every weight comes from the config. */
    c.overlap_weight = 2.0;
    c.length_weight = 1.0;
    c.length_target_ratio = 1.0;
    c.repetition_weight = 0.0;
    d = score_of(&c, "small furry animal", "a small furry animal that lives in the woods", &s);
    assert_near(s, 2.0 * 0.5 - 1.0 * (3.0 - 1.0));
    d = score_of(&c, "the cat", "the the the the", &s);
    assert_near(s, 2.0 * d.f1 - 1.0); /* repetition ignored, ratio 2 - 1 */
}

static void test_word_rules(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    double s;
    /* Apostrophes (ASCII and U+2019) vanish inside words; typographic quotes, dashes and the
     * ellipsis separate; non-ASCII letters stay part of their word. */
    oracle_lexical_detail d = score_of(&c, "don't stop the caf\xc3\xa9",
                                       "\xe2\x80\x9c" "Don\xe2\x80\x99t\xe2\x80\x9d\xe2\x80\x94stop"
                                       "\xe2\x80\xa6 the CAF\xc3\xa9", &s);
    assert_int_equal(d.answer_words, 4);
    assert_int_equal(d.common_words, 4);
    assert_near(s, 1.0);
    /* Leading and trailing apostrophes are separators; digits are word characters. */
    d = score_of(&c, "dogs 42", "'dogs' 42", &s);
    assert_near(d.f1, 1.0);
    /* Embedded NUL and control bytes separate words; invalid UTF-8 bytes belong to words. */
    const char ans[] = "dogs\0cats\t\xff";
    double s2;
    assert_int_equal(oracle_lexical_score(&c, "dogs cats", 9, ans, sizeof ans - 1, &s2, &d, NULL), 0);
    assert_int_equal(d.answer_words, 3);
    assert_int_equal(d.common_words, 2);
    /* No shared word: F1 0. */
    d = score_of(&c, "a feline", "some canine", &s);
    assert_int_equal(d.common_words, 0);
    assert_near(d.f1, 0.0);
    assert_near(s, 0.0);
    /* Empty and punctuation-only answers score 0. */
    d = score_of(&c, "a feline", "", &s);
    assert_int_equal(d.answer_words, 0);
    assert_near(s, 0.0);
    d = score_of(&c, "a feline", " ?!... \xe2\x80\x94 ", &s);
    assert_int_equal(d.answer_words, 0);
    assert_near(s, 0.0);
}

static void test_ordering(void **state) {
    (void)state;
    /* The oracle ranks a good answer above a rambling or looping one. */
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    const char *ref = "a large natural stream of water flowing in a channel to the sea";
    double good, loop, off;
    score_of(&c, ref, "a large natural stream of water that flows to the sea", &good);
    score_of(&c, ref, "water water water water water water water water", &loop);
    score_of(&c, ref, "a device for keeping time", &off);
    assert_true(good > off);
    assert_true(good > loop);
    assert_true(loop < 0.2);
}

static void test_bad_input(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    duel_error err;
    double s = 123;
    assert_int_equal(oracle_lexical_score(&c, "...", 3, "dog", 3, &s, NULL, &err), DUEL_EINVAL);
    assert_string_equal(err.message, "lexical oracle: the reference answer has no words");
    assert_int_equal(oracle_lexical_score(&c, "", 0, "dog", 3, &s, NULL, &err), DUEL_EINVAL);
    assert_true(s == 123);
    assert_int_equal(oracle_lexical_score(&c, NULL, 0, "dog", 3, &s, NULL, &err), DUEL_EINVAL);
    size_t big = ORACLE_LEXICAL_MAX_BYTES + 1;
    char *text = malloc(big);
    memset(text, 'a', big);
    assert_int_equal(oracle_lexical_score(&c, "dog", 3, text, big, &s, NULL, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "answer"));
    /* The largest allowed answer (one long word, then many short ones) is fine. */
    assert_int_equal(oracle_lexical_score(&c, "dog", 3, text, big - 1, &s, NULL, &err), 0);
    for (size_t i = 0; i + 1 < big; i += 2) text[i + 1] = ' ';
    assert_int_equal(oracle_lexical_score(&c, "a", 1, text, big - 1, &s, NULL, &err), 0);
    free(text);

    oracle_lexical_config bad = c;
    bad.length_weight = -1;
    assert_int_equal(oracle_lexical_score(&bad, "dog", 3, "dog", 3, &s, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "length_weight"));
    bad = c;
    bad.overlap_weight = NAN;
    assert_int_equal(oracle_lexical_config_validate(&bad, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "overlap_weight"));
    bad = c;
    bad.length_target_ratio = 0;
    assert_int_equal(oracle_lexical_config_validate(&bad, &err), DUEL_EINVAL);
    bad = c;
    bad.repetition_weight = INFINITY;
    assert_int_equal(oracle_lexical_config_validate(&bad, &err), DUEL_EINVAL);
}

/* The graded mode: F1 of the character trigrams of " w1 ... wn ", computed here by hand. */
static void test_graded(void **state) {
    (void)state;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    double s;
    /* off by default: two answers sharing no word with the reference tie at 0 */
    assert_true(c.char_ngram_weight == 0.0);
    oracle_lexical_detail d = score_of(&c, "a cat", "cab", &s);
    assert_true(s == 0.0 && d.char_f1 == 0.0);
    c.char_ngram_weight = 0.5;
    /* reference " a cat " -> trigrams " a ", "a c", " ca", "cat", "at " (5); answer " cab " ->
     * " ca", "cab", "ab " (3); common 1: P = 1/3, R = 1/5, F1 = 2PR/(P+R) = 0.25 */
    d = score_of(&c, "a cat", "cab", &s);
    assert_near(d.char_f1, 0.25);
    assert_near(s, 0.5 * 0.25);
    double s_dog;
    score_of(&c, "a cat", "dog", &s_dog); /* " do", "dog", "og ": nothing shared */
    assert_true(s_dog == 0.0);
    assert_true(s > s_dog); /* the two word-F1 ties are told apart */
    /* multiset: "at at" -> " at", "at ", "t a", " at", "at " against " cat " (" ca", "cat",
     * "at "): common min(2, 1) of "at " = 1: P = 1/5, R = 1/3, F1 = 0.25 */
    d = score_of(&c, "cat", "at at", &s);
    assert_near(d.char_f1, 0.25);
    /* identical answers score the same, and the top */
    double s1, s2;
    score_of(&c, "a tall tower", "a tall tower", &s1);
    score_of(&c, "a tall tower", "A TALL, tower!", &s2);
    assert_near(s1, 1.0 + 0.5);
    assert_near(s2, s1);
    c.char_ngram_weight = -1;
    duel_error err;
    assert_int_equal(oracle_lexical_score(&c, "a", 1, "a", 1, &s, NULL, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "char_ngram_weight"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_identical_answer),
        cmocka_unit_test(test_case_punctuation_repetition),
        cmocka_unit_test(test_length_penalty),
        cmocka_unit_test(test_word_rules),
        cmocka_unit_test(test_ordering),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_graded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
