/* backend_cuda.h: the C face of the CUDA backend. So far: probing whether the backend is built
 * in and whether a GPU answers (`duel info`); the kernels arrive with the CUDA backend issue. */
#ifndef DUEL_BACKEND_CUDA_H
#define DUEL_BACKEND_CUDA_H

#include <stddef.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct backend_cuda_info {
    int built;              /* 1 when compiled with CUDA */
    int device_count;       /* GPUs that answered; 0 when none */
    char device_name[256];  /* device 0 */
    size_t total_memory;    /* device 0, bytes */
    int compute_major, compute_minor;
    int runtime_version;    /* e.g. 13000 */
    int cublas_version;
    int nccl_version;
} backend_cuda_info;

/* Fills info. Returns 0 when the probe ran (device_count may be 0: no GPU is not an error);
 * DUEL_EDEVICE with a message when the driver answered with an error other than "no device". */
int backend_cuda_probe(backend_cuda_info *info, duel_error *err);

#ifdef __cplusplus
}
#endif

#endif
