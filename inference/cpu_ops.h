/* cpu_ops.h: the CPU backend's layer kernels, llm.c style: each is one function over plain f32
 * arrays with explicit sizes and strides, no allocation, no state. model.c strings them into
 * the forward pass; tests/inference/test_cpu_ops.c checks each against a float64 reference.
 *
 * Layouts: activations are row-major [n_tokens][dim] with a row stride (floats) where a kernel
 * reads a slice of a wider row (q, k and v inside one fused projection row). Linear weights are
 * [out][in] row-major, as Hugging Face stores them, so that Y = X W^T is one sgemm. */
#ifndef DUEL_CPU_OPS_H
#define DUEL_CPU_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Accumulated time and work of GEMM/GEMV calls (for model_timing). */
typedef struct cpu_matmul_stats {
    double seconds;
    long long flops; /* 2 * m * n * k per call */
} cpu_matmul_stats;

/* out[i][:] = table[tokens[i]][:]; token ids must already be range-checked. */
void cpu_embedding_forward(float *out, const int32_t *tokens, int n, const float *table, int dim);

/* out = weight * x / sqrt(mean(x^2) + eps), per row of dim floats. out may alias in. */
void cpu_rmsnorm_forward(float *out, const float *in, const float *weight, int n, int dim,
                         float eps);

/* out = (x - mean) / sqrt(var + eps) * weight + bias (biased variance), per row. out may alias
 * in. */
void cpu_layernorm_forward(float *out, const float *in, const float *weight, const float *bias,
                           int n, int dim, float eps);

/* out[n][out_dim] (=|+=) in[n][in_dim] * weight[out_dim][in_dim]^T (+ bias[out_dim]).
 * accumulate: add to out (a fused residual add) instead of overwriting it. out must not alias
 * in. n == 1 runs as a GEMV. stats (optional) accumulates time and flops. */
void cpu_matmul_forward(float *out, const float *in, const float *weight, const float *bias, int n,
                        int in_dim, int out_dim, bool accumulate, cpu_matmul_stats *stats);

/* What this build can run on this CPU (cpuid at run time; the build itself targets x86-64-v3,
 * wider kernels are compiled with target attributes): the one place kernels ask. */
typedef struct cpu_features {
    bool avx2;        /* AVX2 + FMA */
    bool avx512;      /* AVX-512 F, BW and VL */
    bool avx512_bf16; /* vdpbf16ps */
    bool avx512_vnni; /* vpdpbusd */
} cpu_features;
cpu_features cpu_features_detect(void);

/* Instruction sets of the hand-written f32 kernels. cpu_isa_best: the best of them this build and
 * this CPU support. */
typedef enum cpu_isa { CPU_ISA_SCALAR = 0, CPU_ISA_AVX2 = 1, CPU_ISA_AVX512 = 2 } cpu_isa;
cpu_isa cpu_isa_best(void);

/* The few-row product of batched decode, for output columns [out_begin, out_end) only (threads
 * split the columns): out[t][o] (=|+=) in[t][:] . weight[o][:] (+ bias[o]) for t < n, rows of
 * in_dim (in, weight) and out_dim (out) floats. Each run of 4 weight rows is streamed from
 * memory once and used for every input row (tiles of 4 weight rows x 4 input rows with AVX-512,
 * 4 x 2 with AVX2), so n rows cost about one weight read plus n * in_dim * 4 FMAs per 4 weights,
 * where sgemm on such skinny shapes repacks the weights for every call. Any n >= 1 and sizes;
 * out must not alias in. isa: CPU_ISA_SCALAR, _AVX2 or _AVX512 (at most cpu_isa_best()). */
void cpu_matmul_skinny_isa(cpu_isa isa, float *out, const float *in, const float *weight,
                           const float *bias, int n, int in_dim, int out_dim, int out_begin,
                           int out_end, bool accumulate);

/* RoPE frequencies: inv_freq[i] = theta^(-2i/rotary_dim) for i < rotary_dim/2, then scaled.
 * scaling 0: none; 1: linear (divide by factor); 2: Llama 3 (transformers'
 * _compute_llama3_parameters: long wavelengths divided by factor, short ones kept, a smooth
 * blend between low_freq_factor and high_freq_factor of original_max_positions). */
enum { CPU_ROPE_SCALING_NONE = 0, CPU_ROPE_SCALING_LINEAR = 1, CPU_ROPE_SCALING_LLAMA3 = 2 };
void cpu_rope_inv_freq(double *inv_freq, int rotary_dim, double theta, int scaling, double factor,
                       double low_freq_factor, double high_freq_factor,
                       int original_max_positions);

/* cos/sin tables [n][rotary_dim/2] for positions start_pos .. start_pos+n-1 (angles in double). */
void cpu_rope_tables(float *cos_out, float *sin_out, const double *inv_freq, int rotary_dim,
                     int start_pos, int n);

/* Rotates the first rotary_dim dims of each head in place, NeoX rotate-half convention
 * (pairs (i, i + rotary_dim/2)), the rest pass through. Token t's head h starts at
 * x + t*stride + h*head_dim. */
void cpu_rope_forward(float *x, int n, int stride, int num_heads, int head_dim, int rotary_dim,
                      const float *cos_table, const float *sin_table);

/* Query rows handled per attention block: the score scratch is this many rows of context. */
#define CPU_ATTENTION_BLOCK_ROWS 64

/* Floats of scratch cpu_attention_forward needs for n queries over ctx positions. */
size_t cpu_attention_scratch_floats(int n, int ctx);

/* Causal softmax attention of n queries at positions start_pos .. start_pos+n-1 over keys and
 * values 0 .. start_pos+n-1 with grouped-query heads (query head h reads kv head
 * h / (num_heads / num_kv_heads)); scale 1/sqrt(head_dim).
 * q: row t at q + t*q_stride, head h at + h*head_dim.
 * k, v: position p at k + p*kv_stride, kv head g at + g*head_dim.
 * out: row t at out + t*out_stride, head h at + h*head_dim.
 * scratch: cpu_attention_scratch_floats(n, start_pos + n) floats. */
void cpu_attention_forward(float *out, int out_stride, const float *q, int q_stride,
                           const float *k, const float *v, int kv_stride, int n, int start_pos,
                           int num_heads, int num_kv_heads, int head_dim, float *scratch,
                           cpu_matmul_stats *stats);

/* out[t][i] = silu(gate_up[t][i]) * gate_up[t][ffn + i]: rows of gate_up are [gate | up]. */
void cpu_swiglu_forward(float *out, const float *gate_up, int n, int ffn);

/* In place over count floats: exact GELU x/2 (1 + erf(x/sqrt 2)) or, with tanh_approx, the
 * tanh form (gelu_new). */
void cpu_gelu_forward(float *x, size_t count, bool tanh_approx);

/* Widens n bf16 values (little-endian, any alignment) to f32: exact, a bf16 is an f32's upper
 * half. */
void cpu_bf16_to_f32(float *out, const void *src, size_t n);

/* sum of exp(x[i] - shift) over n floats, accumulated in double: a log-softmax's normaliser
 * over a whole vocabulary (shift = the maximum). exp runs in f32 (about 1 ulp, the AVX2 path);
 * an element below shift - 87.3 counts as FLT_MIN instead of 0, far below the maximum's 1. */
double cpu_sum_exp(const float *x, int n, float shift);

/* log sum exp(x[i]) over n >= 1 floats (max + log cpu_sum_exp(x, n, max)): the log-softmax
 * normaliser, so that x[t] - cpu_log_sum_exp(x, n) is log p(t). */
double cpu_log_sum_exp(const float *x, int n);

/* x[i] += y[i]. */
void cpu_add_forward(float *x, const float *y, size_t count);

#endif
