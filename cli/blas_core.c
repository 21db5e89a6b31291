/* blas_core.c: makes OpenBLAS run the kernels of this CPU. OpenBLAS picks its kernels when it
 * loads, from its table of known CPU models; a library older than the CPU (Debian 12's 0.3.21 on
 * Intel Emerald Rapids, model 207) falls back to the generic "Prescott" kernels, 8x slower at
 * sgemm (28 against 224 GFLOP/s on 2 cores, `duel bench machine`). The choice can be changed only
 * through OPENBLAS_CORETYPE before the library loads, so main re-executes the program once with
 * it set. A user's own OPENBLAS_CORETYPE is always left alone. */
#include "blas_core.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *blas_core_name(void) {
    const char *name = openblas_get_corename();
    return name != NULL ? name : "unknown";
}

const char *blas_core_better(void) {
    if (strcasecmp(blas_core_name(), "prescott") != 0) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return NULL;
}

const char *blas_core_set_by_duel(void) {
    const char *mine = getenv(BLAS_CORE_SET_BY), *now = getenv("OPENBLAS_CORETYPE");
    return mine != NULL && now != NULL && strcmp(mine, now) == 0 ? mine : NULL;
}

void blas_core_fix(char **argv) {
    const char *better = blas_core_better();
    if (better == NULL || getenv("OPENBLAS_CORETYPE") != NULL) return;
    if (setenv("OPENBLAS_CORETYPE", better, 1) == 0 && setenv(BLAS_CORE_SET_BY, better, 1) == 0)
        execv("/proc/self/exe", argv);
    int e = errno;
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv(BLAS_CORE_SET_BY);
    fprintf(stderr,
            "duel: warning: OpenBLAS runs its generic kernels on this CPU and re-running with "
            "OPENBLAS_CORETYPE=%s failed (%s); set it yourself for ~8x faster matrix products\n",
            better, strerror(e));
}
