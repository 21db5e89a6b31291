/* sha256.h: SHA-256 (FIPS 180-4) of byte buffers and files, for the snapshot manifests
 * (meta.json lists the sha256 of every file; loaders verify them before use). Streaming context
 * so large weight files are hashed in chunks. */
#ifndef DUEL_SHA256_H
#define DUEL_SHA256_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define SHA256_DIGEST_BYTES 32
#define SHA256_HEX_BYTES 65 /* 64 hex digits and the NUL */

typedef struct sha256_ctx {
    uint32_t state[8];
    uint64_t total_bytes;
    unsigned char block[64];
    size_t block_len;
    bool hardware; /* blocks go through the x86 SHA extensions */
} sha256_ctx;

/* Whether this CPU has the x86 SHA extensions (and SSSE3, SSE4.1) that sha256_init uses. */
bool sha256_hardware_available(void);
/* Starts a digest; with the SHA extensions where the CPU has them. */
void sha256_init(sha256_ctx *ctx);
/* Starts a digest that uses the portable block function only (tests compare the two). */
void sha256_init_portable(sha256_ctx *ctx);
void sha256_update(sha256_ctx *ctx, const void *data, size_t len);
void sha256_final(sha256_ctx *ctx, unsigned char digest[SHA256_DIGEST_BYTES]);
/* One-shot digest as 64 lowercase hex digits. */
void sha256_hex(const void *data, size_t len, char hex[SHA256_HEX_BYTES]);
/* Hex digest of a file's bytes; DUEL_EIO naming the path when it cannot be read. */
int sha256_file_hex(const char *path, char hex[SHA256_HEX_BYTES], duel_error *err);

#endif
