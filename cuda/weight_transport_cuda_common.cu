/* weight_transport_cuda_common.cu: the device check shared by the CUDA IPC and NCCL weight
 * transports (weight_transport_cuda.h). */
#include <cuda_runtime.h>

#include "backend_cuda_internal.h"
#include "weight_transport_cuda.h"

extern "C" int weight_transport_cuda_check_device(int device, duel_error *err) {
    int status = backend_cuda_device_exists(device, err);
    if (status) return status;
    cudaError_t rc = cudaSetDevice(device);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        return duel_error_set(err, DUEL_EDEVICE, "CUDA device %d: cudaSetDevice failed: %s", device,
                              cudaGetErrorString(rc));
    }
    return 0;
}
