/* test_utf8_stream.c: tests cli/utf8_stream.c, the printer of streamed token bytes: characters
 * split across tokens come out whole and only once complete, invalid bytes become U+FFFD the way
 * Rust's from_utf8_lossy does, and the output is always valid UTF-8. The same bad bytes give the
 * same text on the terminal (this stream, chunked any way) and on the chat page (the gateway's
 * protocol_sanitize_utf8): both are common/utf8.h's one rule. */
#include "test_helpers.h"

#include "protocol.h"
#include "rng.h"
#include "utf8.h"
#include "utf8_stream.h"

/* Feeds chunks (separated by lengths) and returns the output; *after_each gets the output length
 * after each chunk. */
static char *stream_chunks_mode(const char *bytes, const size_t *lens, size_t n_chunks,
                                size_t *after_each, size_t *out_len, bool escape_controls) {
    char *buf = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&buf, &size);
    assert_non_null(out);
    utf8_stream s;
    utf8_stream_init(&s, escape_controls);
    size_t off = 0, total = 0;
    for (size_t i = 0; i < n_chunks; i++) {
        total += utf8_stream_write(&s, bytes + off, lens[i], out);
        off += lens[i];
        fflush(out);
        assert_int_equal(size, total);
        if (after_each) after_each[i] = total;
    }
    total += utf8_stream_finish(&s, out);
    fclose(out);
    assert_int_equal(size, total);
    *out_len = size;
    return buf;
}

static char *stream_chunks(const char *bytes, const size_t *lens, size_t n_chunks,
                           size_t *after_each, size_t *out_len) {
    return stream_chunks_mode(bytes, lens, n_chunks, after_each, out_len, false);
}

static void test_split_characters(void **state) {
    (void)state;
    /* "a€b😀" with the euro sign split 1+2 and the emoji split 2+1+1 */
    const char text[] = "a\xE2\x82\xAC" "b\xF0\x9F\x98\x80";
    size_t lens[] = {2, 2, 3, 1, 1};
    size_t after[5], len;
    char *out = stream_chunks(text, lens, 5, after, &len);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(out, text, len);
    assert_int_equal(after[0], 1); /* "a", euro held back */
    assert_int_equal(after[1], 4); /* euro complete */
    assert_int_equal(after[2], 5); /* "b", emoji half held back */
    assert_int_equal(after[3], 5);
    assert_int_equal(after[4], 9);
    free(out);
}

static void expect_lossy(const char *in, size_t in_len, const char *want) {
    /* byte by byte and all at once give the same text */
    size_t ones[64];
    assert_true(in_len <= 64);
    for (size_t i = 0; i < in_len; i++) ones[i] = 1;
    size_t len;
    char *a = stream_chunks(in, ones, in_len, NULL, &len);
    assert_true(duel_utf8_valid(a, len, NULL));
    if (len != strlen(want) || memcmp(a, want, len) != 0)
        fail_msg("byte-wise output differs for input of %zu bytes", in_len);
    size_t whole = in_len;
    char *b = stream_chunks(in, &whole, 1, NULL, &len);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(b, want, len);
    free(a);
    free(b);
}

#define FFFD "\xEF\xBF\xBD"

static void test_invalid_bytes(void **state) {
    (void)state;
    expect_lossy("a\xFF" "b", 3, "a" FFFD "b");                 /* never valid */
    expect_lossy("\x80\x80", 2, FFFD FFFD);                      /* stray continuations */
    expect_lossy("\xE2\x82" "A", 3, FFFD "A");                   /* broken prefix: one U+FFFD */
    expect_lossy("\xC0\xAF", 2, FFFD FFFD);                      /* overlong lead */
    expect_lossy("\xED\xA0\x80", 3, FFFD FFFD FFFD);             /* surrogate */
    expect_lossy("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);    /* above U+10FFFF */
    expect_lossy("\xF0\x9F\x98", 3, FFFD);                       /* truncated at the end */
    expect_lossy("\xE2\x82\xE2\x82\xAC", 5, FFFD "\xE2\x82\xAC"); /* broken, then valid */
}

static void test_random_bytes_give_valid_text(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 99);
    char in[256];
    size_t lens[256];
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + duel_rng_below(&rng, sizeof in);
        for (size_t i = 0; i < n; i++) in[i] = (char)(0x70 + duel_rng_below(&rng, 0x90));
        size_t chunks = 0, used = 0;
        while (used < n) {
            size_t l = 1 + duel_rng_below(&rng, 5);
            if (l > n - used) l = n - used;
            lens[chunks++] = l;
            used += l;
        }
        size_t len, whole = n, len2;
        char *a = stream_chunks(in, lens, chunks, NULL, &len);
        char *b = stream_chunks(in, &whole, 1, NULL, &len2);
        assert_true(duel_utf8_valid(a, len, NULL));
        assert_int_equal(len, len2);
        assert_memory_equal(a, b, len);
        /* Valid input comes out unchanged. */
        if (duel_utf8_valid(in, n, NULL)) {
            assert_int_equal(len, n);
            assert_memory_equal(a, in, n);
        }
        free(a);
        free(b);
    }
}

static void test_escape_controls(void **state) {
    (void)state;
    /* ESC [ 2 J (clear screen), BEL, DEL, C1 CSI (U+009B); tab, newline and U+00A0 stay. */
    const char in[] = "a\x1b[2J\x07\x7f\xc2\x9b\tb\n\xc2\xa0";
    size_t whole = sizeof in - 1, len;
    char *out = stream_chunks_mode(in, &whole, 1, NULL, &len, true);
    const char want[] = "a" FFFD "[2J" FFFD FFFD FFFD "\tb\n\xc2\xa0";
    assert_int_equal(len, strlen(want));
    assert_memory_equal(out, want, len);
    free(out);
    out = stream_chunks_mode(in, &whole, 1, NULL, &len, false); /* pipes get the bytes */
    assert_int_equal(len, whole);
    assert_memory_equal(out, in, len);
    free(out);
}

/* Model output with bad bytes, as the gateway sends it to the page and as `duel generate` prints
 * it token by token: the same text. (NUL, valid UTF-8 that C strings cannot hold, the gateway
 * also replaces; the generator is kept off it here.) */
static void test_same_text_as_the_chat_page(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 4242);
    char in[200];
    size_t lens[200];
    for (int trial = 0; trial < 500; trial++) {
        size_t n = 1 + duel_rng_below(&rng, sizeof in);
        for (size_t i = 0; i < n; i++)
            in[i] = (char)(duel_rng_below(&rng, 3) ? 0x60 + duel_rng_below(&rng, 0xA0)
                                                   : 1 + duel_rng_below(&rng, 255));
        size_t chunks = 0, used = 0;
        while (used < n) {
            size_t l = 1 + duel_rng_below(&rng, 6);
            if (l > n - used) l = n - used;
            lens[chunks++] = l;
            used += l;
        }
        size_t terminal_len, page_len;
        char *terminal = stream_chunks(in, lens, chunks, NULL, &terminal_len);
        char *page = protocol_sanitize_utf8(in, n, &page_len);
        if (terminal_len != page_len || memcmp(terminal, page, page_len) != 0)
            fail_msg("trial %d: the terminal and the page show %zu bytes of input differently",
                     trial, n);
        char lossy[3 * sizeof in];
        assert_int_equal(duel_utf8_lossy(in, n, 0, lossy), page_len);
        assert_memory_equal(lossy, page, page_len);
        free(terminal);
        free(page);
    }
    /* A character cut off at the end: one U+FFFD on both (the gateway used to write one per
     * byte). */
    size_t whole = 5, len;
    char *terminal = stream_chunks("ok\xF0\x9F\x98", &whole, 1, NULL, &len);
    char *page = protocol_sanitize_utf8("ok\xF0\x9F\x98", 5, NULL);
    assert_string_equal(page, "ok" FFFD);
    assert_int_equal(len, strlen(page));
    assert_memory_equal(terminal, page, len);
    free(terminal);
    free(page);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_characters),
        cmocka_unit_test(test_invalid_bytes),
        cmocka_unit_test(test_random_bytes_give_valid_text),
        cmocka_unit_test(test_escape_controls),
        cmocka_unit_test(test_same_text_as_the_chat_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
