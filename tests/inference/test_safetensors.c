/* test_safetensors.c: the safetensors reader, validator, writer and float conversions
 * (inference/safetensors.c): hand-built valid files, a table of corrupt and lying headers (each
 * asserting the code and the message), sharded checkpoints with missing and misplaced tensors,
 * writer -> reader round trips, and bit-exact f16/bf16 conversions against hand-computed values
 * and an independent nearest-value reference. */
#include "safetensors.h"
#include "rng.h"
#include "test_helpers.h"

#include <dirent.h>
#include <stdbool.h>

/* ---- helpers ----------------------------------------------------------------------------- */

/* A file image: 8-byte little-endian header length, header text, data_len bytes of a pattern.
 * header_len_override (when nonzero) replaces the real header length in the length field. */
static unsigned char *make_image(const char *header, size_t data_len, uint64_t header_len_override,
                                 size_t *size) {
    size_t n = strlen(header);
    unsigned char *buf = malloc(8 + n + data_len + 1);
    assert_non_null(buf);
    uint64_t len = header_len_override ? header_len_override : n;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(len >> (8 * i));
    memcpy(buf + 8, header, n);
    for (size_t i = 0; i < data_len; i++) buf[8 + n + i] = (unsigned char)(i * 7 + 1);
    *size = 8 + n + data_len;
    return buf;
}

static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

/* One header entry: T("w", "F32", "[2,3]", 0, 24). */
#define T(name, dtype, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void assert_contains(const char *haystack, const char *needle) {
    if (!strstr(haystack, needle)) fail_msg("message \"%s\" lacks \"%s\"", haystack, needle);
}

/* ---- valid hand-built files -------------------------------------------------------------- */

/* Every dtype's file name and element size; a value outside the enum is "?" and 0. */
static void test_dtype_names_and_sizes(void **state) {
    (void)state;
    const struct {
        safetensors_dtype dtype;
        const char *name;
        size_t size;
    } want[] = {{SAFETENSORS_F32, "F32", 4}, {SAFETENSORS_F16, "F16", 2},
                {SAFETENSORS_BF16, "BF16", 2}, {SAFETENSORS_F64, "F64", 8},
                {SAFETENSORS_I64, "I64", 8}, {SAFETENSORS_I32, "I32", 4},
                {SAFETENSORS_I16, "I16", 2}, {SAFETENSORS_I8, "I8", 1},
                {SAFETENSORS_U8, "U8", 1},   {SAFETENSORS_BOOL, "BOOL", 1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_string_equal(safetensors_dtype_name(want[i].dtype), want[i].name);
        assert_int_equal(safetensors_dtype_size(want[i].dtype), want[i].size);
    }
    assert_string_equal(safetensors_dtype_name((safetensors_dtype)99), "?");
    assert_int_equal(safetensors_dtype_size((safetensors_dtype)99), 0);
    assert_int_equal(safetensors_dtype_size((safetensors_dtype)-1), 0);
}

static void test_valid_hand_built(void **state) {
    (void)state;
    /* Entries out of offset order, a scalar, a zero-size tensor sharing an offset, metadata. */
    const char *header =
        "{\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[24,28]},"
        "\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"empty\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[28,28]},"
        "\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[28,32]}}  ";
    size_t size;
    unsigned char *img = make_image(header, 32, 0, &size);
    size_t count = 99;
    duel_error err = {0};
    assert_int_equal(safetensors_validate_buffer(img, size, "mem", &count, &err), 0);
    assert_int_equal(count, 4);

    char dir[512], path[600];
    test_make_temp_dir("st_valid", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    test_write_file(path, img, size);
    safetensors_archive *ar;
    assert_int_equal(safetensors_open_file(path, &ar, &err), 0);
    assert_int_equal(safetensors_count(ar), 4);
    /* safetensors_at iterates in name order. */
    assert_string_equal(safetensors_at(ar, 0)->name, "a");
    assert_string_equal(safetensors_at(ar, 3)->name, "s");
    assert_null(safetensors_at(ar, 4));
    const safetensors_tensor *a = safetensors_find(ar, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, SAFETENSORS_F32);
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->shape[1], 3);
    assert_int_equal(a->num_elements, 6);
    assert_int_equal(a->num_bytes, 24);
    assert_string_equal(a->file, path);
    size_t data_start = 8 + strlen(header);
    assert_memory_equal(a->data, img + data_start, 24);
    const safetensors_tensor *s = safetensors_find(ar, "s");
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->num_elements, 1);
    assert_memory_equal(s->data, img + data_start + 28, 4);
    const safetensors_tensor *e = safetensors_find(ar, "empty");
    assert_int_equal(e->num_elements, 0);
    assert_int_equal(e->num_bytes, 0);
    assert_null(safetensors_find(ar, "c"));
    assert_null(safetensors_find(ar, "__metadata__"));
    assert_string_equal(safetensors_metadata(ar, "format"), "pt");
    assert_null(safetensors_metadata(ar, "missing"));
    /* bf16 view of the pattern bytes at 24..27: bytes (24*7+1)&255=169, 176, 183, 190. */
    float out[2];
    assert_int_equal(safetensors_to_f32(safetensors_find(ar, "b"), out, &err), 0);
    uint32_t expect0 = (uint32_t)((176 << 8) | 169) << 16, expect1 = (uint32_t)((190 << 8) | 183) << 16;
    uint32_t got0, got1;
    memcpy(&got0, &out[0], 4);
    memcpy(&got1, &out[1], 4);
    assert_int_equal(got0, expect0);
    assert_int_equal(got1, expect1);
    /* Non-float dtype does not convert. */
    float dummy;
    assert_int_equal(safetensors_to_f32(s, &dummy, &err), DUEL_EUNSUPPORTED);
    assert_contains(err.message, "I32");
    safetensors_close(ar);
    free(img);
    remove_dir(dir);
}

static void test_open_memory(void **state) {
    (void)state;
    const char *header = "{\"__metadata__\":{\"k\":\"v\"},"
                         T("y", "F16", "[2]", 4, 8) "," T("x", "F32", "[1]", 0, 4) "}";
    size_t size;
    unsigned char *img = make_image(header, 8, 0, &size);
    /* 1.0f at [0, 4), f16 {-2.5, 65504} at [4, 8). */
    size_t data = 8 + strlen(header);
    const unsigned char payload[8] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0xc1, 0xff, 0x7b};
    memcpy(img + data, payload, 8);
    safetensors_archive *ar;
    duel_error err = {0};
    assert_int_equal(safetensors_open_memory(img, size, "mem.safetensors", &ar, &err), 0);
    assert_int_equal(safetensors_count(ar), 2);
    assert_string_equal(safetensors_at(ar, 0)->name, "x");
    assert_string_equal(safetensors_metadata(ar, "k"), "v");
    assert_string_equal(safetensors_find(ar, "y")->file, "mem.safetensors");
    float out[2];
    assert_int_equal(safetensors_to_f32(safetensors_find(ar, "x"), out, &err), 0);
    assert_true(out[0] == 1.0f);
    assert_int_equal(safetensors_to_f32(safetensors_find(ar, "y"), out, &err), 0);
    assert_true(out[0] == -2.5f && out[1] == 65504.0f);
    int64_t shape[1] = {3};
    assert_int_equal(safetensors_expect(ar, "y", 1, shape, NULL, &err), DUEL_EFORMAT);
    assert_contains(err.message, "mem.safetensors: tensor 'y' has shape [2], expected [3]");
    safetensors_close(ar);
    /* Rejections name the source and leave *out NULL. */
    ar = (safetensors_archive *)1;
    assert_int_equal(safetensors_open_memory(img, size - 1, "mem.safetensors", &ar, &err),
                     DUEL_EFORMAT);
    assert_null(ar);
    assert_contains(err.message, "mem.safetensors: tensor 'y': data_offsets [4, 8] end beyond");
    free(img);
}

static void test_empty_header_is_valid(void **state) {
    (void)state;
    size_t size, count = 5;
    unsigned char *img = make_image("{}", 0, 0, &size);
    assert_int_equal(safetensors_validate_buffer(img, size, "mem", &count, NULL), 0);
    assert_int_equal(count, 0);
    free(img);
}

/* ---- bad headers ------------------------------------------------------------------------- */

typedef struct bad_case {
    const char *what;
    const char *header;
    size_t data_len;
    uint64_t header_len_override;
    int code;
    const char *message;
} bad_case;

static const bad_case bad_cases[] = {
    {"length beyond file", "{}", 0, 100, DUEL_EFORMAT, "truncated: header length 100"},
    {"length over limit", "{}", 0, (uint64_t)SAFETENSORS_MAX_HEADER_BYTES + 1, DUEL_ELIMIT,
     "exceeds the limit"},
    {"huge length", "{}", 0, UINT64_MAX, DUEL_ELIMIT, "exceeds the limit"},
    {"invalid json", "{\"a\":", 0, 0, DUEL_EFORMAT, "invalid JSON"},
    {"not an object", "[1,2]", 0, 0, DUEL_EFORMAT, "does not start with a JSON object"},
    {"trailing garbage", "{} x", 0, 0, DUEL_EFORMAT, "invalid JSON"},
    {"bad utf8", "{\"\xff\":1}", 0, 0, DUEL_EFORMAT, "invalid JSON"},
    {"duplicate key", "{" T("a", "F32", "[1]", 0, 4) "," T("a", "F32", "[1]", 4, 8) "}", 8,
     0, DUEL_EFORMAT, "duplicate"},
    {"unknown dtype", "{" T("w", "Q4", "[2]", 0, 4) "}", 4, 0, DUEL_EUNSUPPORTED,
     "tensor 'w': unknown dtype \"Q4\""},
    {"dtype not string", "{\"w\":{\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0,
     DUEL_EFORMAT, "\"dtype\" is not a string"},
    {"shape/offset mismatch", "{" T("w", "F32", "[2,3]", 0, 20) "}", 20, 0, DUEL_EFORMAT,
     "tensor 'w': data_offsets [0, 20] hold 20 bytes but dtype F32 and its shape need 24"},
    {"shape product overflow", "{" T("w", "F32", "[4294967296,4294967296]", 0, 4) "}", 4, 0,
     DUEL_EFORMAT, "overflows"},
    {"byte count overflow", "{" T("w", "F64", "[4611686018427387904]", 0, 8) "}", 8, 0,
     DUEL_EFORMAT, "overflows"},
    {"negative dim", "{" T("w", "F32", "[-1]", 0, 4) "}", 4, 0, DUEL_EFORMAT,
     "shape[0] is not a non-negative integer"},
    {"float dim", "{" T("w", "F32", "[1.0]", 0, 4) "}", 4, 0, DUEL_EFORMAT,
     "shape[0] is not a non-negative integer"},
    {"too many dims", "{" T("w", "U8", "[1,1,1,1,1,1,1,1,1]", 0, 1) "}", 1, 0,
     DUEL_EUNSUPPORTED, "9 dimensions"},
    {"shape not array", "{" T("w", "F32", "4", 0, 4) "}", 4, 0, DUEL_EFORMAT,
     "\"shape\" is not an array"},
    {"overlap", "{" T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[2]", 4, 12) "}", 12, 0,
     DUEL_EFORMAT, "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
    {"identical ranges", "{" T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[2]", 0, 8) "}", 8, 0,
     DUEL_EFORMAT, "overlap"},
    {"zero-size inside another", "{" T("a", "F32", "[2]", 0, 8) "," T("z", "F32", "[0]", 4, 4) "}",
     8, 0, DUEL_EFORMAT, "overlap"},
    {"hole", "{" T("a", "F32", "[1]", 0, 4) "," T("b", "F32", "[1]", 8, 12) "}", 12, 0,
     DUEL_EFORMAT, "tensor 'b': data_offsets [8, 12] leave a hole of 4 bytes at offset 4"},
    {"hole at start", "{" T("a", "F32", "[1]", 4, 8) "}", 8, 0, DUEL_EFORMAT,
     "leave a hole of 4 bytes at offset 0"},
    {"trailing data", "{" T("a", "F32", "[1]", 0, 4) "}", 8, 0, DUEL_EFORMAT,
     "4 bytes at the end of the data section (size 8) belong to no tensor"},
    {"data but no tensors", "{}", 3, 0, DUEL_EFORMAT, "belong to no tensor"},
    {"end beyond data", "{" T("a", "F32", "[4]", 0, 16) "}", 8, 0, DUEL_EFORMAT,
     "tensor 'a': data_offsets [0, 16] end beyond the data section (size 8)"},
    {"begin after end", "{" T("a", "F32", "[0]", 8, 4) "}", 8, 0, DUEL_EFORMAT,
     "begin after end"},
    {"huge offsets", "{" T("a", "U8", "[1]", 9223372036854775806, 9223372036854775807) "}", 1,
     0, DUEL_EFORMAT, "end beyond the data section (size 1)"},
    {"offset too big for JSON", "{" T("a", "U8", "[1]", 0, 18446744073709551616) "}", 1, 0,
     DUEL_EFORMAT, "invalid JSON"},
    {"negative offset", "{" T("a", "U8", "[1]", -1, 0) "}", 1, 0, DUEL_EFORMAT,
     "\"data_offsets\" are not non-negative integers"},
    {"offsets wrong length", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
     0, DUEL_EFORMAT, "not an array [begin, end]"},
    {"float offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0.0,1.0]}}", 1,
     0, DUEL_EFORMAT, "not non-negative integers"},
    {"entry not object", "{\"a\":[1,2]}", 0, 0, DUEL_EFORMAT, "tensor 'a': entry is not a JSON object"},
    {"entry null", "{\"a\":null}", 0, 0, DUEL_EFORMAT, "entry is not a JSON object"},
    {"extra key",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"offset\":0}}", 1, 0,
     DUEL_EFORMAT, "tensor 'a': unexpected key \"offset\""},
    {"missing key", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, 0, DUEL_EFORMAT,
     "missing \"data_offsets\""},
    {"metadata not object", "{\"__metadata__\":[]}", 0, 0, DUEL_EFORMAT,
     "\"__metadata__\" is not a JSON object"},
    {"metadata value not string", "{\"__metadata__\":{\"n\":1}}", 0, 0, DUEL_EFORMAT,
     "\"__metadata__\" value of \"n\" is not a string"},
};

static void test_bad_headers(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        size_t size, count = 7;
        unsigned char *img = make_image(c->header, c->data_len, c->header_len_override, &size);
        duel_error err = {0};
        int rc = safetensors_validate_buffer(img, size, "bad.safetensors", &count, &err);
        if (rc != c->code || !strstr(err.message, c->message) ||
            !strstr(err.message, "bad.safetensors"))
            fail_msg("case '%s': rc %d (want %d), message \"%s\" (want \"%s\")", c->what, rc,
                     c->code, err.message, c->message);
        assert_int_equal(count, 0);
        assert_int_equal(err.code, c->code);
        free(img);
    }
}

static void test_truncated_files(void **state) {
    (void)state;
    duel_error err = {0};
    unsigned char small[4] = {2, 0, 0, 0};
    assert_int_equal(safetensors_validate_buffer(small, sizeof small, "t.st", NULL, &err),
                     DUEL_EFORMAT);
    assert_contains(err.message, "t.st: truncated: 4 bytes");
    assert_int_equal(safetensors_validate_buffer(NULL, 0, "t.st", NULL, &err), DUEL_EFORMAT);
    /* Every truncation of a valid file is rejected (and never read out of bounds under ASan). */
    size_t size;
    unsigned char *img =
        make_image("{" T("a", "F32", "[2]", 0, 8) "," T("b", "F16", "[3]", 8, 14) "}", 14, 0, &size);
    assert_int_equal(safetensors_validate_buffer(img, size, "t.st", NULL, &err), 0);
    for (size_t cut = 0; cut < size; cut++) {
        unsigned char *copy = malloc(cut ? cut : 1);
        memcpy(copy, img, cut);
        assert_int_not_equal(safetensors_validate_buffer(copy, cut, "t.st", NULL, &err), 0);
        free(copy);
    }
    /* Via the file API: an empty file and a truncated file name the path. */
    char dir[512], path[600];
    test_make_temp_dir("st_trunc", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/empty.safetensors", dir);
    test_write_file(path, "", 0);
    safetensors_archive *ar = (safetensors_archive *)1;
    assert_int_equal(safetensors_open_file(path, &ar, &err), DUEL_EFORMAT);
    assert_null(ar);
    assert_contains(err.message, path);
    assert_contains(err.message, "truncated");
    snprintf(path, sizeof path, "%s/cut.safetensors", dir);
    test_write_file(path, img, size - 1);
    assert_int_equal(safetensors_open_file(path, &ar, &err), DUEL_EFORMAT);
    assert_contains(err.message, path);
    assert_contains(err.message, "tensor 'b': data_offsets [8, 14] end beyond the data section (size 13)");
    assert_int_equal(safetensors_open_file("/nonexistent/m.safetensors", &ar, &err), DUEL_EIO);
    assert_contains(err.message, "/nonexistent/m.safetensors");
    free(img);
    remove_dir(dir);
}

/* ---- writer round trips ------------------------------------------------------------------ */

static void test_write_read_round_trip(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 1234);
    enum { R = 5, C = 7 };
    float f32[R * C];
    uint16_t f16[R * C], bf16[R * C];
    int32_t ids[3] = {-1, 0, 123456};
    for (int i = 0; i < R * C; i++) {
        f32[i] = (float)duel_rng_normal(&rng);
        f16[i] = safetensors_f32_to_f16(f32[i]);
        bf16[i] = safetensors_f32_to_bf16(f32[i]);
    }
    safetensors_write_tensor tensors[] = {
        {"model.layers.0.mlp.up_proj.weight", SAFETENSORS_F32, 2, {R, C}, f32},
        {"half \"quoted\" \\ name", SAFETENSORS_F16, 2, {C, R}, f16},
        {"bf", SAFETENSORS_BF16, 3, {1, R, C}, bf16},
        {"ids", SAFETENSORS_I32, 1, {3}, ids},
        {"nothing", SAFETENSORS_F32, 2, {0, 3}, NULL},
    };
    char dir[512], path[600], tmp[610];
    test_make_temp_dir("st_write", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    duel_error err = {0};
    assert_int_equal(safetensors_write_file(path, tensors, 5, "{\"format\":\"pt\",\"step\":\"7\"}",
                                            &err),
                     0);
    assert_int_not_equal(access(tmp, F_OK), 0); /* the temporary file was renamed away */

    /* The header is padded with spaces so that the data section is 8-byte aligned. */
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char len_bytes[8];
    assert_int_equal(fread(len_bytes, 1, 8, f), 8);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | len_bytes[i];
    assert_int_equal(header_len % 8, 0);
    char *header = malloc(header_len + 1);
    assert_int_equal(fread(header, 1, header_len, f), header_len);
    header[header_len] = '\0';
    fclose(f);
    assert_int_equal(header[0], '{');
    assert_non_null(strstr(header, "\"__metadata__\":{\"format\":\"pt\",\"step\":\"7\"}"));
    free(header);

    safetensors_archive *ar;
    assert_int_equal(safetensors_open_dir(dir, &ar, &err), 0);
    assert_int_equal(safetensors_count(ar), 5);
    assert_string_equal(safetensors_metadata(ar, "step"), "7");
    const void *originals[] = {f32, f16, bf16, ids, NULL};
    size_t sizes[] = {sizeof f32, sizeof f16, sizeof bf16, sizeof ids, 0};
    for (int i = 0; i < 5; i++) {
        const safetensors_tensor *t = safetensors_find(ar, tensors[i].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, tensors[i].dtype);
        assert_int_equal(t->ndim, tensors[i].ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], tensors[i].shape[d]);
        assert_int_equal(t->num_bytes, sizes[i]);
        if (sizes[i]) assert_memory_equal(t->data, originals[i], sizes[i]);
    }
    /* to_f32: exact for F32, and within half an ulp of the dtype for F16/BF16. */
    float out[R * C];
    assert_int_equal(safetensors_to_f32(safetensors_find(ar, tensors[0].name), out, &err), 0);
    assert_memory_equal(out, f32, sizeof f32);
    assert_int_equal(safetensors_to_f32(safetensors_find(ar, tensors[1].name), out, &err), 0);
    double ref[R * C];
    for (int i = 0; i < R * C; i++) ref[i] = f32[i];
    double e16 = test_relative_error(out, ref, R * C);
    assert_true(e16 < 1e-3 && e16 > 0);
    assert_int_equal(safetensors_to_f32(safetensors_find(ar, "bf"), out, &err), 0);
    double ebf = test_relative_error(out, ref, R * C);
    assert_true(ebf < 1e-2 && ebf > e16);
    safetensors_close(ar);

    /* Rewriting replaces the file atomically with the new content. */
    assert_int_equal(safetensors_write_file(path, tensors, 1, NULL, &err), 0);
    assert_int_equal(safetensors_open_file(path, &ar, &err), 0);
    assert_int_equal(safetensors_count(ar), 1);
    assert_null(safetensors_metadata(ar, "format"));
    safetensors_close(ar);
    remove_dir(dir);
}

static void test_write_rejects_bad_input(void **state) {
    (void)state;
    float x[2] = {1, 2};
    duel_error err = {0};
    char dir[512], path[600];
    test_make_temp_dir("st_wbad", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    safetensors_write_tensor dup[] = {{"a", SAFETENSORS_F32, 1, {2}, x},
                                      {"a", SAFETENSORS_F32, 1, {2}, x}};
    assert_int_equal(safetensors_write_file(path, dup, 2, NULL, &err), DUEL_EINVAL);
    assert_contains(err.message, "'a'");
    safetensors_write_tensor reserved[] = {{"__metadata__", SAFETENSORS_F32, 1, {2}, x}};
    assert_int_equal(safetensors_write_file(path, reserved, 1, NULL, &err), DUEL_EINVAL);
    safetensors_write_tensor negative[] = {{"a", SAFETENSORS_F32, 1, {-2}, x}};
    assert_int_equal(safetensors_write_file(path, negative, 1, NULL, &err), DUEL_EINVAL);
    safetensors_write_tensor nodata[] = {{"a", SAFETENSORS_F32, 1, {2}, NULL}};
    assert_int_equal(safetensors_write_file(path, nodata, 1, NULL, &err), DUEL_EINVAL);
    safetensors_write_tensor ok[] = {{"a", SAFETENSORS_F32, 1, {2}, x}};
    assert_int_equal(safetensors_write_file(path, ok, 1, "{\"n\":1}", &err), DUEL_EINVAL);
    assert_contains(err.message, "not a string");
    assert_int_equal(safetensors_write_file(path, ok, 1, "{bad", &err), DUEL_EFORMAT);
    assert_int_not_equal(access(path, F_OK), 0); /* nothing was written */
    assert_int_equal(safetensors_write_file("/nonexistent/dir/w.safetensors", ok, 1, NULL, &err),
                     DUEL_EIO);
    assert_contains(err.message, "/nonexistent/dir/w.safetensors.tmp");
    remove_dir(dir);
}

/* Fault injection: the final rename fails (the target is a non-empty directory), so the call
 * fails with DUEL_EIO, leaves the target alone and removes its temporary file. */
static void test_write_rename_failure(void **state) {
    (void)state;
    float x[2] = {1, 2};
    safetensors_write_tensor ok[] = {{"a", SAFETENSORS_F32, 1, {2}, x}};
    char dir[512], target[600], inner[700], tmp[610];
    test_make_temp_dir("st_wfail", dir, sizeof dir);
    snprintf(target, sizeof target, "%s/model.safetensors", dir);
    snprintf(inner, sizeof inner, "%s/keep", target);
    snprintf(tmp, sizeof tmp, "%s.tmp", target);
    assert_int_equal(mkdir(target, 0755), 0);
    test_write_file(inner, "x", 1);
    duel_error err = {0};
    assert_int_equal(safetensors_write_file(target, ok, 1, NULL, &err), DUEL_EIO);
    assert_contains(err.message, "cannot rename");
    assert_int_not_equal(access(tmp, F_OK), 0);
    assert_int_equal(access(inner, F_OK), 0);
    unlink(inner);
    rmdir(target);
    remove_dir(dir);
}

/* Many tensors: the validator and the name lookup stay fast (sorting, not quadratic scans). */
static void test_many_tensors(void **state) {
    (void)state;
    enum { N = 20000 };
    safetensors_write_tensor *tensors = calloc(N, sizeof *tensors);
    char (*names)[32] = calloc(N, sizeof *names);
    uint16_t *values = calloc(N, sizeof *values);
    assert_true(tensors && names && values);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.w", N - i);
        values[i] = safetensors_f32_to_bf16((float)i);
        tensors[i] = (safetensors_write_tensor){names[i], SAFETENSORS_BF16, 1, {1}, &values[i]};
    }
    char dir[512], path[600];
    test_make_temp_dir("st_many", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/many.safetensors", dir);
    duel_error err = {0};
    assert_int_equal(safetensors_write_file(path, tensors, N, NULL, &err), 0);
    safetensors_archive *ar;
    assert_int_equal(safetensors_open_file(path, &ar, &err), 0);
    assert_int_equal(safetensors_count(ar), N);
    for (int i = 0; i < N; i += 997) {
        const safetensors_tensor *t = safetensors_find(ar, names[i]);
        assert_non_null(t);
        float v;
        assert_int_equal(safetensors_to_f32(t, &v, &err), 0);
        assert_true(v == safetensors_bf16_to_f32(values[i]));
    }
    for (size_t i = 1; i < safetensors_count(ar); i++)
        assert_true(strcmp(safetensors_at(ar, i - 1)->name, safetensors_at(ar, i)->name) < 0);
    safetensors_close(ar);
    free(tensors);
    free(names);
    free(values);
    remove_dir(dir);
}

/* ---- safetensors_expect ------------------------------------------------------------------ */

static void test_expect(void **state) {
    (void)state;
    float w[6] = {1, 2, 3, 4, 5, 6};
    int64_t ids[2] = {1, 2};
    safetensors_write_tensor tensors[] = {{"w", SAFETENSORS_F32, 2, {2, 3}, w},
                                          {"ids", SAFETENSORS_I64, 1, {2}, ids}};
    char dir[512], path[600];
    test_make_temp_dir("st_expect", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/e.safetensors", dir);
    duel_error err = {0};
    assert_int_equal(safetensors_write_file(path, tensors, 2, NULL, &err), 0);
    safetensors_archive *ar;
    assert_int_equal(safetensors_open_file(path, &ar, &err), 0);
    const safetensors_tensor *t = NULL;
    int64_t good[2] = {2, 3}, bad[2] = {3, 2};
    assert_int_equal(safetensors_expect(ar, "w", 2, good, &t, &err), 0);
    assert_non_null(t);
    assert_int_equal(safetensors_expect(ar, "w", 2, bad, &t, &err), DUEL_EFORMAT);
    assert_null(t);
    assert_contains(err.message, path);
    assert_contains(err.message, "tensor 'w' has shape [2, 3], expected [3, 2]");
    assert_int_equal(safetensors_expect(ar, "w", 1, good, &t, &err), DUEL_EFORMAT);
    assert_contains(err.message, "expected [2]");
    assert_int_equal(safetensors_expect(ar, "model.norm.weight", 1, good, &t, &err),
                     DUEL_ENOTFOUND);
    assert_contains(err.message, "tensor 'model.norm.weight' is missing");
    assert_int_equal(safetensors_expect(ar, "ids", 1, good, &t, &err), DUEL_EUNSUPPORTED);
    assert_contains(err.message, "I64");
    safetensors_close(ar);
    remove_dir(dir);
}

/* ---- sharded checkpoints ----------------------------------------------------------------- */

static const char *SHARD1 = "model-00001-of-00002.safetensors";
static const char *SHARD2 = "model-00002-of-00002.safetensors";

/* Writes shard 1 = {a, b}, shard 2 = {c} and the given index text. */
static void make_sharded(const char *dir, const char *index_json) {
    static float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[3] = {7, 8, 9};
    safetensors_write_tensor s1[] = {{"a", SAFETENSORS_F32, 2, {2, 2}, a},
                                     {"b", SAFETENSORS_F32, 1, {2}, b}};
    safetensors_write_tensor s2[] = {{"c", SAFETENSORS_F32, 1, {3}, c}};
    char path[700];
    duel_error err = {0};
    snprintf(path, sizeof path, "%s/%s", dir, SHARD1);
    assert_int_equal(safetensors_write_file(path, s1, 2, NULL, &err), 0);
    snprintf(path, sizeof path, "%s/%s", dir, SHARD2);
    assert_int_equal(safetensors_write_file(path, s2, 1, NULL, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    test_write_file(path, index_json, strlen(index_json));
}

#define INDEX(a, b, c)                                                                           \
    "{\"metadata\":{\"total_size\":36},\"weight_map\":{\"a\":\"" a "\",\"b\":\"" b              \
    "\",\"c\":\"" c "\"}}"
#define S1 "model-00001-of-00002.safetensors"
#define S2 "model-00002-of-00002.safetensors"

static void test_sharded_ok(void **state) {
    (void)state;
    char dir[512];
    test_make_temp_dir("st_shard", dir, sizeof dir);
    make_sharded(dir, INDEX(S1, S1, S2));
    safetensors_archive *ar;
    duel_error err = {0};
    assert_int_equal(safetensors_open_dir(dir, &ar, &err), 0);
    assert_int_equal(safetensors_count(ar), 3);
    const safetensors_tensor *c = safetensors_find(ar, "c");
    assert_non_null(c);
    assert_non_null(strstr(c->file, SHARD2));
    assert_non_null(strstr(safetensors_find(ar, "a")->file, SHARD1));
    float out[3];
    assert_int_equal(safetensors_to_f32(c, out, &err), 0);
    assert_true(out[0] == 7 && out[1] == 8 && out[2] == 9);
    safetensors_close(ar);
    remove_dir(dir);
}

typedef struct shard_case {
    const char *what;
    const char *index;
    int code;
    const char *message;
} shard_case;

static const shard_case shard_cases[] = {
    {"missing shard", INDEX(S1, S1, "model-00003-of-00003.safetensors"), DUEL_EIO,
     "model-00003-of-00003.safetensors: cannot open"},
    {"tensor in wrong shard", INDEX(S1, S2, S2), DUEL_EFORMAT,
     "tensor 'b' is mapped to " S2 " but is stored in"},
    {"tensor in no shard",
     "{\"weight_map\":{\"a\":\"" S1 "\",\"b\":\"" S1 "\",\"c\":\"" S2 "\",\"d\":\"" S2 "\"}}",
     DUEL_ENOTFOUND, "tensor 'd' is mapped to " S2 ", which does not contain it"},
    {"tensor not in index", "{\"weight_map\":{\"a\":\"" S1 "\",\"c\":\"" S2 "\"}}", DUEL_EFORMAT,
     "tensor 'b' is not listed in the weight_map"},
    {"path traversal", INDEX(S1, S1, "../" S2), DUEL_EFORMAT, "not a plain file name"},
    {"dot dot", INDEX(S1, S1, ".."), DUEL_EFORMAT, "not a plain file name"},
    {"absolute path", INDEX(S1, S1, "/etc/passwd"), DUEL_EFORMAT, "not a plain file name"},
    {"empty shard name", INDEX(S1, S1, ""), DUEL_EFORMAT, "not a plain file name"},
    {"no weight_map", "{\"metadata\":{}}", DUEL_EFORMAT, "\"weight_map\" is missing"},
    {"weight_map value not string", "{\"weight_map\":{\"a\":1}}", DUEL_EFORMAT,
     "weight_map entry 'a' is not a string"},
    {"index not object", "[]", DUEL_EFORMAT, "not a JSON object"},
    {"index invalid json", "{\"weight_map\":", DUEL_EFORMAT, "invalid JSON"},
    {"index duplicate key",
     "{\"weight_map\":{\"a\":\"" S1 "\",\"a\":\"" S1 "\"}}", DUEL_EFORMAT, "duplicate"},
};

static void test_sharded_bad(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof shard_cases / sizeof shard_cases[0]; i++) {
        const shard_case *c = &shard_cases[i];
        char dir[512];
        test_make_temp_dir("st_shardbad", dir, sizeof dir);
        make_sharded(dir, c->index);
        safetensors_archive *ar = NULL;
        duel_error err = {0};
        int rc = safetensors_open_dir(dir, &ar, &err);
        if (rc != c->code || !strstr(err.message, c->message) || !strstr(err.message, dir))
            fail_msg("case '%s': rc %d (want %d), message \"%s\" (want \"%s\")", c->what, rc,
                     c->code, err.message, c->message);
        assert_null(ar);
        remove_dir(dir);
    }
}

static void test_sharded_duplicate_tensor(void **state) {
    (void)state;
    char dir[512], path[700];
    test_make_temp_dir("st_sharddup", dir, sizeof dir);
    make_sharded(dir, INDEX(S1, S1, S2));
    /* Rewrite shard 2 so that it also holds 'a'. */
    float a[4] = {0}, c[3] = {0};
    safetensors_write_tensor s2[] = {{"c", SAFETENSORS_F32, 1, {3}, c},
                                     {"a", SAFETENSORS_F32, 2, {2, 2}, a}};
    snprintf(path, sizeof path, "%s/%s", dir, SHARD2);
    duel_error err = {0};
    assert_int_equal(safetensors_write_file(path, s2, 2, NULL, &err), 0);
    safetensors_archive *ar;
    assert_int_equal(safetensors_open_dir(dir, &ar, &err), DUEL_EFORMAT);
    assert_contains(err.message, "tensor 'a' is in both");
    /* A corrupt shard is reported with the shard's path. */
    test_write_file(path, "\x10\0\0\0\0\0\0\0{\"c\":", 13);
    assert_int_equal(safetensors_open_dir(dir, &ar, &err), DUEL_EFORMAT);
    assert_contains(err.message, path);
    remove_dir(dir);
}

static void test_open_dir_missing(void **state) {
    (void)state;
    char dir[512];
    test_make_temp_dir("st_nodir", dir, sizeof dir);
    safetensors_archive *ar;
    duel_error err = {0};
    assert_int_equal(safetensors_open_dir(dir, &ar, &err), DUEL_ENOTFOUND);
    assert_contains(err.message, dir);
    assert_contains(err.message, "model.safetensors.index.json");
    remove_dir(dir);
}

/* ---- conversions ------------------------------------------------------------------------- */

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct known_value {
    float value;
    uint16_t f16, bf16;
} known_value;

/* Encodings worked out by hand: sign | exponent | mantissa. */
static const known_value known[] = {
    {1.0f, 0x3c00, 0x3f80},
    {-2.5f, 0xc100, 0xc020},     /* -1.25 * 2^1 */
    {0.5f, 0x3800, 0x3f00},
    {65504.0f, 0x7bff, 0x4780},  /* f16 max; bf16 rounds 0x477fe000 up to 65536 */
    {0.0f, 0x0000, 0x0000},
    {-0.0f, 0x8000, 0x8000},
    {0x1p-24f, 0x0001, 0x3380},  /* smallest f16 subnormal */
    {-0x1p-24f, 0x8001, 0xb380},
    {0x1.ff8p-15f, 0x03ff, 0x3880}, /* largest f16 subnormal 1023 * 2^-24; bf16 rounds up to 2^-14 */
    {0x1p-14f, 0x0400, 0x3880},  /* smallest f16 normal */
    {0x1.554p-2f, 0x3555, 0x3eab}, /* 0.333251953125; bf16 rounds 0x3eaaa000 up */
    {INFINITY, 0x7c00, 0x7f80},
    {-INFINITY, 0xfc00, 0xff80},
};

static void test_known_conversions(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        const known_value *k = &known[i];
        assert_int_equal(safetensors_f32_to_f16(k->value), k->f16);
        assert_int_equal(safetensors_f32_to_bf16(k->value), k->bf16);
        assert_int_equal(bits_of(safetensors_f16_to_f32(k->f16)), bits_of(k->value));
    }
    assert_int_equal(bits_of(safetensors_bf16_to_f32(0xc020)), bits_of(-2.5f));
    assert_true(safetensors_bf16_to_f32(0x4780) == 65536.0f);
    /* Rounding to nearest even, f16: ties go to the even mantissa; overflow to infinity. */
    assert_int_equal(safetensors_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);       /* tie, down */
    assert_int_equal(safetensors_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);   /* tie, up */
    assert_int_equal(safetensors_f32_to_f16(1.0f + 0x1.2p-11f), 0x3c01);     /* above tie */
    assert_int_equal(safetensors_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(safetensors_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(safetensors_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(safetensors_f32_to_f16(0x1p-25f), 0x0000);              /* tie to 0 */
    assert_int_equal(safetensors_f32_to_f16(0x1.8p-25f), 0x0001);
    assert_int_equal(safetensors_f32_to_f16(3 * 0x1p-25f), 0x0002);          /* tie to even */
    assert_int_equal(safetensors_f32_to_f16(0x1p-30f), 0x0000);
    assert_int_equal(safetensors_f32_to_f16(0x1.ffcp-15f), 0x0400);          /* subnormal -> normal */
    /* bf16 */
    assert_int_equal(safetensors_f32_to_bf16(float_of(0x3f808000)), 0x3f80);
    assert_int_equal(safetensors_f32_to_bf16(float_of(0x3f818000)), 0x3f82);
    assert_int_equal(safetensors_f32_to_bf16(float_of(0x3f808001)), 0x3f81);
    assert_int_equal(safetensors_f32_to_bf16(float_of(0x7f7fffff)), 0x7f80); /* FLT_MAX -> inf */
    assert_int_equal(safetensors_f32_to_bf16(float_of(0x00000001)), 0x0000); /* f32 subnormal */
    /* NaN stays NaN (quiet) both ways. */
    assert_true(isnan(safetensors_f16_to_f32(0x7e00)));
    assert_true(isnan(safetensors_f16_to_f32(0x7c01)));
    assert_true(isnan(safetensors_bf16_to_f32(0x7fc0)));
    uint16_t h = safetensors_f32_to_f16(NAN);
    assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    h = safetensors_f32_to_f16(float_of(0x7f800001)); /* signalling NaN with a low payload */
    assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    uint16_t b = safetensors_f32_to_bf16(float_of(0x7f800001));
    assert_true((b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0);
}

static void test_exhaustive_round_trip(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        bool f16_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        bool bf16_nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        float f = safetensors_f16_to_f32((uint16_t)h);
        if (f16_nan)
            assert_true(isnan(f));
        else
            assert_int_equal(safetensors_f32_to_f16(f), h);
        float g = safetensors_bf16_to_f32((uint16_t)h);
        if (bf16_nan)
            assert_true(isnan(g));
        else
            assert_int_equal(safetensors_f32_to_bf16(g), h);
    }
    /* f16 decode against the definition (-1)^s * 2^(e-15) * (1 + m/1024), or m * 2^-24. */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        uint32_t e = h >> 10, m = h & 0x3ff;
        double v = e ? ldexp(1.0 + m / 1024.0, (int)e - 15) : ldexp((double)m, -24);
        assert_true((double)safetensors_f16_to_f32((uint16_t)h) == v);
        assert_true((double)safetensors_f16_to_f32((uint16_t)(h | 0x8000)) == -v);
    }
}

/* Independent reference: the nearest representable value by search over the decoded table
 * (double arithmetic), ties to the even encoding. */
static uint16_t reference_round(double x, const double *table, uint32_t max_finite,
                                uint16_t inf_bits, double overflow_at) {
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs(x);
    if (a >= overflow_at) return sign | inf_bits;
    uint32_t lo = 0, hi = max_finite; /* table[lo] <= a < table[hi] eventually */
    if (a >= table[max_finite]) return sign | (uint16_t)max_finite;
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (table[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - table[lo], dh = table[hi] - a;
    uint32_t pick = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
    return sign | (uint16_t)pick;
}

static void test_rounding_against_reference(void **state) {
    (void)state;
    static double f16_table[0x7c00], bf16_table[0x7f80];
    for (uint32_t h = 0; h < 0x7c00; h++) {
        uint32_t e = h >> 10, m = h & 0x3ff;
        f16_table[h] = e ? ldexp(1.0 + m / 1024.0, (int)e - 15) : ldexp((double)m, -24);
    }
    for (uint32_t h = 0; h < 0x7f80; h++) {
        uint32_t e = h >> 7, m = h & 0x7f;
        bf16_table[h] = e ? ldexp(1.0 + m / 128.0, (int)e - 127) : ldexp((double)m, -133);
    }
    /* Halfway between max finite and the next power: 65520 for f16, for bf16 (2 - 2^-8) * 2^127. */
    double f16_overflow = 65520.0, bf16_overflow = ldexp(2.0 - 0x1p-8, 127);
    duel_rng rng;
    duel_rng_seed(&rng, 99);
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)duel_rng_next_u64(&rng);
        /* Half the samples in and around the f16 range (2^-27 .. 2^17), a quarter of those
         * exact f16 ties (low 13 mantissa bits 0x1000). */
        if (i % 2) u = (u & 0x807fffffu) | ((uint32_t)(100 + duel_rng_below(&rng, 45)) << 23);
        if (i % 4 == 1) u = (u & ~0x1fffu) | 0x1000u;
        float f = float_of(u);
        if (isnan(f)) continue;
        uint16_t want16 = reference_round(f, f16_table, 0x7bff, 0x7c00, f16_overflow);
        uint16_t want_bf = reference_round(f, bf16_table, 0x7f7f, 0x7f80, bf16_overflow);
        if (safetensors_f32_to_f16(f) != want16)
            fail_msg("f16(%a = 0x%08x): got 0x%04x want 0x%04x", (double)f, u,
                     safetensors_f32_to_f16(f), want16);
        if (safetensors_f32_to_bf16(f) != want_bf)
            fail_msg("bf16(%a = 0x%08x): got 0x%04x want 0x%04x", (double)f, u,
                     safetensors_f32_to_bf16(f), want_bf);
#ifdef __FLT16_MAX__
        _Float16 hf = (_Float16)f; /* the compiler's own IEEE conversion, where available */
        uint16_t hb;
        memcpy(&hb, &hf, 2);
        assert_int_equal(safetensors_f32_to_f16(f), hb);
#endif
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_names_and_sizes),
        cmocka_unit_test(test_valid_hand_built),
        cmocka_unit_test(test_open_memory),
        cmocka_unit_test(test_empty_header_is_valid),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_truncated_files),
        cmocka_unit_test(test_write_read_round_trip),
        cmocka_unit_test(test_write_rejects_bad_input),
        cmocka_unit_test(test_write_rename_failure),
        cmocka_unit_test(test_many_tensors),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_sharded_ok),
        cmocka_unit_test(test_sharded_bad),
        cmocka_unit_test(test_sharded_duplicate_tensor),
        cmocka_unit_test(test_open_dir_missing),
        cmocka_unit_test(test_known_conversions),
        cmocka_unit_test(test_exhaustive_round_trip),
        cmocka_unit_test(test_rounding_against_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
