/* float16.c: f32 <-> f16 / bf16 by bit manipulation (see float16.h), exact for every input: the
 * widening is lossless, the narrowing rounds to nearest even. */
#include "float16.h"

#include <string.h>

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float duel_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t duel_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    /* Round to nearest even; a carry out of the mantissa correctly bumps the exponent (and
     * the largest finite values round to infinity as IEEE requires). */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float duel_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {
        if (mantissa == 0) return f32_from_bits(sign);
        /* Subnormal: value = mantissa * 2^-24; normalise it into an f32 normal. */
        uint32_t e = 113; /* f32 biased exponent of 2^-14 */
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            e--;
        }
        mantissa &= 0x3ffu;
        return f32_from_bits(sign | (e << 23) | (mantissa << 13));
    }
    if (exponent == 31) return f32_from_bits(sign | 0x7f800000u | (mantissa << 13));
    return f32_from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t duel_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t x = u & 0x7fffffffu;
    if (x >= 0x7f800000u) {
        if (x == 0x7f800000u) return sign | 0x7c00u;
        return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu)); /* quiet NaN, payload kept */
    }
    if (x >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to infinity */
    if (x < 0x38800000u) {                       /* below 2^-14: f16 subnormal or zero */
        if (x <= 0x33000000u) return sign;       /* <= 2^-25 rounds (ties to even) to zero */
        uint32_t e = x >> 23;
        uint32_t m = (x & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* result = m * 2^(e - 126) in units of 2^-24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = (x - 0x38000000u) >> 13; /* rebias exponent 127 -> 15 */
    uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}
