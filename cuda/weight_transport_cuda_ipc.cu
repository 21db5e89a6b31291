/* weight_transport_cuda_ipc.cu: the cuda_ipc weight transport (weight_transport_cuda.h): one
 * exported device buffer per trainer, opened by serving processes on the same node.
 * UNVERIFIED: compiled in CI, never run on a GPU yet (docs/TRAINER.md). */
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "weight_transport_cuda.h"

static_assert(sizeof(cudaIpcMemHandle_t) == WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES, "IPC handle size");

struct weight_transport_ipc_export {
    int device;
    size_t num_params;
    float *buffer; /* device memory, exported */
};

static int fail(duel_error *err, cudaError_t rc, const char *what) {
    cudaGetLastError();
    return duel_error_set(err, DUEL_EDEVICE, "cuda_ipc: %s failed: %s (%s)", what, cudaGetErrorString(rc),
                          cudaGetErrorName(rc));
}

extern "C" int weight_transport_ipc_export_create(int device, size_t num_params, weight_transport_ipc_export **out,
                                                  duel_error *err) {
    *out = NULL;
    int rc = weight_transport_cuda_check_device(device, err);
    if (rc) return rc;
    if (num_params == 0) return duel_error_set(err, DUEL_EINVAL, "cuda_ipc: empty parameter block");
    weight_transport_ipc_export *x = (weight_transport_ipc_export *)calloc(1, sizeof *x);
    if (!x) return duel_error_set(err, DUEL_ENOMEM, "cuda_ipc: out of memory");
    x->device = device;
    x->num_params = num_params;
    cudaError_t cr = cudaMalloc((void **)&x->buffer, num_params * sizeof(float));
    if (cr != cudaSuccess) {
        free(x);
        return fail(err, cr, "cudaMalloc");
    }
    *out = x;
    return 0;
}

extern "C" int weight_transport_ipc_export_publish(weight_transport_ipc_export *x, const float *params_host,
                                                   unsigned char handle[WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES],
                                                   duel_error *err) {
    cudaError_t cr = cudaSetDevice(x->device);
    if (cr == cudaSuccess) cr = cudaMemcpy(x->buffer, params_host, x->num_params * sizeof(float), cudaMemcpyHostToDevice);
    if (cr != cudaSuccess) return fail(err, cr, "cudaMemcpy to the exported buffer");
    cudaIpcMemHandle_t h;
    if ((cr = cudaIpcGetMemHandle(&h, x->buffer)) != cudaSuccess) return fail(err, cr, "cudaIpcGetMemHandle");
    memcpy(handle, &h, sizeof h);
    return 0;
}

extern "C" void weight_transport_ipc_export_free(weight_transport_ipc_export *x) {
    if (!x) return;
    cudaSetDevice(x->device);
    cudaFree(x->buffer);
    free(x);
}

extern "C" int weight_transport_ipc_import(int device, const unsigned char handle[WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES],
                                           size_t num_params, float *params_host, duel_error *err) {
    int rc = weight_transport_cuda_check_device(device, err);
    if (rc) return rc;
    cudaIpcMemHandle_t h;
    memcpy(&h, handle, sizeof h);
    void *peer = NULL;
    cudaError_t cr = cudaIpcOpenMemHandle(&peer, h, cudaIpcMemLazyEnablePeerAccess);
    if (cr != cudaSuccess) return fail(err, cr, "cudaIpcOpenMemHandle");
    cr = cudaMemcpy(params_host, peer, num_params * sizeof(float), cudaMemcpyDeviceToHost);
    cudaError_t close_rc = cudaIpcCloseMemHandle(peer);
    if (cr != cudaSuccess) return fail(err, cr, "cudaMemcpy from the imported buffer");
    if (close_rc != cudaSuccess) return fail(err, close_rc, "cudaIpcCloseMemHandle");
    return 0;
}
