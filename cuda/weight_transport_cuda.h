/* weight_transport_cuda.h: the GPU halves of trainer/weight_transport.h, a C face over CUDA IPC
 * and NCCL. The Redis side (where the IPC handle and the NCCL unique id are exchanged) lives in
 * trainer/weight_transport.c; this header only moves a flat f32 parameter block.
 *
 *   cuda_ipc: the exporter (the trainer) owns one device buffer of num_params floats on its
 *   device; each publish copies the host block into it and hands out its cudaIpcMemHandle_t
 *   (WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES opaque bytes). An importer in another process on the
 *   same node opens the handle, copies the block device-to-device into its own memory (here:
 *   back to the host, for the engine's loader) and closes it.
 *   nccl: every rank calls weight_transport_nccl_create with the same unique id (made by rank 0
 *   with weight_transport_nccl_unique_id); weight_transport_nccl_broadcast sends rank 0's block to
 *   every other rank (ncclBroadcast on a device buffer, staged through the host).
 *
 * Every function first checks that the device exists: without one it fails with DUEL_EDEVICE
 * "no CUDA device ..." (and, in builds without nvcc, "built without CUDA": see
 * weight_transport_absent.c). Nothing aborts or prints.
 * UNVERIFIED on a GPU: compiled in every CUDA build; only the error paths run in CI
 * (docs/TRAINER.md). */
#ifndef DUEL_WEIGHT_TRANSPORT_CUDA_H
#define DUEL_WEIGHT_TRANSPORT_CUDA_H

#include <stddef.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES 64 /* sizeof(cudaIpcMemHandle_t) */
#define WEIGHT_TRANSPORT_NCCL_ID_BYTES 128        /* sizeof(ncclUniqueId) */

/* DUEL_EDEVICE naming why device cannot be used (no driver, none present, out of range). */
int weight_transport_cuda_check_device(int device, duel_error *err);

typedef struct weight_transport_ipc_export weight_transport_ipc_export;
int weight_transport_ipc_export_create(int device, size_t num_params, weight_transport_ipc_export **out,
                                       duel_error *err);
/* Copies params_host (num_params floats) to the device buffer and fills its handle. */
int weight_transport_ipc_export_publish(weight_transport_ipc_export *exporter, const float *params_host,
                                        unsigned char handle[WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES],
                                        duel_error *err);
void weight_transport_ipc_export_free(weight_transport_ipc_export *exporter);
/* Opens handle (made by another process) on device and copies num_params floats to params_host. */
int weight_transport_ipc_import(int device, const unsigned char handle[WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES],
                                size_t num_params, float *params_host, duel_error *err);

typedef struct weight_transport_nccl weight_transport_nccl;
int weight_transport_nccl_unique_id(int device, unsigned char id[WEIGHT_TRANSPORT_NCCL_ID_BYTES], duel_error *err);
int weight_transport_nccl_create(int device, const unsigned char id[WEIGHT_TRANSPORT_NCCL_ID_BYTES], int rank,
                                 int world_size, size_t num_params, weight_transport_nccl **out, duel_error *err);
/* Rank 0 sends params_host; every other rank receives into it. Collective: all ranks call it. */
int weight_transport_nccl_broadcast(weight_transport_nccl *comm, float *params_host, duel_error *err);
void weight_transport_nccl_free(weight_transport_nccl *comm);

#ifdef __cplusplus
}
#endif

#endif
