/* compute_providers.c: the compute backends the `duel` executable offers the engine besides the
 * CPU (inference/compute.h): the CUDA one (cuda/cuda_compute.h; in a build without nvcc its
 * stand-in, whose probe says so, so that engine.backend = cuda is a clear error and auto means
 * the CPU). The executable is where inference/ and cuda/ meet: inference/ never links cuda/. */
#include "cli.h"
#include "cuda_compute.h"

const compute_provider *const *cli_compute_providers(int *n) {
    static const compute_provider *list[1];
    list[0] = cuda_compute_provider();
    *n = 1;
    return list;
}
