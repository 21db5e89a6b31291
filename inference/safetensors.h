/* safetensors.h: reading (and writing) Hugging Face safetensors files. A file is mapped read-only
 * and its header is validated completely before any tensor is handed out: header length, strict
 * JSON, known dtypes, shapes that match byte ranges, ranges inside the data section, no overlaps.
 * A sharded checkpoint (model.safetensors.index.json) opens as one archive of several files.
 * Tensor data stays in the map: pointers are valid until safetensors_archive_close. */
#ifndef DUEL_SAFETENSORS_H
#define DUEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define SAFETENSORS_MAX_DIMS 8
#define SAFETENSORS_MAX_HEADER_BYTES (100u << 20) /* 100 MiB, as the reference implementation */

typedef enum safetensors_dtype {
    SAFETENSORS_F32,
    SAFETENSORS_F16,
    SAFETENSORS_BF16,
    SAFETENSORS_F64,
    SAFETENSORS_I64,
    SAFETENSORS_I32,
    SAFETENSORS_I16,
    SAFETENSORS_I8,
    SAFETENSORS_U8,
    SAFETENSORS_BOOL,
} safetensors_dtype;

typedef struct safetensors_tensor {
    const char *name;
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    int64_t num_elements;
    const void *data; /* inside the mapped file */
    size_t num_bytes;
    const char *file; /* path of the file holding it, for messages */
} safetensors_tensor;

typedef struct safetensors_archive safetensors_archive;

/* Opens <dir>/model.safetensors, or, when that does not exist, the shards listed by
 * <dir>/model.safetensors.index.json (as transformers does). Each shard is opened once; every
 * weight_map entry must be in the shard it names and every shard tensor in the weight_map. */
int safetensors_open_dir(const char *dir, safetensors_archive **out, duel_error *err);
/* Opens one .safetensors file. */
int safetensors_open_file(const char *path, safetensors_archive **out, duel_error *err);
/* Opens a file image held in memory (validated like a file; source names it in messages). The
 * bytes are not copied: data must stay valid and unchanged until safetensors_close. */
int safetensors_open_memory(const unsigned char *data, size_t size, const char *source,
                            safetensors_archive **out, duel_error *err);
void safetensors_close(safetensors_archive *archive);

/* NULL when absent. Tensor data may be unaligned (files written by others need not pad their
 * header): read it with memcpy or safetensors_to_f32, not through a cast pointer. */
const safetensors_tensor *safetensors_find(const safetensors_archive *archive, const char *name);
size_t safetensors_count(const safetensors_archive *archive);
/* Tensors in name (strcmp) order, across all shards. */
const safetensors_tensor *safetensors_at(const safetensors_archive *archive, size_t index);
/* The "__metadata__" string map entry for key, or NULL. */
const char *safetensors_metadata(const safetensors_archive *archive, const char *key);

const char *safetensors_dtype_name(safetensors_dtype dtype);
size_t safetensors_dtype_size(safetensors_dtype dtype);

/* Validates a whole file image held in memory (header and ranges), the entry point for the fuzz
 * target and for tests; source names it in messages. Returns the tensor count through *count. */
int safetensors_validate_buffer(const unsigned char *data, size_t size, const char *source,
                                size_t *count, duel_error *err);

/* Checks that tensor t exists with exactly the given shape and a float dtype (F32, F16, BF16);
 * on failure the message names the tensor, its file and both shapes. */
int safetensors_expect(const safetensors_archive *archive, const char *name, int ndim,
                       const int64_t *shape, const safetensors_tensor **out, duel_error *err);

/* Converts a float tensor (F32, F16 or BF16) to f32 into out[0..t->num_elements). */
int safetensors_to_f32(const safetensors_tensor *t, float *out, duel_error *err);

/* A tensor to write: data in the given dtype, little-endian, packed. */
typedef struct safetensors_write_tensor {
    const char *name;
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    const void *data;
} safetensors_write_tensor;

/* Writes a safetensors file atomically (path.tmp, fsync, rename). metadata_json may be NULL or a
 * JSON object of string values placed under "__metadata__". */
int safetensors_write_file(const char *path, const safetensors_write_tensor *tensors, size_t count,
                           const char *metadata_json, duel_error *err);

/* bf16/f16 <-> f32 scalar conversions (round to nearest even on the way down). */
float safetensors_bf16_to_f32(uint16_t h);
uint16_t safetensors_f32_to_bf16(float f);
float safetensors_f16_to_f32(uint16_t h);
uint16_t safetensors_f32_to_f16(float f);

#endif
