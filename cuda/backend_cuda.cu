/* backend_cuda.cu: the CUDA backend's context and plumbing: probing, context create/destroy (with a
 * clear DUEL_EDEVICE when the device is missing, too old, built for another architecture or too
 * small), device buffers, and the cuBLAS GEMM (bf16 in, f32 accumulate and out). Every CUDA and
 * cuBLAS call is checked and turned into a duel_error; nothing aborts. Links NCCL so that every
 * build proves it is found (weight broadcast comes later).
 * UNVERIFIED: compiled in CI, never run on a GPU yet (docs/CUDA.md). */
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda_internal.h"

int backend_cuda_fail(duel_error *err, cudaError_t rc, const char *what) {
    cudaGetLastError(); /* clears the error unless it is sticky */
    return duel_error_set(err, DUEL_EDEVICE, "CUDA %s failed: %s (%s)", what,
                          cudaGetErrorString(rc), cudaGetErrorName(rc));
}

int backend_cuda_cublas_fail(duel_error *err, cublasStatus_t rc, const char *what) {
    return duel_error_set(err, DUEL_EDEVICE, "cuBLAS %s failed: %s (%s)", what,
                          cublasGetStatusString(rc), cublasGetStatusName(rc));
}

int backend_cuda_check_launch(duel_error *err, const char *kernel) {
    cudaError_t rc = cudaGetLastError();
    if (rc == cudaSuccess) return DUEL_OK;
    return duel_error_set(err, DUEL_EDEVICE, "CUDA kernel %s failed to launch: %s (%s)", kernel,
                          cudaGetErrorString(rc), cudaGetErrorName(rc));
}

int backend_cuda_use(backend_cuda_context *ctx, duel_error *err) {
    if (!ctx) return duel_error_set(err, DUEL_EINVAL, "CUDA: no context");
    int current = -1;
    BACKEND_CUDA_TRY(cudaGetDevice(&current), err, "cudaGetDevice");
    if (current != ctx->device) BACKEND_CUDA_TRY(cudaSetDevice(ctx->device), err, "cudaSetDevice");
    return DUEL_OK;
}

int backend_cuda_scratch(backend_cuda_context *ctx, size_t bytes, void **out, duel_error *err) {
    if (bytes > ctx->scratch_bytes) {
        BACKEND_CUDA_TRY(cudaStreamSynchronize(ctx->stream), err, "cudaStreamSynchronize");
        if (ctx->scratch) cudaFree(ctx->scratch);
        ctx->scratch = NULL;
        ctx->scratch_bytes = 0;
        int rc = backend_cuda_alloc(ctx, bytes, &ctx->scratch, err);
        if (rc) return duel_error_prefix(err, "CUDA scratch");
        ctx->scratch_bytes = bytes;
    }
    *out = ctx->scratch;
    return DUEL_OK;
}

extern "C" int backend_cuda_probe(backend_cuda_info *info, duel_error *err) {
    memset(info, 0, sizeof *info);
    info->built = 1;
    cudaRuntimeGetVersion(&info->runtime_version);
    int nccl_version = 0;
    if (ncclGetVersion(&nccl_version) == ncclSuccess) info->nccl_version = nccl_version;
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc == cudaErrorNoDevice || rc == cudaErrorInsufficientDriver) {
        cudaGetLastError();
        return DUEL_OK;
    }
    if (rc != cudaSuccess) {
        cudaGetLastError();
        return duel_error_set(err, DUEL_EDEVICE, "CUDA: cannot count devices: %s",
                              cudaGetErrorString(rc));
    }
    info->device_count = count;
    if (count > 0) {
        cudaDeviceProp prop;
        rc = cudaGetDeviceProperties(&prop, 0);
        if (rc != cudaSuccess)
            return duel_error_set(err, DUEL_EDEVICE, "CUDA: device 0 properties: %s",
                                  cudaGetErrorString(rc));
        snprintf(info->device_name, sizeof info->device_name, "%s", prop.name);
        info->total_memory = prop.totalGlobalMem;
        info->compute_major = prop.major;
        info->compute_minor = prop.minor;
        cublasHandle_t handle;
        if (cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS) {
            cublasGetVersion(handle, &info->cublas_version);
            cublasDestroy(handle);
        }
    }
    return DUEL_OK;
}

/* Launched once at context creation: fails with cudaErrorNoKernelImageForDevice when this build's
 * architectures (CMAKE_CUDA_ARCHITECTURES) do not cover the device. */
__global__ void backend_cuda_canary_kernel(int *out) { *out = 0x5eed; }

static int context_check_kernels(backend_cuda_context *ctx, const cudaDeviceProp *prop,
                                 duel_error *err) {
    int *d = NULL, h = 0;
    BACKEND_CUDA_TRY(cudaMalloc(&d, sizeof *d), err, "cudaMalloc (canary)");
    backend_cuda_canary_kernel<<<1, 1, 0, ctx->stream>>>(d);
    cudaError_t rc = cudaGetLastError();
    if (rc == cudaSuccess) rc = cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, ctx->stream);
    if (rc == cudaSuccess) rc = cudaStreamSynchronize(ctx->stream);
    cudaFree(d);
    if (rc == cudaErrorNoKernelImageForDevice || rc == cudaErrorInvalidDeviceFunction) {
        cudaGetLastError();
        return duel_error_set(err, DUEL_EDEVICE,
                              "CUDA device %d (%s) has compute capability %d.%d, which this build's "
                              "kernels do not cover; rebuild with -DCMAKE_CUDA_ARCHITECTURES=%d%d",
                              ctx->device, prop->name, prop->major, prop->minor, prop->major,
                              prop->minor);
    }
    if (rc != cudaSuccess) return backend_cuda_fail(err, rc, "test kernel");
    if (h != 0x5eed)
        return duel_error_set(err, DUEL_EDEVICE, "CUDA device %d: test kernel wrote %#x", ctx->device,
                              (unsigned)h);
    return DUEL_OK;
}

int backend_cuda_device_exists(int device, duel_error *err) {
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        return duel_error_set(err, DUEL_EDEVICE, "no CUDA device: %s (%s)", cudaGetErrorString(rc),
                              cudaGetErrorName(rc));
    }
    if (count == 0) return duel_error_set(err, DUEL_EDEVICE, "no CUDA device: none found");
    if (device < 0 || device >= count)
        return duel_error_set(err, DUEL_EDEVICE, "no CUDA device %d (%d found)", device, count);
    return DUEL_OK;
}

extern "C" int backend_cuda_context_create(int device, size_t min_free_bytes,
                                           backend_cuda_context **out, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "CUDA: no output pointer for the context");
    *out = NULL;
    if (int missing = backend_cuda_device_exists(device, err)) return missing;
    cudaDeviceProp prop;
    BACKEND_CUDA_TRY(cudaGetDeviceProperties(&prop, device), err, "cudaGetDeviceProperties");
    if (prop.major < BACKEND_CUDA_MIN_COMPUTE_MAJOR)
        return duel_error_set(err, DUEL_EDEVICE,
                              "CUDA device %d (%s) has compute capability %d.%d; bf16 kernels need "
                              "%d.0 or newer",
                              device, prop.name, prop.major, prop.minor,
                              BACKEND_CUDA_MIN_COMPUTE_MAJOR);
    BACKEND_CUDA_TRY(cudaSetDevice(device), err, "cudaSetDevice");
    size_t free_bytes = 0, total_bytes = 0;
    BACKEND_CUDA_TRY(cudaMemGetInfo(&free_bytes, &total_bytes), err, "cudaMemGetInfo");
    if (free_bytes < min_free_bytes)
        return duel_error_set(err, DUEL_EDEVICE,
                              "CUDA device %d (%s) is too small: %.2f GiB free of %.2f GiB, %.2f "
                              "GiB needed",
                              device, prop.name, free_bytes / 1073741824.0,
                              total_bytes / 1073741824.0, min_free_bytes / 1073741824.0);

    backend_cuda_context *ctx = (backend_cuda_context *)calloc(1, sizeof *ctx);
    if (!ctx) return duel_error_set(err, DUEL_ENOMEM, "CUDA: out of host memory for a context");
    ctx->device = device;
    snprintf(ctx->device_name, sizeof ctx->device_name, "%s", prop.name);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->total_memory = prop.totalGlobalMem;
    int status = DUEL_OK;
    cudaError_t rc = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
    if (rc != cudaSuccess) {
        status = backend_cuda_fail(err, rc, "cudaStreamCreate");
        ctx->stream = NULL;
        goto fail;
    }
    {
        cublasStatus_t cs = cublasCreate(&ctx->cublas);
        if (cs != CUBLAS_STATUS_SUCCESS) {
            ctx->cublas = NULL;
            status = backend_cuda_cublas_fail(err, cs, "cublasCreate");
            goto fail;
        }
        cs = cublasSetStream(ctx->cublas, ctx->stream);
        if (cs != CUBLAS_STATUS_SUCCESS) {
            status = backend_cuda_cublas_fail(err, cs, "cublasSetStream");
            goto fail;
        }
    }
    status = context_check_kernels(ctx, &prop, err);
    if (status) goto fail;
    *out = ctx;
    return DUEL_OK;
fail:
    backend_cuda_context_destroy(ctx);
    return status;
}

extern "C" void backend_cuda_context_destroy(backend_cuda_context *ctx) {
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    if (ctx->scratch) cudaFree(ctx->scratch);
    if (ctx->cublas) cublasDestroy(ctx->cublas);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    cudaGetLastError();
    free(ctx);
}

extern "C" const char *backend_cuda_device_name(const backend_cuda_context *ctx) {
    return ctx ? ctx->device_name : "";
}

extern "C" int backend_cuda_sm_count(const backend_cuda_context *ctx) {
    return ctx ? ctx->sm_count : 0;
}

extern "C" int backend_cuda_mem_info(backend_cuda_context *ctx, size_t *free_bytes,
                                     size_t *total_bytes, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    size_t f = 0, t = 0;
    BACKEND_CUDA_TRY(cudaMemGetInfo(&f, &t), err, "cudaMemGetInfo");
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return DUEL_OK;
}

extern "C" int backend_cuda_synchronize(backend_cuda_context *ctx, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_TRY(cudaStreamSynchronize(ctx->stream), err, "execution (cudaStreamSynchronize)");
    return DUEL_OK;
}

extern "C" int backend_cuda_alloc(backend_cuda_context *ctx, size_t bytes, void **out,
                                  duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "CUDA alloc: no output pointer");
    *out = NULL;
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    if (bytes == 0) return DUEL_OK;
    cudaError_t cr = cudaMalloc(out, bytes);
    if (cr != cudaSuccess) {
        *out = NULL;
        cudaGetLastError();
        size_t f = 0, t = 0;
        cudaMemGetInfo(&f, &t);
        cudaGetLastError();
        return duel_error_set(err, DUEL_EDEVICE,
                              "CUDA: out of device memory: %zu bytes requested, %zu free of %zu (%s)",
                              bytes, f, t, cudaGetErrorString(cr));
    }
    return DUEL_OK;
}

extern "C" void backend_cuda_free(backend_cuda_context *ctx, void *ptr) {
    if (!ctx || !ptr) return;
    cudaSetDevice(ctx->device);
    cudaFree(ptr);
    cudaGetLastError();
}

static int copy(backend_cuda_context *ctx, void *dst, const void *src, size_t bytes,
                cudaMemcpyKind kind, const char *what, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    if (bytes == 0) return DUEL_OK;
    if (!dst || !src) return duel_error_set(err, DUEL_EINVAL, "CUDA %s: NULL pointer", what);
    BACKEND_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, ctx->stream), err, what);
    if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToDevice)
        BACKEND_CUDA_TRY(cudaStreamSynchronize(ctx->stream), err, what);
    return DUEL_OK;
}

extern "C" int backend_cuda_copy_to_device(backend_cuda_context *ctx, void *dst,
                                           const void *src_host, size_t bytes, duel_error *err) {
    /* Synchronous for pageable host memory anyway; synchronising keeps src_host reusable. */
    return copy(ctx, dst, src_host, bytes, cudaMemcpyHostToDevice, "copy to device", err);
}

extern "C" int backend_cuda_copy_to_host(backend_cuda_context *ctx, void *dst_host,
                                         const void *src, size_t bytes, duel_error *err) {
    return copy(ctx, dst_host, src, bytes, cudaMemcpyDeviceToHost, "copy to host", err);
}

extern "C" int backend_cuda_copy_device(backend_cuda_context *ctx, void *dst, const void *src,
                                        size_t bytes, duel_error *err) {
    return copy(ctx, dst, src, bytes, cudaMemcpyDeviceToDevice, "device copy", err);
}

extern "C" int backend_cuda_memset(backend_cuda_context *ctx, void *dst, int byte, size_t bytes,
                                   duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    if (bytes == 0) return DUEL_OK;
    if (!dst) return duel_error_set(err, DUEL_EINVAL, "CUDA memset: NULL pointer");
    BACKEND_CUDA_TRY(cudaMemsetAsync(dst, byte, bytes, ctx->stream), err, "cudaMemsetAsync");
    return DUEL_OK;
}

extern "C" int backend_cuda_upload_bf16(backend_cuda_context *ctx, uint16_t *dst,
                                        const float *src_host, size_t count, duel_error *err) {
    if (count == 0) return DUEL_OK;
    if (!src_host || !dst) return duel_error_set(err, DUEL_EINVAL, "CUDA upload: NULL pointer");
    uint16_t *staging = (uint16_t *)malloc(count * sizeof *staging);
    if (!staging)
        return duel_error_set(err, DUEL_ENOMEM, "CUDA upload: no host memory for %zu values",
                              count);
    for (size_t i = 0; i < count; i++) staging[i] = backend_cuda_f32_to_bf16(src_host[i]);
    int rc = backend_cuda_copy_to_device(ctx, dst, staging, count * sizeof *staging, err);
    free(staging);
    return rc;
}

/* ---- GEMM ------------------------------------------------------------------------------------ */

/* out[t][:] = bias (accumulate = 0) or out[t][:] += bias, before a beta = 1 GEMM. */
__global__ void bias_rows_kernel(float *out, const uint16_t *bias, int n, int dim,
                                 int accumulate) {
    size_t total = (size_t)n * dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float b = bf16_load(bias + i % dim);
        out[i] = accumulate ? out[i] + b : b;
    }
}

extern "C" int backend_cuda_linear(backend_cuda_context *ctx, float *out, const uint16_t *in,
                                   const uint16_t *weight, const uint16_t *bias, int n, int in_dim,
                                   int out_dim, bool accumulate, duel_error *err) {
    int rc = backend_cuda_use(ctx, err);
    if (rc) return rc;
    BACKEND_CUDA_REQUIRE(out && in && weight, err, "CUDA linear: NULL pointer");
    BACKEND_CUDA_REQUIRE(n > 0 && in_dim > 0 && out_dim > 0, err,
                         "CUDA linear: bad shape n=%d in=%d out=%d", n, in_dim, out_dim);
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias) {
        bias_rows_kernel<<<backend_cuda_blocks_for((size_t)n * out_dim, 256, ctx->sm_count), 256, 0,
                           ctx->stream>>>(out, bias, n, out_dim, accumulate ? 1 : 0);
        rc = backend_cuda_check_launch(err, "bias_rows");
        if (rc) return rc;
        beta = 1.0f;
    }
    const float alpha = 1.0f;
    /* Row-major Y[n][out] = X[n][in] W[out][in]^T is, column-major, Y^T (out x n) =
     * W^T (out x in, W stored as in x out column-major with ld in) * X^T (in x n, ld in). */
    cublasStatus_t cs = cublasGemmEx(ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, out_dim, n, in_dim,
                                     &alpha, weight, CUDA_R_16BF, in_dim, in, CUDA_R_16BF, in_dim,
                                     &beta, out, CUDA_R_32F, out_dim, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
    if (cs != CUBLAS_STATUS_SUCCESS) return backend_cuda_cublas_fail(err, cs, "cublasGemmEx (linear)");
    return DUEL_OK;
}
