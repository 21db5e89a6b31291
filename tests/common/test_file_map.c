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
        cmocka_unit_test(test_missing_file_names_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
