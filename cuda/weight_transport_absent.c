/* weight_transport_absent.c: stands in for the GPU weight transports (weight_transport_cuda.h)
 * in builds without nvcc: every function fails with DUEL_EDEVICE "built without CUDA", so
 * trainer/weight_transport.c needs no #ifdefs. */
#include "weight_transport_cuda.h"

static int absent(duel_error *err) {
    return duel_error_set(err, DUEL_EDEVICE, "no CUDA device: built without CUDA (reconfigure with nvcc on "
                          "the PATH or -DDUEL_CUDA=ON)");
}

int weight_transport_cuda_check_device(int device, duel_error *err) {
    (void)device;
    return absent(err);
}

int weight_transport_ipc_export_create(int device, size_t num_params, weight_transport_ipc_export **out,
                                       duel_error *err) {
    (void)device, (void)num_params;
    *out = NULL;
    return absent(err);
}

int weight_transport_ipc_export_publish(weight_transport_ipc_export *exporter, const float *params_host,
                                        unsigned char handle[WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES],
                                        duel_error *err) {
    (void)exporter, (void)params_host, (void)handle;
    return absent(err);
}

void weight_transport_ipc_export_free(weight_transport_ipc_export *exporter) { (void)exporter; }

int weight_transport_ipc_import(int device, const unsigned char handle[WEIGHT_TRANSPORT_CUDA_IPC_HANDLE_BYTES],
                                size_t num_params, float *params_host, duel_error *err) {
    (void)device, (void)handle, (void)num_params, (void)params_host;
    return absent(err);
}

int weight_transport_nccl_unique_id(int device, unsigned char id[WEIGHT_TRANSPORT_NCCL_ID_BYTES], duel_error *err) {
    (void)device, (void)id;
    return absent(err);
}

int weight_transport_nccl_create(int device, const unsigned char id[WEIGHT_TRANSPORT_NCCL_ID_BYTES], int rank,
                                 int world_size, size_t num_params, weight_transport_nccl **out, duel_error *err) {
    (void)device, (void)id, (void)rank, (void)world_size, (void)num_params;
    *out = NULL;
    return absent(err);
}

int weight_transport_nccl_broadcast(weight_transport_nccl *comm, float *params_host, duel_error *err) {
    (void)comm, (void)params_host;
    return absent(err);
}

void weight_transport_nccl_free(weight_transport_nccl *comm) { (void)comm; }
