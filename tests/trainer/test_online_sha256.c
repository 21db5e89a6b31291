/* test_online_sha256.c: trainer/sha256.c against the FIPS 180-4 / NIST example vectors, chunked
 * updates across block boundaries, and file hashing. */
#include "test_helpers.h"

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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
