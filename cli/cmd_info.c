/* cmd_info.c: `duel info`: the version, the backends built in (cpu always; cuda when compiled
 * with nvcc), the OpenBLAS kernels in use and whether a GPU answers the CUDA probe. With
 * --json, one JSON object on the last line of stdout. */
#include <cblas.h>
#include <jansson.h>
#include <stdlib.h>

#include "backend_cuda.h"
#include "blas_core.h"
#include "bench_json.h"
#include "cli.h"
#include "version.h"

int cmd_info(int argc, char **argv) {
    bool json = false, coretype_only = false;
    const cli_option options[] = {
        {"--json", CLI_OPT_FLAG, &json, NULL, "also print the facts as one JSON object on the "
                                              "last line of stdout", 0, 0, false, NULL},
        {"--blas-coretype", CLI_OPT_FLAG, &coretype_only, NULL,
         "print only the OPENBLAS_CORETYPE duel sets for itself on this CPU (an empty line when "
         "it sets none), for scripts that run other programs linked to OpenBLAS", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "info", "[--json | --blas-coretype]",
        "Prints the version, the backends built in (cpu, cuda), the OpenBLAS kernels in use and\n"
        "whether a GPU answers. A CUDA build on a machine without a GPU says so; that is not an\n"
        "error.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (coretype_only) {
        const char *set = blas_core_set_by_duel();
        printf("%s\n", set ? set : "");
        return CLI_EXIT_OK;
    }

    backend_cuda_info cuda;
    duel_error err = {0};
    int probe = backend_cuda_probe(&cuda, &err);
    const char *blas_config = openblas_get_config();
    int blas_threads = openblas_get_num_threads();

    printf("duel %s\n", duel_version());
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    printf("backends: cpu (%s, %d threads)%s\n", blas_config ? blas_config : "?",
           blas_threads, cuda.built ? ", cuda" : "");
    printf("blas kernels: %s%s%s%s%s\n", blas_core_name(), coretype ? " (OPENBLAS_CORETYPE=" : "",
           coretype ? coretype : "",
           blas_core_set_by_duel() ? ", set by duel: this OpenBLAS does not know the CPU" : "",
           coretype ? ")" : "");
    const char *better = blas_core_better();
    if (better != NULL)
        printf("blas: generic kernels on a CPU with AVX2/AVX-512: set OPENBLAS_CORETYPE=%s\n", better);
    if (!cuda.built) {
        printf("cuda: not built in (configure with nvcc on PATH or -DDUEL_CUDA=ON)\n");
    } else {
        printf("cuda: built in (runtime %d, cuBLAS %d, NCCL %d)\n", cuda.runtime_version,
               cuda.cublas_version, cuda.nccl_version);
    }
    if (probe != 0) {
        printf("gpu: probe failed: %s\n", err.message);
    } else if (cuda.device_count > 0) {
        printf("gpu: %d device(s) answered; device 0: %s, %.1f GiB, compute capability %d.%d\n",
               cuda.device_count, cuda.device_name, (double)cuda.total_memory / (1 << 30),
               cuda.compute_major, cuda.compute_minor);
    } else {
        printf("gpu: none answered%s\n", cuda.built ? "" : " (CUDA not built in)");
    }

    if (json) {
        json_t *o = json_object();
        json_t *backends = json_array();
        json_array_append_new(backends, json_string("cpu"));
        if (cuda.built) json_array_append_new(backends, json_string("cuda"));
        json_object_set_new(o, "version", json_string(duel_version()));
        json_object_set_new(o, "backends", backends);
        json_object_set_new(o, "cuda_built", json_boolean(cuda.built));
        json_object_set_new(o, "gpu_count", json_integer(probe == 0 ? cuda.device_count : 0));
        json_object_set_new(o, "gpu_answers", json_boolean(probe == 0 && cuda.device_count > 0));
        if (probe == 0 && cuda.device_count > 0) {
            json_object_set_new(o, "gpu_name", json_string(cuda.device_name));
            json_object_set_new(o, "gpu_memory_bytes", json_integer((json_int_t)cuda.total_memory));
        }
        if (probe != 0) json_object_set_new(o, "gpu_error", json_string(err.message));
        json_object_set_new(o, "blas_threads", json_integer(blas_threads));
        json_object_set_new(o, "blas_core", json_string(blas_core_name()));
        const char *set_by_duel = blas_core_set_by_duel();
        json_object_set_new(o, "blas_core_set_by_duel",
                            set_by_duel ? json_string(set_by_duel) : json_null());
        if (bench_json_print(NULL, o)) return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK; /* a failed GPU probe is a fact to report, not a failure of `info` */
}
