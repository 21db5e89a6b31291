/* fuzz_safetensors.c: libFuzzer target for the safetensors header validator
 * (safetensors_validate_buffer in inference/safetensors.c). Any input must either be rejected
 * with a message naming the source or accepted with a tensor count that fits the header; never a
 * crash, leak or out-of-bounds read (the fuzz build runs under ASan and UBSan). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    duel_error err = {0};
    size_t count = 0;
    int rc = safetensors_validate_buffer(data, size, "fuzz.safetensors", &count, &err);
    if (rc != 0) {
        /* A rejection carries its code and names the input. */
        if (err.code != rc || !strstr(err.message, "fuzz.safetensors")) __builtin_trap();
    } else if (size < 8 || count > size) {
        __builtin_trap(); /* every tensor takes at least ~40 header bytes */
    }
    return 0;
}
