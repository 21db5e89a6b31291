/* weight_transport_nccl.cu: the nccl weight transport (weight_transport_cuda.h): a communicator
 * of the trainer (rank 0) and the serving ranks; each publish is one ncclBroadcast of the f32
 * parameter block. UNVERIFIED: compiled in CI, never run on a GPU yet (docs/TRAINER.md). */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "weight_transport_cuda.h"

static_assert(sizeof(ncclUniqueId) == WEIGHT_TRANSPORT_NCCL_ID_BYTES, "NCCL unique id size");

struct weight_transport_nccl {
    int device, rank;
    size_t num_params;
    float *buffer; /* device staging buffer */
    cudaStream_t stream;
    ncclComm_t comm;
};

static int fail_cuda(duel_error *err, cudaError_t rc, const char *what) {
    cudaGetLastError();
    return duel_error_set(err, DUEL_EDEVICE, "nccl transport: %s failed: %s (%s)", what, cudaGetErrorString(rc),
                          cudaGetErrorName(rc));
}

static int fail_nccl(duel_error *err, ncclResult_t rc, const char *what) {
    return duel_error_set(err, DUEL_EDEVICE, "nccl transport: %s failed: %s", what, ncclGetErrorString(rc));
}

extern "C" int weight_transport_nccl_unique_id(int device, unsigned char id[WEIGHT_TRANSPORT_NCCL_ID_BYTES],
                                               duel_error *err) {
    int rc = weight_transport_cuda_check_device(device, err);
    if (rc) return rc;
    ncclUniqueId uid;
    ncclResult_t nr = ncclGetUniqueId(&uid);
    if (nr != ncclSuccess) return fail_nccl(err, nr, "ncclGetUniqueId");
    memcpy(id, &uid, sizeof uid);
    return 0;
}

extern "C" void weight_transport_nccl_free(weight_transport_nccl *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->comm) ncclCommDestroy(c->comm);
    if (c->stream) cudaStreamDestroy(c->stream);
    cudaFree(c->buffer);
    free(c);
}

extern "C" int weight_transport_nccl_create(int device, const unsigned char id[WEIGHT_TRANSPORT_NCCL_ID_BYTES], int rank,
                                            int world_size, size_t num_params, weight_transport_nccl **out,
                                            duel_error *err) {
    *out = NULL;
    int rc = weight_transport_cuda_check_device(device, err);
    if (rc) return rc;
    if (world_size < 2 || rank < 0 || rank >= world_size || num_params == 0)
        return duel_error_set(err, DUEL_EINVAL, "nccl transport: rank %d of %d, %zu parameters", rank, world_size,
                              num_params);
    weight_transport_nccl *c = (weight_transport_nccl *)calloc(1, sizeof *c);
    if (!c) return duel_error_set(err, DUEL_ENOMEM, "nccl transport: out of memory");
    c->device = device;
    c->rank = rank;
    c->num_params = num_params;
    cudaError_t cr = cudaMalloc((void **)&c->buffer, num_params * sizeof(float));
    if (cr == cudaSuccess) cr = cudaStreamCreate(&c->stream);
    if (cr != cudaSuccess) {
        weight_transport_nccl_free(c);
        return fail_cuda(err, cr, "cudaMalloc/cudaStreamCreate");
    }
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    ncclResult_t nr = ncclCommInitRank(&c->comm, world_size, uid, rank);
    if (nr != ncclSuccess) {
        c->comm = NULL;
        weight_transport_nccl_free(c);
        return fail_nccl(err, nr, "ncclCommInitRank");
    }
    *out = c;
    return 0;
}

extern "C" int weight_transport_nccl_broadcast(weight_transport_nccl *c, float *params_host, duel_error *err) {
    const size_t bytes = c->num_params * sizeof(float);
    cudaError_t cr = cudaSetDevice(c->device);
    if (cr == cudaSuccess && c->rank == 0)
        cr = cudaMemcpyAsync(c->buffer, params_host, bytes, cudaMemcpyHostToDevice, c->stream);
    if (cr != cudaSuccess) return fail_cuda(err, cr, "cudaMemcpyAsync to the device");
    ncclResult_t nr = ncclBroadcast(c->buffer, c->buffer, c->num_params, ncclFloat32, 0, c->comm, c->stream);
    if (nr != ncclSuccess) return fail_nccl(err, nr, "ncclBroadcast");
    if (c->rank != 0 && (cr = cudaMemcpyAsync(params_host, c->buffer, bytes, cudaMemcpyDeviceToHost, c->stream)) != cudaSuccess)
        return fail_cuda(err, cr, "cudaMemcpyAsync to the host");
    if ((cr = cudaStreamSynchronize(c->stream)) != cudaSuccess) return fail_cuda(err, cr, "cudaStreamSynchronize");
    return 0;
}
