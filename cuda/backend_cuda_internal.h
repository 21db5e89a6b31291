/* backend_cuda_internal.h: what the .cu files of cuda/ share and nobody else sees: the context struct,
 * the error-checking helpers that turn every CUDA and cuBLAS status into a duel_error, and small
 * device helpers (bf16 loads and stores, warp and block reductions). C++ (nvcc) only. */
#ifndef DUEL_BACKEND_CUDA_INTERNAL_H
#define DUEL_BACKEND_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "error.h"
#include "rng.h"

#include "backend_cuda.h"

struct backend_cuda_context {
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    char device_name[256];
    int sm_count;
    size_t total_memory;
    /* Scratch owned by the context (sampling), grown on demand, never shrunk. */
    void *scratch;
    size_t scratch_bytes;
};

/* Returns DUEL_EDEVICE naming the operation and the CUDA error when rc is not cudaSuccess. The
 * sticky error state is cleared where CUDA allows it (cudaGetLastError). */
int backend_cuda_fail(duel_error *err, cudaError_t rc, const char *what);
int backend_cuda_cublas_fail(duel_error *err, cublasStatus_t rc, const char *what);
/* DUEL_EDEVICE "no CUDA device ..." unless device indexes a visible CUDA device (the check the
 * backend and the GPU weight transports make before they touch one). */
int backend_cuda_device_exists(int device, duel_error *err);
/* After a kernel launch: the launch error, if any. */
int backend_cuda_check_launch(duel_error *err, const char *kernel);
/* Makes the context's device current (one process may hold several contexts). */
int backend_cuda_use(backend_cuda_context *ctx, duel_error *err);
/* Grows ctx->scratch to at least bytes. */
int backend_cuda_scratch(backend_cuda_context *ctx, size_t bytes, void **out, duel_error *err);

#define BACKEND_CUDA_TRY(call, err, what)                                                        \
    do {                                                                                         \
        cudaError_t try_rc_ = (call);                                                            \
        if (try_rc_ != cudaSuccess) return backend_cuda_fail((err), try_rc_, (what));            \
    } while (0)

/* Argument checks shared by the launchers: a NULL context or pointer is DUEL_EINVAL. */
#define BACKEND_CUDA_REQUIRE(cond, err, ...)                                                     \
    do {                                                                                         \
        if (!(cond)) return duel_error_set((err), DUEL_EINVAL, __VA_ARGS__);                     \
    } while (0)

/* Grid size for a grid-stride loop over count items with `threads` per block. */
static inline unsigned backend_cuda_blocks_for(size_t count, int threads, int sm_count) {
    size_t blocks = (count + (size_t)threads - 1) / (size_t)threads;
    size_t cap = (size_t)(sm_count > 0 ? sm_count : 1) * 32;
    if (blocks > cap) blocks = cap;
    return blocks ? (unsigned)blocks : 1u;
}

#ifdef __CUDACC__
__device__ __forceinline__ float bf16_load(const uint16_t *p) {
    return __bfloat162float(*reinterpret_cast<const __nv_bfloat16 *>(p));
}
__device__ __forceinline__ uint16_t bf16_from_float(float f) {
    __nv_bfloat16 h = __float2bfloat16(f); /* round to nearest even */
    return *reinterpret_cast<uint16_t *>(&h);
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_double(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
 * shared: 32 doubles. Call from all threads. */
__device__ __forceinline__ double block_sum_double(double v, double *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum_double(v);
    __syncthreads(); /* shared may still be read by a previous call */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    return warp_sum_double(v);
}
#endif

#endif
