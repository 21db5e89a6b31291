/* weight_transport_cuda_common.cu: the device check shared by the CUDA IPC and NCCL weight
 * transports (weight_transport_cuda.h). */
#include <cuda_runtime.h>

#include "weight_transport_cuda.h"

extern "C" int weight_transport_cuda_check_device(int device, duel_error *err) {
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
    rc = cudaSetDevice(device);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        return duel_error_set(err, DUEL_EDEVICE, "CUDA device %d: cudaSetDevice failed: %s", device,
                              cudaGetErrorString(rc));
    }
    return 0;
}
