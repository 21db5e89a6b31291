/* test_sha256.c: common/sha256.c against the FIPS 180-4 / NIST example vectors, chunked
 * updates across block boundaries, file hashing, and the x86 SHA-extension block function against
 * the portable one on random messages. */
#include "test_helpers.h"

#include "rng.h"
#include "sha256.h"

static void test_known_vectors(void **state) {
    (void)state;
    char hex[SHA256_HEX_BYTES];
    sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* One million 'a', fed in uneven chunks. */
    sha256_ctx ctx;
    sha256_init(&ctx);
    char buf[1000];
    memset(buf, 'a', sizeof buf);
    size_t left = 1000000, chunk = 1;
    while (left > 0) {
        size_t n = chunk < left ? chunk : left;
        sha256_update(&ctx, buf, n);
        left -= n;
        chunk = chunk % 900 + 63; /* stays under sizeof buf */
    }
    unsigned char digest[SHA256_DIGEST_BYTES];
    sha256_final(&ctx, digest);
    static const unsigned char want[32] = {
        0xcd, 0xc7, 0x6e, 0x5c, 0x99, 0x14, 0xfb, 0x92, 0x81, 0xa1, 0xc7, 0xe2, 0x84, 0xd7, 0x3e, 0x67,
        0xf1, 0x80, 0x9a, 0x48, 0xa4, 0x97, 0x20, 0x0e, 0x04, 0x6d, 0x39, 0xcc, 0xc7, 0x11, 0x2c, 0xd0};
    assert_memory_equal(digest, want, 32);
}

static void digest_of(bool portable, const unsigned char *data, size_t len, size_t chunk,
                      unsigned char out[SHA256_DIGEST_BYTES]) {
    sha256_ctx ctx;
    if (portable)
        sha256_init_portable(&ctx);
    else
        sha256_init(&ctx);
    for (size_t at = 0; at < len; at += chunk) sha256_update(&ctx, data + at, len - at < chunk ? len - at : chunk);
    sha256_final(&ctx, out);
}

/* Random messages of every length up to a few blocks, and long ones, in random chunks: the
 * digest sha256_init gives (the SHA extensions where present) equals the portable one. */
static void test_hardware_matches_portable(void **state) {
    (void)state;
    if (!sha256_hardware_available()) {
        printf("SKIP: this CPU has no x86 SHA extensions; only the portable SHA-256 is used\n");
        return;
    }
    sha256_ctx probe;
    sha256_init(&probe);
    assert_true(probe.hardware);
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    const size_t max_len = 300000;
    unsigned char *data = malloc(max_len);
    assert_non_null(data);
    for (size_t i = 0; i < max_len; i++) data[i] = (unsigned char)duel_rng_below(&rng, 256);
    unsigned char a[SHA256_DIGEST_BYTES], b[SHA256_DIGEST_BYTES];
    for (size_t len = 0; len <= 300; len++) {
        digest_of(true, data, len, len + 1, a);
        digest_of(false, data, len, len + 1, b);
        assert_memory_equal(a, b, SHA256_DIGEST_BYTES);
    }
    for (int trial = 0; trial < 40; trial++) {
        size_t len = (size_t)duel_rng_below(&rng, max_len + 1);
        size_t chunk = 1 + (size_t)duel_rng_below(&rng, 70000);
        digest_of(true, data, len, len + 1, a);
        digest_of(false, data, len, chunk, b);
        assert_memory_equal(a, b, SHA256_DIGEST_BYTES);
    }
    free(data);
}

static void test_file(void **state) {
    (void)state;
    char dir[512], path[600], hex[SHA256_HEX_BYTES];
    test_make_temp_dir("sha256", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/f", dir);
    test_write_file(path, "abc", 3);
    assert_int_equal(sha256_file_hex(path, hex, NULL), 0);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    unlink(path);
    duel_error err;
    assert_int_equal(sha256_file_hex(path, hex, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, path));
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_vectors),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_hardware_matches_portable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
