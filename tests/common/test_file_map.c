/* test_file_map.c: mapping and size-limited reads, including the bad paths (common/file_map.c). */
#include "file_map.h"
#include "test_helpers.h"

static void test_map_and_read(void **state) {
    (void)state;
    char dir[512], path[600];
    test_make_temp_dir("file_map", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/a.txt", dir);
    test_write_file(path, "hello", 5);
    duel_file_map map;
    duel_error err = {0};
    assert_int_equal(duel_file_map_open(path, &map, &err), 0);
    assert_int_equal(map.size, 5);
    assert_memory_equal(map.data, "hello", 5);
    duel_file_map_close(&map);
    char *text;
    size_t len;
    assert_int_equal(duel_file_read_all(path, 5, &text, &len, &err), 0);
    assert_string_equal(text, "hello");
    free(text);
    assert_int_equal(duel_file_read_all(path, 4, &text, &len, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "limit"));
    unlink(path);
    rmdir(dir);
}

/* Files past the reader's first 4 KiB buffer: it grows (doubling) and returns every byte, NULs
 * included; the limit is exact at every size around the buffer's boundaries. */
static void test_large_files_grow_the_buffer(void **state) {
    (void)state;
    char dir[512], path[600];
    test_make_temp_dir("file_map_large", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/big.bin", dir);
    const size_t sizes[] = {4095, 4096, 4097, 8193, 100000, 1 << 20};
    unsigned char *data = malloc(1 << 20);
    assert_non_null(data);
    uint32_t x = 12345;
    for (size_t i = 0; i < (1u << 20); i++) {
        x = x * 1664525u + 1013904223u;
        data[i] = (unsigned char)(x >> 24); /* NULs included */
    }
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        const size_t n = sizes[k];
        test_write_file(path, data, n);
        char *text = NULL;
        size_t len = 0;
        duel_error err = {0};
        assert_int_equal(duel_file_read_all(path, n, &text, &len, &err), 0); /* exactly at the limit */
        assert_int_equal(len, n);
        assert_memory_equal(text, data, n);
        assert_int_equal(text[n], '\0');
        free(text);
        assert_int_equal(duel_file_read_all(path, 4 * n, &text, &len, &err), 0);
        assert_int_equal(len, n);
        assert_memory_equal(text, data, n);
        free(text);
        assert_int_equal(duel_file_read_all(path, n - 1, &text, &len, &err), DUEL_ELIMIT);
        assert_null(text);
        assert_non_null(strstr(err.message, "limit"));
        duel_file_map map;
        assert_int_equal(duel_file_map_open(path, &map, &err), 0);
        assert_int_equal(map.size, n);
        assert_memory_equal(map.data, data, n);
        duel_file_map_close(&map);
    }
    free(data);
    unlink(path);
    rmdir(dir);
}

static void test_missing_file_names_path(void **state) {
    (void)state;
    duel_file_map map;
    duel_error err = {0};
    assert_int_equal(duel_file_map_open("/nonexistent/x.bin", &map, &err), DUEL_EIO);
    assert_non_null(strstr(err.message, "/nonexistent/x.bin"));
    assert_int_equal(duel_file_map_open("/tmp", &map, &err), DUEL_EIO);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_and_read),
        cmocka_unit_test(test_large_files_grow_the_buffer),
        cmocka_unit_test(test_missing_file_names_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
