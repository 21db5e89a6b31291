/* blas_core.h: which OpenBLAS kernels this process runs, and the fix when OpenBLAS does not
 * recognise the CPU (blas_core.c). */
#ifndef DUEL_BLAS_CORE_H
#define DUEL_BLAS_CORE_H

/* The kernel set OpenBLAS chose when it loaded ("Haswell", "SkylakeX", "Prescott", ...). */
const char *blas_core_name(void);

/* The kernel set to ask for through OPENBLAS_CORETYPE when OpenBLAS fell back to its generic
 * "Prescott" kernels on a CPU with AVX2 or AVX-512 (a CPU newer than the library), else NULL. */
const char *blas_core_better(void);

/* The environment variable that tells that duel itself set OPENBLAS_CORETYPE (to its value). */
#define BLAS_CORE_SET_BY "DUEL_SET_OPENBLAS_CORETYPE"

/* The OPENBLAS_CORETYPE that blas_core_fix set for this process (inherited by the processes it
 * starts), or NULL when OpenBLAS chose on its own or the user set it. */
const char *blas_core_set_by_duel(void);

/* Called first in main: when blas_core_better() names a kernel set and OPENBLAS_CORETYPE is not
 * set, sets it (and BLAS_CORE_SET_BY) and re-executes the program with the same arguments (OpenBLAS reads it only when
 * it loads). Returns when there is nothing to do, or after a warning on stderr if exec failed. */
void blas_core_fix(char **argv);

#endif
