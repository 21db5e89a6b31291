/* test_utf8.c: the one UTF-8 decoder and replacement rule (common/utf8.c): strict validation,
 * decoding and encoding; duel_utf8_next's three answers; duel_utf8_lossy against Unicode's own
 * example of maximal subparts and against an independent implementation of the WHATWG decoder
 * (the Encoding Standard's UTF-8 decoder, which the browser showing the chat page runs) on
 * random bytes. */
#include "test_helpers.h"

#include "rng.h"
#include "utf8.h"

#define FFFD "\xEF\xBF\xBD"

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

static void test_next_kinds(void **state) {
    (void)state;
    struct { const char *s; size_t n; duel_utf8_kind kind; size_t len; uint32_t cp; } cases[] = {
        {"A", 1, DUEL_UTF8_CHAR, 1, 'A'},
        {"\xc3\xa9x", 3, DUEL_UTF8_CHAR, 2, 0xE9},
        {"\xf0\x9f\x98\x80", 4, DUEL_UTF8_CHAR, 4, 0x1F600},
        {"\xf0\x9f\x98", 3, DUEL_UTF8_INCOMPLETE, 3, 0},   /* more bytes may complete it */
        {"\xe2", 1, DUEL_UTF8_INCOMPLETE, 1, 0},
        {"\xe2\x82" "A", 3, DUEL_UTF8_INVALID, 2, 0},           /* broken after two bytes */
        {"\xed\xa0\x80", 3, DUEL_UTF8_INVALID, 1, 0},        /* surrogate: lead alone */
        {"\xe0\x80\xaf", 3, DUEL_UTF8_INVALID, 1, 0},        /* overlong */
        {"\xf4\x90\x80\x80", 4, DUEL_UTF8_INVALID, 1, 0},    /* above U+10FFFF */
        {"\xc0\xaf", 2, DUEL_UTF8_INVALID, 1, 0},
        {"\x80", 1, DUEL_UTF8_INVALID, 1, 0},
        {"\xff", 1, DUEL_UTF8_INVALID, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t len = 99;
        uint32_t cp = 0;
        duel_utf8_kind k = duel_utf8_next((const unsigned char *)cases[i].s, cases[i].n, &len, &cp);
        if (k != cases[i].kind || len != cases[i].len)
            fail_msg("case %zu: kind %d len %zu, wanted %d %zu", i, (int)k, len, (int)cases[i].kind,
                     cases[i].len);
        if (k == DUEL_UTF8_CHAR) assert_int_equal(cp, cases[i].cp);
    }
    size_t len = 99;
    uint32_t cp;
    assert_int_equal(duel_utf8_next((const unsigned char *)"", 0, &len, &cp), DUEL_UTF8_INCOMPLETE);
    assert_int_equal(len, 0);
}

static void expect_lossy(const char *in, size_t n, unsigned flags, const char *want) {
    char out[256];
    size_t got = duel_utf8_lossy(in, n, flags, out);
    if (got != strlen(want) || memcmp(out, want, got) != 0)
        fail_msg("lossy of %zu bytes: %zu bytes out, wanted %zu", n, got, strlen(want));
}

static void test_lossy_maximal_subparts(void **state) {
    (void)state;
    /* Unicode 15, table 3-8: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64. */
    expect_lossy("a\xf1\x80\x80\xe1\x80\xc2" "b\x80" "c\x80\xbf" "d", 13, 0,
                 "a" FFFD FFFD FFFD "b" FFFD "c" FFFD FFFD "d");
    expect_lossy("ok\xe2\x98", 4, 0, "ok" FFFD);                     /* cut at the end: one */
    expect_lossy("\xed\xa0\x80", 3, 0, FFFD FFFD FFFD);              /* a surrogate: three */
    expect_lossy("caf\xc3\xa9", 5, 0, "caf\xc3\xa9");               /* valid: unchanged */
    char out[16];
    assert_int_equal(duel_utf8_lossy("a\0b", 3, 0, out), 3); /* NUL is valid UTF-8 */
    assert_memory_equal(out, "a\0b", 3);
    assert_int_equal(duel_utf8_lossy("a\0b", 3, DUEL_UTF8_LOSSY_NUL, out), 5);
    assert_memory_equal(out, "a" FFFD "b", 5);
    assert_int_equal(duel_utf8_lossy("", 0, 0, out), 0);
}

/* The Encoding Standard's UTF-8 decoder (https://encoding.spec.whatwg.org/#utf-8-decoder),
 * written from its steps: an independent reference for the maximal-subpart rule. */
static size_t whatwg_decode(const unsigned char *in, size_t n, char *out) {
    size_t o = 0;
    uint32_t cp = 0;
    int needed = 0, seen = 0;
    unsigned lower = 0x80, upper = 0xBF;
    for (size_t i = 0; i <= n;) {
        if (i == n) { /* end of queue */
            if (needed) memcpy(out + o, FFFD, 3), o += 3;
            break;
        }
        unsigned b = in[i];
        if (needed == 0) {
            i++;
            if (b <= 0x7F) { out[o++] = (char)b; continue; }
            if (b >= 0xC2 && b <= 0xDF) { needed = 1; cp = b & 0x1F; }
            else if (b >= 0xE0 && b <= 0xEF) {
                if (b == 0xE0) lower = 0xA0;
                if (b == 0xED) upper = 0x9F;
                needed = 2;
                cp = b & 0xF;
            } else if (b >= 0xF0 && b <= 0xF4) {
                if (b == 0xF0) lower = 0x90;
                if (b == 0xF4) upper = 0x8F;
                needed = 3;
                cp = b & 0x7;
            } else { memcpy(out + o, FFFD, 3), o += 3; }
            continue;
        }
        if (b < lower || b > upper) { /* error; the byte is reprocessed ("prepend") */
            cp = 0, needed = 0, seen = 0, lower = 0x80, upper = 0xBF;
            memcpy(out + o, FFFD, 3), o += 3;
            continue;
        }
        i++;
        lower = 0x80, upper = 0xBF;
        cp = (cp << 6) | (b & 0x3F);
        if (++seen != needed) continue;
        o += (size_t)duel_utf8_encode(cp, out + o);
        cp = 0, needed = 0, seen = 0;
    }
    return o;
}

static void test_lossy_matches_whatwg_on_random_bytes(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 20240517);
    unsigned char in[64];
    char want[3 * 64], got[3 * 64];
    for (int trial = 0; trial < 20000; trial++) {
        size_t n = duel_rng_below(&rng, sizeof in + 1);
        /* mostly bytes at or above 0x80, where the cases are */
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)(duel_rng_below(&rng, 4) ? 0x7E + duel_rng_below(&rng, 0x82)
                                                            : duel_rng_below(&rng, 256));
        size_t a = whatwg_decode(in, n, want);
        size_t b = duel_utf8_lossy((const char *)in, n, 0, got);
        if (a != b || memcmp(want, got, a) != 0) fail_msg("trial %d: differs from WHATWG", trial);
        assert_true(duel_utf8_valid(got, b, NULL));
        assert_true(b <= DUEL_UTF8_LOSSY_MAX(n));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_strings),
        cmocka_unit_test(test_invalid_strings),
        cmocka_unit_test(test_round_trip_all_code_points),
        cmocka_unit_test(test_next_kinds),
        cmocka_unit_test(test_lossy_maximal_subparts),
        cmocka_unit_test(test_lossy_matches_whatwg_on_random_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
