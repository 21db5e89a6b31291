/* backend_cuda.cu: CUDA backend entry points. Owns device probing; links cuBLAS and NCCL so that
 * every build proves they are found. Every CUDA call is checked and turned into a duel_error. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <string.h>

#include "backend_cuda.h"

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
