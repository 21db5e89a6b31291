/* fuzz_safetensors.c: libFuzzer target for the safetensors reader (inference/safetensors.c):
 * safetensors_validate_buffer, then safetensors_open_memory and a conversion of every float
 * tensor, so that ASan sees any tensor pointer or size that escapes the input. Any input must be
 * rejected with a message naming the source, or accepted consistently by both entry points;
 * never a crash, leak or out-of-bounds read. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SOURCE "fuzz.safetensors"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    duel_error err = {0};
    size_t count = 0;
    int rc = safetensors_validate_buffer(data, size, SOURCE, &count, &err);
    if (rc != 0 && (err.code != rc || !strstr(err.message, SOURCE))) __builtin_trap();
    safetensors_archive *archive = NULL;
    int rc2 = safetensors_open_memory(data, size, SOURCE, &archive, &err);
    if ((rc == 0) != (rc2 == 0)) __builtin_trap();
    if (rc2 != 0) return 0;
    if (safetensors_count(archive) != count) __builtin_trap();
    for (size_t i = 0; i < count; i++) {
        const safetensors_tensor *t = safetensors_at(archive, i);
        if (safetensors_find(archive, t->name) != t) __builtin_trap();
        const unsigned char *p = t->data;
        if (p < data || t->num_bytes > size || p + t->num_bytes > data + size) __builtin_trap();
        if (t->dtype != SAFETENSORS_F32 && t->dtype != SAFETENSORS_F16 &&
            t->dtype != SAFETENSORS_BF16)
            continue;
        float *out = malloc(t->num_elements ? (size_t)t->num_elements * sizeof *out : 1);
        if (!out) break;
        if (safetensors_to_f32(t, out, &err) != 0) __builtin_trap();
        free(out);
    }
    safetensors_close(archive);
    return 0;
}
