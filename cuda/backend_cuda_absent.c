/* backend_cuda_absent.c: stands in for the CUDA backend in builds without nvcc. */
#include <string.h>

#include "backend_cuda.h"

int backend_cuda_probe(backend_cuda_info *info, duel_error *err) {
    (void)err;
    memset(info, 0, sizeof *info);
    return DUEL_OK;
}
