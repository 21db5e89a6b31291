/* safetensors.c: reading, validating and writing Hugging Face safetensors files (see
 * safetensors.h).
 *
 * A file is "8-byte little-endian header length N, N bytes of JSON, data section". Everything in
 * the header is untrusted: it is parsed in one place (parse_file_image) which checks the length,
 * strict JSON, every entry's keys and types, dtypes, shape products against byte ranges (with
 * overflow checks), ranges inside the data section, and that the ranges tile the data section
 * exactly (no overlaps, no holes, nothing after the last tensor: the reference implementation's
 * rule). Only after that are tensors handed out.
 *
 * Invariant of an open archive: its tensors array is sorted by name (strcmp) with unique names,
 * so safetensors_find is a binary search and safetensors_at(i) iterates in name order. Tensor data
 * points into read-only file maps and may be unaligned (the header length need not be a multiple
 * of 8 in files written by others): read it with memcpy or safetensors_to_f32. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file_map.h"
#include "float16.h"
#include "json_util.h"

#define SAFETENSORS_INDEX_NAME "model.safetensors.index.json"
#define SAFETENSORS_SINGLE_NAME "model.safetensors"
#define SAFETENSORS_MAX_INDEX_BYTES (64u << 20) /* bytes; weight maps of huge models are ~1 MiB */
#define SAFETENSORS_MAX_SHARDS 4096
#define SAFETENSORS_MAX_SHARD_NAME 255 /* bytes, one path component */

typedef struct safetensors_file {
    char *path;
    duel_file_map map;
    json_t *metadata; /* the "__metadata__" object, or NULL */
} safetensors_file;

struct safetensors_archive {
    char *source; /* the directory or file it was opened from */
    safetensors_file *files;
    size_t num_files;
    safetensors_tensor *tensors; /* sorted by name; names owned */
    size_t count;
};

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [SAFETENSORS_F32] = {"F32", 4}, [SAFETENSORS_F16] = {"F16", 2}, [SAFETENSORS_BF16] = {"BF16", 2},
    [SAFETENSORS_F64] = {"F64", 8}, [SAFETENSORS_I64] = {"I64", 8}, [SAFETENSORS_I32] = {"I32", 4},
    [SAFETENSORS_I16] = {"I16", 2}, [SAFETENSORS_I8] = {"I8", 1},   [SAFETENSORS_U8] = {"U8", 1},
    [SAFETENSORS_BOOL] = {"BOOL", 1},
};
#define DTYPE_COUNT (sizeof dtype_table / sizeof dtype_table[0])

const char *safetensors_dtype_name(safetensors_dtype dtype) {
    return (unsigned)dtype < DTYPE_COUNT ? dtype_table[dtype].name : "?";
}

size_t safetensors_dtype_size(safetensors_dtype dtype) {
    return (unsigned)dtype < DTYPE_COUNT ? dtype_table[dtype].size : 0;
}

static bool dtype_from_name(const char *name, safetensors_dtype *out) {
    for (size_t i = 0; i < DTYPE_COUNT; i++) {
        if (strcmp(dtype_table[i].name, name) == 0) {
            *out = (safetensors_dtype)i;
            return true;
        }
    }
    return false;
}

static bool dtype_is_float(safetensors_dtype d) {
    return d == SAFETENSORS_F32 || d == SAFETENSORS_F16 || d == SAFETENSORS_BF16;
}

/* ---- scalar conversions ------------------------------------------------------------------ */

/* The scalar conversions live in common/float16.c (vote entries read f16 too). */
float safetensors_bf16_to_f32(uint16_t h) { return duel_bf16_to_f32(h); }
uint16_t safetensors_f32_to_bf16(float f) { return duel_f32_to_bf16(f); }
float safetensors_f16_to_f32(uint16_t h) { return duel_f16_to_f32(h); }
uint16_t safetensors_f32_to_f16(float f) { return duel_f32_to_f16(f); }

/* ---- header parsing ---------------------------------------------------------------------- */

typedef struct parsed_range {
    uint64_t begin, end;
    size_t index; /* into the tensors array */
} parsed_range;

static int compare_ranges(const void *a, const void *b) {
    const parsed_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static void free_tensor_names(safetensors_tensor *tensors, size_t count) {
    for (size_t i = 0; i < count; i++) free((char *)tensors[i].name);
}

static uint64_t read_u64_le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Reads a JSON non-negative integer that must fit in 63 bits. */
static bool json_to_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return false;
    json_int_t x = json_integer_value(v);
    if (x < 0) return false;
    *out = (uint64_t)x;
    return true;
}

static int parse_entry(const char *source, const char *name, const json_t *entry,
                       uint64_t data_size, safetensors_tensor *t, parsed_range *range,
                       duel_error *err) {
    if (!json_is_object(entry))
        return duel_error_set(err, DUEL_EFORMAT, "%s: tensor '%s': entry is not a JSON object",
                              source, name);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)entry, key, value) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: tensor '%s': unexpected key \"%s\" (allowed: dtype, shape, "
                                  "data_offsets)",
                                  source, name, key);
    }
    const json_t *dtype = json_object_get(entry, "dtype");
    const json_t *shape = json_object_get(entry, "shape");
    const json_t *offsets = json_object_get(entry, "data_offsets");
    if (!dtype || !shape || !offsets)
        return duel_error_set(err, DUEL_EFORMAT, "%s: tensor '%s': missing \"%s\"", source, name,
                              !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!json_is_string(dtype))
        return duel_error_set(err, DUEL_EFORMAT, "%s: tensor '%s': \"dtype\" is not a string",
                              source, name);
    if (!dtype_from_name(json_string_value(dtype), &t->dtype))
        return duel_error_set(err, DUEL_EUNSUPPORTED, "%s: tensor '%s': unknown dtype \"%s\"",
                              source, name, json_string_value(dtype));
    if (!json_is_array(shape))
        return duel_error_set(err, DUEL_EFORMAT, "%s: tensor '%s': \"shape\" is not an array",
                              source, name);
    size_t ndim = json_array_size(shape);
    if (ndim > SAFETENSORS_MAX_DIMS)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: tensor '%s': %zu dimensions, at most %d supported", source,
                              name, ndim, SAFETENSORS_MAX_DIMS);
    t->ndim = (int)ndim;
    uint64_t elements = 1;
    bool overflow = false;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        if (!json_to_u64(json_array_get(shape, i), &d))
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                                  source, name, i);
        t->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(elements, d, &elements)) overflow = true;
    }
    uint64_t num_bytes;
    if (overflow || elements > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow(elements, (uint64_t)safetensors_dtype_size(t->dtype), &num_bytes))
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: tensor '%s': shape product overflows 64 bits", source, name);
    t->num_elements = (int64_t)elements;
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: tensor '%s': \"data_offsets\" is not an array [begin, end]",
                              source, name);
    uint64_t begin, end;
    if (!json_to_u64(json_array_get(offsets, 0), &begin) ||
        !json_to_u64(json_array_get(offsets, 1), &end))
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: tensor '%s': \"data_offsets\" are not non-negative integers",
                              source, name);
    if (begin > end)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: tensor '%s': data_offsets [%llu, %llu] begin after end", source,
                              name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: tensor '%s': data_offsets [%llu, %llu] end beyond the data "
                              "section (size %llu)",
                              source, name, (unsigned long long)begin, (unsigned long long)end,
                              (unsigned long long)data_size);
    if (end - begin != num_bytes)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but "
                              "dtype %s and its shape need %llu",
                              source, name, (unsigned long long)begin, (unsigned long long)end,
                              (unsigned long long)(end - begin), safetensors_dtype_name(t->dtype),
                              (unsigned long long)num_bytes);
    t->num_bytes = (size_t)num_bytes;
    range->begin = begin;
    range->end = end;
    return DUEL_OK;
}

static int check_metadata(const char *source, const json_t *metadata, duel_error *err) {
    if (!json_is_object(metadata))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"__metadata__\" is not a JSON object",
                              source);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)metadata, key, value) {
        if (!json_is_string(value))
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: \"__metadata__\" value of \"%s\" is not a string", source,
                                  key);
    }
    return DUEL_OK;
}

/* Checks that the sorted ranges tile [0, data_size) exactly. */
static int check_coverage(const char *source, const safetensors_tensor *tensors,
                          const parsed_range *ranges, size_t count, uint64_t data_size,
                          duel_error *err) {
    uint64_t expected = 0;
    for (size_t i = 0; i < count; i++) {
        const parsed_range *r = &ranges[i];
        const char *name = tensors[r->index].name;
        if (r->begin < expected) {
            const parsed_range *p = &ranges[i - 1]; /* expected > 0 implies i > 0 */
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor "
                                  "'%s' [%llu, %llu]",
                                  source, name, (unsigned long long)r->begin,
                                  (unsigned long long)r->end, tensors[p->index].name,
                                  (unsigned long long)p->begin, (unsigned long long)p->end);
        }
        if (r->begin > expected)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: tensor '%s': data_offsets [%llu, %llu] leave a hole of "
                                  "%llu bytes at offset %llu (tensors must cover the data section "
                                  "contiguously)",
                                  source, name, (unsigned long long)r->begin,
                                  (unsigned long long)r->end,
                                  (unsigned long long)(r->begin - expected),
                                  (unsigned long long)expected);
        expected = r->end;
    }
    if (expected != data_size)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: %llu bytes at the end of the data section (size %llu) belong "
                              "to no tensor (tensors must cover the data section contiguously)",
                              source, (unsigned long long)(data_size - expected),
                              (unsigned long long)data_size);
    return DUEL_OK;
}

/* Validates the file image data[0..size) and returns its tensors (names owned by the caller,
 * data pointers into data, file = source) in header order, and the "__metadata__" object
 * (a new reference, or NULL). */
static int parse_file_image(const unsigned char *data, size_t size, const char *source,
                            safetensors_tensor **out_tensors, size_t *out_count,
                            json_t **out_metadata, duel_error *err) {
    *out_tensors = NULL;
    *out_count = 0;
    if (out_metadata) *out_metadata = NULL;
    if (size < 8)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: truncated: %zu bytes, shorter than the 8-byte header length",
                              source, size);
    uint64_t header_len = read_u64_le(data);
    if (header_len > SAFETENSORS_MAX_HEADER_BYTES)
        return duel_error_set(err, DUEL_ELIMIT,
                              "%s: header length %llu exceeds the limit of %u bytes", source,
                              (unsigned long long)header_len, SAFETENSORS_MAX_HEADER_BYTES);
    if (header_len > size - 8)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: truncated: header length %llu but only %zu bytes follow the "
                              "length field",
                              source, (unsigned long long)header_len, size - 8);
    if (header_len < 2 || data[8] != '{')
        return duel_error_set(err, DUEL_EFORMAT, "%s: header does not start with a JSON object",
                              source);
    json_t *root;
    int rc = duel_json_parse((const char *)data + 8, (size_t)header_len, source, &root, err);
    if (rc) return rc;
    if (!json_is_object(root)) {
        json_decref(root);
        return duel_error_set(err, DUEL_EFORMAT, "%s: header is not a JSON object", source);
    }
    const unsigned char *data_section = data + 8 + header_len;
    uint64_t data_size = size - 8 - header_len;
    size_t capacity = json_object_size(root);
    safetensors_tensor *tensors = calloc(capacity ? capacity : 1, sizeof *tensors);
    parsed_range *ranges = calloc(capacity ? capacity : 1, sizeof *ranges);
    size_t count = 0;
    json_t *metadata = NULL;
    if (!tensors || !ranges) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory for %zu header entries", source,
                            capacity);
        goto fail;
    }
    const char *name;
    json_t *entry;
    json_object_foreach(root, name, entry) {
        if (strcmp(name, "__metadata__") == 0) {
            rc = check_metadata(source, entry, err);
            if (rc) goto fail;
            metadata = entry;
            continue;
        }
        safetensors_tensor *t = &tensors[count];
        rc = parse_entry(source, name, entry, data_size, t, &ranges[count], err);
        if (rc) goto fail;
        t->name = strdup(name);
        if (!t->name) {
            rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
            goto fail;
        }
        t->data = data_section + ranges[count].begin;
        t->file = source;
        ranges[count].index = count;
        count++;
    }
    qsort(ranges, count, sizeof *ranges, compare_ranges);
    rc = check_coverage(source, tensors, ranges, count, data_size, err);
    if (rc) goto fail;
    free(ranges);
    if (out_metadata && metadata) *out_metadata = json_incref(metadata);
    json_decref(root);
    *out_tensors = tensors;
    *out_count = count;
    return DUEL_OK;
fail:
    free_tensor_names(tensors, count);
    free(tensors);
    free(ranges);
    json_decref(root);
    return rc;
}

int safetensors_validate_buffer(const unsigned char *data, size_t size, const char *source,
                                size_t *count, duel_error *err) {
    if (count) *count = 0;
    if (!data && size) return duel_error_set(err, DUEL_EINVAL, "%s: NULL buffer", source);
    safetensors_tensor *tensors;
    size_t n;
    int rc = parse_file_image(data, size, source ? source : "(buffer)", &tensors, &n, NULL, err);
    if (rc) return rc;
    free_tensor_names(tensors, n);
    free(tensors);
    if (count) *count = n;
    return DUEL_OK;
}

/* ---- archives ---------------------------------------------------------------------------- */

static int compare_tensor_names(const void *a, const void *b) {
    const safetensors_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

void safetensors_close(safetensors_archive *archive) {
    if (!archive) return;
    free_tensor_names(archive->tensors, archive->count);
    free(archive->tensors);
    for (size_t i = 0; i < archive->num_files; i++) {
        duel_file_map_close(&archive->files[i].map);
        if (archive->files[i].metadata) json_decref(archive->files[i].metadata);
        free(archive->files[i].path);
    }
    free(archive->files);
    free(archive->source);
    free(archive);
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t n = a;
    if (a && dir[a - 1] != '/') p[n++] = '/';
    memcpy(p + n, name, b + 1);
    return p;
}

static safetensors_archive *archive_new(const char *source, size_t num_files, duel_error *err) {
    safetensors_archive *a = calloc(1, sizeof *a);
    if (a) {
        a->source = strdup(source);
        a->files = calloc(num_files ? num_files : 1, sizeof *a->files);
    }
    if (!a || !a->source || !a->files) {
        if (a) {
            free(a->source);
            free(a->files);
            free(a);
        }
        duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
        return NULL;
    }
    return a;
}

/* Maps and validates one file into archive->files[archive->num_files], appending its tensors
 * (unsorted) to archive->tensors. */
static int archive_add_file(safetensors_archive *archive, const char *path, duel_error *err) {
    safetensors_file *f = &archive->files[archive->num_files];
    f->path = strdup(path);
    if (!f->path) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
    archive->num_files++;
    int rc = duel_file_map_open(path, &f->map, err);
    if (rc) return rc;
    safetensors_tensor *tensors;
    size_t n;
    rc = parse_file_image(f->map.data, f->map.size, f->path, &tensors, &n, &f->metadata, err);
    if (rc) return rc;
    safetensors_tensor *all = realloc(archive->tensors, (archive->count + n + 1) * sizeof *all);
    if (!all) {
        free_tensor_names(tensors, n);
        free(tensors);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
    }
    memcpy(all + archive->count, tensors, n * sizeof *tensors);
    archive->tensors = all;
    archive->count += n;
    free(tensors);
    return DUEL_OK;
}

/* Sorts the tensors by name and rejects a name present in two files. */
static int archive_index(safetensors_archive *archive, duel_error *err) {
    if (archive->count > 1)
        qsort(archive->tensors, archive->count, sizeof *archive->tensors, compare_tensor_names);
    for (size_t i = 1; i < archive->count; i++) {
        if (strcmp(archive->tensors[i - 1].name, archive->tensors[i].name) == 0)
            return duel_error_set(err, DUEL_EFORMAT, "%s: tensor '%s' is in both %s and %s",
                                  archive->source, archive->tensors[i].name,
                                  archive->tensors[i - 1].file, archive->tensors[i].file);
    }
    return DUEL_OK;
}

int safetensors_open_file(const char *path, safetensors_archive **out, duel_error *err) {
    *out = NULL;
    safetensors_archive *a = archive_new(path, 1, err);
    if (!a) return DUEL_ENOMEM;
    int rc = archive_add_file(a, path, err);
    if (!rc) rc = archive_index(a, err);
    if (rc) {
        safetensors_close(a);
        return rc;
    }
    *out = a;
    return DUEL_OK;
}

int safetensors_open_memory(const unsigned char *data, size_t size, const char *source,
                            safetensors_archive **out, duel_error *err) {
    *out = NULL;
    if (!source) source = "(memory)";
    if (!data && size) return duel_error_set(err, DUEL_EINVAL, "%s: NULL buffer", source);
    safetensors_archive *a = archive_new(source, 1, err);
    if (!a) return DUEL_ENOMEM;
    /* A file entry without a map: only its path (for messages) and metadata are owned. */
    safetensors_file *f = &a->files[0];
    f->path = strdup(source);
    int rc = f->path ? DUEL_OK : duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
    if (!rc) {
        a->num_files = 1;
        rc = parse_file_image(data, size, f->path, &a->tensors, &a->count, &f->metadata, err);
    }
    if (!rc) rc = archive_index(a, err);
    if (rc) {
        safetensors_close(a);
        return rc;
    }
    *out = a;
    return DUEL_OK;
}

/* A shard name from the index must be a plain file name inside the checkpoint directory. */
static bool shard_name_ok(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > SAFETENSORS_MAX_SHARD_NAME) return false;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return false;
    return strchr(name, '/') == NULL && strchr(name, '\\') == NULL;
}

static int open_sharded(const char *dir, const char *index_path, safetensors_archive **out,
                        duel_error *err) {
    json_t *root = NULL, *shards = NULL;
    safetensors_archive *a = NULL;
    int rc = duel_json_load_file(index_path, SAFETENSORS_MAX_INDEX_BYTES, &root, err);
    if (rc) return rc;
    const json_t *weight_map = json_object_get(root, "weight_map");
    const json_t *meta = json_object_get(root, "metadata");
    if (!json_is_object(root)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: not a JSON object", index_path);
        goto done;
    }
    if (meta && !json_is_null(meta) && !json_is_object(meta)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: \"metadata\" is not a JSON object",
                            index_path);
        goto done;
    }
    if (!json_is_object(weight_map) || json_object_size(weight_map) == 0) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: \"weight_map\" is missing, empty or not an "
                            "object", index_path);
        goto done;
    }
    /* Distinct shard names, in first-seen order (a JSON object used as an ordered set). */
    shards = json_object();
    if (!shards) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", index_path);
        goto done;
    }
    const char *tensor_name;
    json_t *shard;
    json_object_foreach((json_t *)weight_map, tensor_name, shard) {
        if (!json_is_string(shard)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: weight_map entry '%s' is not a string",
                                index_path, tensor_name);
            goto done;
        }
        const char *shard_name = json_string_value(shard);
        if (!shard_name_ok(shard_name) || strlen(shard_name) != json_string_length(shard)) {
            rc = duel_error_set(err, DUEL_EFORMAT,
                                "%s: weight_map entry '%s' names shard \"%s\", which is not a "
                                "plain file name in the checkpoint directory",
                                index_path, tensor_name, shard_name);
            goto done;
        }
        if (!json_object_get(shards, shard_name)) {
            if (json_object_size(shards) >= SAFETENSORS_MAX_SHARDS) {
                rc = duel_error_set(err, DUEL_ELIMIT, "%s: more than %d shards", index_path,
                                    SAFETENSORS_MAX_SHARDS);
                goto done;
            }
            json_object_set_new(shards, shard_name, json_null());
        }
    }
    a = archive_new(dir, json_object_size(shards), err);
    if (!a) {
        rc = DUEL_ENOMEM;
        goto done;
    }
    const char *shard_name;
    json_t *unused;
    json_object_foreach(shards, shard_name, unused) {
        char *path = path_join(dir, shard_name);
        if (!path) {
            rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", index_path);
            goto done;
        }
        rc = archive_add_file(a, path, err);
        free(path);
        if (rc) goto done;
    }
    rc = archive_index(a, err);
    if (rc) goto done;
    /* Every mapped tensor must be in the shard the index names, and every tensor of every shard
     * must be in the index. */
    json_object_foreach((json_t *)weight_map, tensor_name, shard) {
        const safetensors_tensor *t = safetensors_find(a, tensor_name);
        const char *want = json_string_value(shard);
        if (!t) {
            rc = duel_error_set(err, DUEL_ENOTFOUND,
                                "%s: tensor '%s' is mapped to %s, which does not contain it",
                                index_path, tensor_name, want);
            goto done;
        }
        const char *base = strrchr(t->file, '/');
        base = base ? base + 1 : t->file;
        if (strcmp(base, want) != 0) {
            rc = duel_error_set(err, DUEL_EFORMAT,
                                "%s: tensor '%s' is mapped to %s but is stored in %s", index_path,
                                tensor_name, want, t->file);
            goto done;
        }
    }
    for (size_t i = 0; i < a->count; i++) {
        if (!json_object_get(weight_map, a->tensors[i].name)) {
            rc = duel_error_set(err, DUEL_EFORMAT,
                                "%s: tensor '%s' is not listed in the weight_map of %s",
                                a->tensors[i].file, a->tensors[i].name, index_path);
            goto done;
        }
    }
done:
    if (rc) {
        safetensors_close(a);
    } else {
        *out = a;
    }
    if (shards) json_decref(shards);
    json_decref(root);
    return rc;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Like transformers, a single model.safetensors wins over an index when both exist. */
int safetensors_open_dir(const char *dir, safetensors_archive **out, duel_error *err) {
    *out = NULL;
    char *single = path_join(dir, SAFETENSORS_SINGLE_NAME);
    char *index = path_join(dir, SAFETENSORS_INDEX_NAME);
    int rc;
    if (!single || !index) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", dir);
    } else if (file_exists(single)) {
        rc = safetensors_open_file(single, out, err);
        if (!rc) {
            free((*out)->source);
            (*out)->source = strdup(dir);
            if (!(*out)->source) {
                safetensors_close(*out);
                *out = NULL;
                rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", dir);
            }
        }
    } else if (file_exists(index)) {
        rc = open_sharded(dir, index, out, err);
    } else {
        rc = duel_error_set(err, DUEL_ENOTFOUND, "%s: neither %s nor %s exists", dir,
                            SAFETENSORS_SINGLE_NAME, SAFETENSORS_INDEX_NAME);
    }
    free(single);
    free(index);
    return rc;
}

const safetensors_tensor *safetensors_find(const safetensors_archive *archive, const char *name) {
    if (!archive || !name || archive->count == 0) return NULL;
    safetensors_tensor key = {.name = name};
    return bsearch(&key, archive->tensors, archive->count, sizeof key, compare_tensor_names);
}

size_t safetensors_count(const safetensors_archive *archive) { return archive ? archive->count : 0; }

const safetensors_tensor *safetensors_at(const safetensors_archive *archive, size_t index) {
    return archive && index < archive->count ? &archive->tensors[index] : NULL;
}

const char *safetensors_metadata(const safetensors_archive *archive, const char *key) {
    if (!archive || !key) return NULL;
    for (size_t i = 0; i < archive->num_files; i++) {
        const json_t *v = archive->files[i].metadata ? json_object_get(archive->files[i].metadata, key)
                                                     : NULL;
        if (json_is_string(v)) return json_string_value(v);
    }
    return NULL;
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

int safetensors_expect(const safetensors_archive *archive, const char *name, int ndim,
                       const int64_t *shape, const safetensors_tensor **out, duel_error *err) {
    if (out) *out = NULL;
    const safetensors_tensor *t = safetensors_find(archive, name);
    if (!t)
        return duel_error_set(err, DUEL_ENOTFOUND, "%s: tensor '%s' is missing",
                              archive ? archive->source : "(no archive)", name ? name : "(null)");
    if (!dtype_is_float(t->dtype))
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", t->file,
                              t->name, safetensors_dtype_name(t->dtype));
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[256], want[256];
        format_shape(have, sizeof have, t->ndim, t->shape);
        format_shape(want, sizeof want, ndim < 0 ? 0 : ndim > SAFETENSORS_MAX_DIMS ? SAFETENSORS_MAX_DIMS : ndim,
                     shape);
        return duel_error_set(err, DUEL_EFORMAT, "%s: tensor '%s' has shape %s, expected %s",
                              t->file, t->name, have, want);
    }
    if (out) *out = t;
    return DUEL_OK;
}

int safetensors_to_f32(const safetensors_tensor *t, float *out, duel_error *err) {
    size_t n = (size_t)t->num_elements;
    const unsigned char *src = t->data;
    if (t->num_bytes != n * safetensors_dtype_size(t->dtype))
        return duel_error_set(err, DUEL_EINVAL, "%s: tensor '%s': byte count does not match",
                              t->file, t->name);
    switch (t->dtype) {
    case SAFETENSORS_F32:
        if (n) memcpy(out, src, n * sizeof(float));
        return DUEL_OK;
    case SAFETENSORS_F16:
    case SAFETENSORS_BF16: {
        bool bf16 = t->dtype == SAFETENSORS_BF16;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h);
            out[i] = bf16 ? safetensors_bf16_to_f32(h) : safetensors_f16_to_f32(h);
        }
        return DUEL_OK;
    }
    default:
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: tensor '%s' has dtype %s, which does not convert to f32",
                              t->file, t->name, safetensors_dtype_name(t->dtype));
    }
}

/* ---- writing ----------------------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len) {
    const unsigned char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Builds the header JSON (tensors in the given order, data packed in that order). */
static int build_header(const char *path, const safetensors_write_tensor *tensors, size_t count,
                        const char *metadata_json, char **out_text, uint64_t *out_data_size,
                        duel_error *err) {
    json_t *root = json_object();
    if (!root) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
    int rc = DUEL_OK;
    if (metadata_json) {
        json_t *meta;
        rc = duel_json_parse(metadata_json, strlen(metadata_json), "metadata_json", &meta, err);
        if (rc) goto fail;
        rc = check_metadata("metadata_json", meta, err);
        if (rc) {
            json_decref(meta);
            rc = DUEL_EINVAL;
            if (err) err->code = rc;
            goto fail;
        }
        json_object_set_new(root, "__metadata__", meta);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        const safetensors_write_tensor *t = &tensors[i];
        if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0 ||
            json_object_get(root, t->name)) {
            rc = duel_error_set(err, DUEL_EINVAL, "%s: tensor %zu has a missing, reserved or "
                                "repeated name '%s'", path, i, t->name ? t->name : "(null)");
            goto fail;
        }
        if ((unsigned)t->dtype >= DTYPE_COUNT || t->ndim < 0 || t->ndim > SAFETENSORS_MAX_DIMS) {
            rc = duel_error_set(err, DUEL_EINVAL, "%s: tensor '%s': bad dtype or ndim", path,
                                t->name);
            goto fail;
        }
        uint64_t elements = 1;
        json_t *shape = json_array();
        bool bad = !shape;
        for (int d = 0; d < t->ndim && !bad; d++) {
            bad = t->shape[d] < 0 ||
                  __builtin_mul_overflow(elements, (uint64_t)t->shape[d], &elements) ||
                  json_array_append_new(shape, json_integer(t->shape[d])) != 0;
        }
        uint64_t bytes = 0;
        bad = bad || elements > (uint64_t)INT64_MAX ||
              __builtin_mul_overflow(elements, (uint64_t)safetensors_dtype_size(t->dtype), &bytes) ||
              bytes > (uint64_t)INT64_MAX - offset || (bytes && !t->data);
        if (bad) {
            if (shape) json_decref(shape);
            rc = duel_error_set(err, DUEL_EINVAL, "%s: tensor '%s': bad shape or no data", path,
                                t->name);
            goto fail;
        }
        json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", safetensors_dtype_name(t->dtype),
                                  "shape", shape, "data_offsets", (json_int_t)offset,
                                  (json_int_t)(offset + bytes));
        if (!entry || json_object_set_new(root, t->name, entry) != 0) {
            rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        offset += bytes;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    json_decref(root);
    *out_text = text;
    *out_data_size = offset;
    return DUEL_OK;
fail:
    json_decref(root);
    return rc;
}

int safetensors_write_file(const char *path, const safetensors_write_tensor *tensors, size_t count,
                           const char *metadata_json, duel_error *err) {
    if (!path || (count && !tensors))
        return duel_error_set(err, DUEL_EINVAL, "safetensors_write_file: bad arguments");
    char *header = NULL;
    uint64_t data_size = 0;
    int rc = build_header(path, tensors, count, metadata_json, &header, &data_size, err);
    if (rc) return rc;
    /* Pad the header with spaces so that the data section starts 8-byte aligned, as the
     * reference writer does. */
    size_t header_len = strlen(header);
    size_t padded = (header_len + 7) & ~(size_t)7;
    char *tmp = malloc(strlen(path) + 5);
    unsigned char *prefix = malloc(8 + padded);
    int fd = -1;
    if (!tmp || !prefix) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    sprintf(tmp, "%s.tmp", path);
    for (int i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(prefix + 8, header, header_len);
    memset(prefix + 8 + header_len, ' ', padded - header_len);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    bool ok = write_all(fd, prefix, 8 + padded) == 0;
    for (size_t i = 0; ok && i < count; i++) {
        const safetensors_write_tensor *t = &tensors[i];
        size_t bytes = safetensors_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) bytes *= (size_t)t->shape[d]; /* checked above */
        if (bytes) ok = write_all(fd, t->data, bytes) == 0;
    }
    if (!ok || fsync(fd) != 0) {
        rc = duel_error_set(err, DUEL_EIO, "%s: write failed: %s", tmp, strerror(errno));
        goto done;
    }
    int fd2 = fd;
    fd = -1;
    if (close(fd2) != 0) {
        rc = duel_error_set(err, DUEL_EIO, "%s: close failed: %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot rename to %s: %s", tmp, path,
                            strerror(errno));
        goto done;
    }
    /* Make the rename itself durable. */
    char *slash = strrchr(tmp, '/');
    if (slash) {
        *slash = '\0';
        int dfd = open(slash == tmp ? "/" : tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    } else {
        int dfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    tmp[0] = '\0'; /* nothing to clean up */
done:
    if (fd >= 0) close(fd);
    if (rc && tmp && tmp[0]) unlink(tmp);
    free(tmp);
    free(prefix);
    free(header);
    return rc;
}
