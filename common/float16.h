/* float16.h: scalar conversions between f32 and the two 16-bit float formats on the wire and on
 * disk (IEEE half, f16; bfloat16, bf16). Every reader of such bytes (safetensors, vote entries)
 * converts here. Narrowing rounds to nearest even; NaN stays NaN, infinities stay infinite. */
#ifndef DUEL_FLOAT16_H
#define DUEL_FLOAT16_H

#include <stdint.h>

float duel_bf16_to_f32(uint16_t h);
uint16_t duel_f32_to_bf16(float f);
float duel_f16_to_f32(uint16_t h);
uint16_t duel_f32_to_f16(float f);

#endif
