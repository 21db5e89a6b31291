/* weight_transport.h: how a published snapshot's weights reach the servers (DESIGN.md section 9,
 * docs/TRAINER.md). One interface, three kinds:
 *   file      (default) the snapshot folder <data_dir>/snapshots/vNNNNNN is the transport: the
 *             trainer wrote it durably (snapshot.h), send only checks it is there; receive
 *             verifies every sha256 (snapshot_verify) and returns the folder for the loader.
 *   cuda_ipc  trainer and servers on one GPU node: the sender keeps the flat f32 parameter block
 *             in one exported device buffer; each send copies the new weights into it and SETs
 *             <prefix>transport:ipc to the version (8 bytes, little-endian) followed by the CUDA
 *             IPC handle; receive GETs it, refuses another version (DUEL_ENOTFOUND: the buffer
 *             holds only the latest), opens the handle and copies the block out.
 *   nccl      trainer and servers on several GPUs or nodes: rank 0 (the trainer) makes the NCCL
 *             unique id and SETs it at <prefix>transport:nccl_id; the other ranks GET it (waiting
 *             up to timeout_ms) and all join one communicator; each send is an ncclBroadcast of
 *             the block from rank 0 that every receiving rank matches with a receive.
 * The GPU kinds check the device before anything else: with no CUDA device (or in a build
 * without CUDA) weight_transport_open fails with DUEL_EDEVICE "... no CUDA device ...".
 * One thread owns a transport. */
#ifndef DUEL_WEIGHT_TRANSPORT_H
#define DUEL_WEIGHT_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum weight_transport_kind {
    WEIGHT_TRANSPORT_FILE,
    WEIGHT_TRANSPORT_CUDA_IPC,
    WEIGHT_TRANSPORT_NCCL,
} weight_transport_kind;

typedef enum weight_transport_role {
    WEIGHT_TRANSPORT_SENDER,   /* the trainer */
    WEIGHT_TRANSPORT_RECEIVER, /* a server */
} weight_transport_role;

typedef struct weight_transport_options {
    weight_transport_kind kind;
    weight_transport_role role;
    const char *data_dir;     /* file: snapshots live under <data_dir>/snapshots */
    const struct redis_link_config *link; /* sentinels (redis_link.h); NULL: redis_host:redis_port */
    const char *redis_host;   /* cuda_ipc, nccl: where the handle or id is exchanged: 127.0.0.1 */
    int redis_port;           /* 6379 */
    const char *key_prefix;   /* "duel:" */
    int device;               /* CUDA device ordinal: 0 */
    int rank, world_size;     /* nccl: rank 0 sends; world_size >= 2 */
    size_t num_params;        /* floats in the parameter block (cuda_ipc, nccl) */
    int timeout_ms;           /* Redis timeouts and the wait for the NCCL id: 10000 */
} weight_transport_options;

/* One published version. */
typedef struct weight_transport_snapshot {
    int64_t version;
    const char *dir;      /* its folder (file) */
    const float *params;  /* num_params floats of host memory (cuda_ipc, nccl) */
} weight_transport_snapshot;

typedef struct weight_transport weight_transport;

void weight_transport_default_options(weight_transport_options *out);
/* "file", "cuda_ipc", "nccl"; DUEL_EINVAL naming the value otherwise. */
int weight_transport_kind_parse(const char *name, weight_transport_kind *out, duel_error *err);
const char *weight_transport_kind_name(weight_transport_kind kind);

int weight_transport_open(const weight_transport_options *options, weight_transport **out, duel_error *err);
void weight_transport_close(weight_transport *transport);

/* Sender: makes snapshot->version available to receivers. */
int weight_transport_send(weight_transport *transport, const weight_transport_snapshot *snapshot,
                          duel_error *err);
/* Receiver: file fills dir_out (cap bytes) with the verified folder; cuda_ipc and nccl fill
 * params_out (num_params floats). */
int weight_transport_receive(weight_transport *transport, int64_t version, char *dir_out, size_t cap,
                             float *params_out, duel_error *err);

#endif
