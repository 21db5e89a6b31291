/* test_utf8.c: strict UTF-8 validation, decoding and encoding (common/utf8.c). */
#include "test_helpers.h"
#include "utf8.h"

static void test_valid_strings(void **state) {
    (void)state;
    const char *ok[] = {"", "plain ascii", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                        "\xf4\x8f\xbf\xbf"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        assert_true(duel_utf8_valid(ok[i], strlen(ok[i]), NULL));
}

static void test_invalid_strings(void **state) {
    (void)state;
    struct { const char *s; size_t bad; } cases[] = {
        {"ab\x80", 2},             /* lone continuation */
        {"\xc0\xaf", 0},           /* overlong slash */
        {"x\xe0\x80\xaf", 1},      /* overlong 3-byte */
        {"\xed\xa0\x80", 0},       /* surrogate */
        {"\xf4\x90\x80\x80", 0},   /* above U+10FFFF */
        {"ok\xe2\x82", 2},         /* truncated */
        {"\xff", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t bad = 999;
        assert_false(duel_utf8_valid(cases[i].s, strlen(cases[i].s), &bad));
        assert_int_equal(bad, cases[i].bad);
    }
}

static void test_round_trip_all_code_points(void **state) {
    (void)state;
    char buf[4];
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        int n = duel_utf8_encode(cp, buf);
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            assert_int_equal(n, 0);
            continue;
        }
        assert_true(n > 0);
        uint32_t back = 0;
        assert_int_equal(duel_utf8_decode((unsigned char *)buf, (size_t)n, &back), n);
        assert_int_equal(back, cp);
    }
    assert_int_equal(duel_utf8_encode(0x110000, buf), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_strings),
        cmocka_unit_test(test_invalid_strings),
        cmocka_unit_test(test_round_trip_all_code_points),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
