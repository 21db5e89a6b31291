/* sha256.c: FIPS 180-4 SHA-256 (see sha256.h). A straightforward portable block function, and
 * on x86-64 CPUs with the SHA extensions (Intel since Ice Lake/Goldmont, AMD since Zen) one built
 * on the sha256rnds2/msg1/msg2 instructions, about 10x faster. The speed matters: the online
 * trainer hashes tens of MB per checkpoint and per published snapshot, and the servers verify
 * every snapshot they load. */
#include "sha256.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SHA256_HAVE_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block_portable(uint32_t state[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) +
                      SHA256_K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

#ifdef SHA256_HAVE_X86
/* n blocks with the SHA extensions. The state lives in two registers in the order the
 * instructions want: ABEF (lanes 3..0 = A, B, E, F) and CDGH. Each sha256rnds2 does two rounds
 * with the low two words of its message operand; the message schedule for words 16..63 is
 * W[t] = msg2(msg1(W[t-16..t-13], W[t-12..t-9]) + W[t-7..t-4], W[t-4..t-1]). */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_blocks_x86(uint32_t state[8],
                                                                         const unsigned char *p, size_t n) {
    const __m128i byte_swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abcd = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i efgh = _mm_loadu_si128((const __m128i *)&state[4]);
    __m128i badc = _mm_shuffle_epi32(abcd, 0xB1); /* lanes 0..3: B A D C */
    __m128i hgfe = _mm_shuffle_epi32(efgh, 0x1B); /* lanes 0..3: H G F E */
    __m128i abef = _mm_alignr_epi8(badc, hgfe, 8);  /* lanes 0..3: F E B A */
    __m128i cdgh = _mm_blend_epi16(hgfe, badc, 0xF0); /* lanes 0..3: H G D C */
    for (; n > 0; n--, p += 64) {
        const __m128i abef_in = abef, cdgh_in = cdgh;
        __m128i w[4];
        for (int i = 0; i < 4; i++) w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), byte_swap);
        for (int g = 0; g < 16; g++) { /* four rounds per group */
            if (g >= 4) {
                __m128i t = _mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]);
                t = _mm_add_epi32(t, _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
                w[g & 3] = _mm_sha256msg2_epu32(t, w[(g + 3) & 3]);
            }
            __m128i m = _mm_add_epi32(w[g & 3], _mm_loadu_si128((const __m128i *)&SHA256_K[4 * g]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, m); /* now ABEF after two rounds */
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(m, 0x0E));
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B); /* lanes 0..3: A B E F */
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1); /* lanes 0..3: G H C D */
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, feba, 8));
}
#endif

bool sha256_hardware_available(void) {
#ifdef SHA256_HAVE_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool ssse3 = (c >> 9) & 1, sse41 = (c >> 19) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return ssse3 && sse41 && ((b >> 29) & 1);
#else
    return false;
#endif
}

static void sha256_blocks(sha256_ctx *ctx, const unsigned char *p, size_t n) {
#ifdef SHA256_HAVE_X86
    if (ctx->hardware) {
        sha256_blocks_x86(ctx->state, p, n);
        return;
    }
#endif
    for (; n > 0; n--, p += 64) sha256_block_portable(ctx->state, p);
}

void sha256_init_portable(sha256_ctx *ctx) {
    static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(ctx->state, init, sizeof(init));
    ctx->total_bytes = 0;
    ctx->block_len = 0;
    ctx->hardware = false;
}

void sha256_init(sha256_ctx *ctx) {
    sha256_init_portable(ctx);
    ctx->hardware = sha256_hardware_available();
}

void sha256_update(sha256_ctx *ctx, const void *data, size_t len) {
    const unsigned char *p = data;
    ctx->total_bytes += len;
    while (len > 0) {
        if (ctx->block_len == 0 && len >= 64) {
            size_t blocks = len / 64;
            sha256_blocks(ctx, p, blocks);
            p += 64 * blocks;
            len -= 64 * blocks;
            continue;
        }
        size_t take = 64 - ctx->block_len < len ? 64 - ctx->block_len : len;
        memcpy(ctx->block + ctx->block_len, p, take);
        ctx->block_len += take;
        p += take;
        len -= take;
        if (ctx->block_len == 64) {
            sha256_blocks(ctx, ctx->block, 1);
            ctx->block_len = 0;
        }
    }
}

void sha256_final(sha256_ctx *ctx, unsigned char digest[SHA256_DIGEST_BYTES]) {
    uint64_t bits = ctx->total_bytes * 8;
    unsigned char pad[72] = {0x80};
    size_t pad_len = ctx->block_len < 56 ? 56 - ctx->block_len : 120 - ctx->block_len;
    for (int i = 0; i < 8; i++) {
        pad[pad_len + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
    }
    uint64_t saved = ctx->total_bytes;
    sha256_update(ctx, pad, pad_len + 8);
    ctx->total_bytes = saved;
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(ctx->state[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(ctx->state[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(ctx->state[i] >> 8);
        digest[4 * i + 3] = (unsigned char)ctx->state[i];
    }
}

static void to_hex(const unsigned char digest[SHA256_DIGEST_BYTES], char hex[SHA256_HEX_BYTES]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < SHA256_DIGEST_BYTES; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = '\0';
}

void sha256_hex(const void *data, size_t len, char hex[SHA256_HEX_BYTES]) {
    sha256_ctx ctx;
    unsigned char digest[SHA256_DIGEST_BYTES];
    sha256_init(&ctx);
    sha256_update(&ctx, data, len);
    sha256_final(&ctx, digest);
    to_hex(digest, hex);
}

int sha256_file_hex(const char *path, char hex[SHA256_HEX_BYTES], duel_error *err) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return duel_error_set(err, DUEL_EIO, "%s: cannot open: %s", path, strerror(errno));
    }
    sha256_ctx ctx;
    sha256_init(&ctx);
    unsigned char buf[1 << 16];
    setvbuf(f, NULL, _IONBF, 0); /* read straight into buf */
    size_t got;
    while ((got = fread(buf, 1, sizeof(buf), f)) > 0) {
        sha256_update(&ctx, buf, got);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        return duel_error_set(err, DUEL_EIO, "%s: read failed", path);
    }
    unsigned char digest[SHA256_DIGEST_BYTES];
    sha256_final(&ctx, digest);
    to_hex(digest, hex);
    return 0;
}
