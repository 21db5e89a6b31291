/* weight_transport_model.h: a serving process's end of the GPU weight transports (DESIGN.md
 * section 9): snapshot v's weights taken from the transport (cuda_ipc or nccl, which `duel train`
 * sends right after writing the snapshot's folder) instead of the folder's model.safetensors,
 * and made into a model with the folder's config.json.
 *
 * The trainer sends the data section of the f32 model.safetensors it wrote (its tensors in the
 * file's order, packed: lm_model_export_block; its parameter memory is laid out otherwise). So
 * the receiver reads only that file's header, appends the block it received, and checks the
 * sha256 of the whole against the one meta.json records for model.safetensors: a block of
 * another version (cuda_ipc keeps only the latest), a torn read or a layout that is not
 * the file's is refused (DUEL_EFORMAT), and the caller loads the folder instead. The transport is
 * opened at the first load, sized by that header (the parameter count is the model's).
 *
 * nccl is a collective: the receiver takes every version the trainer broadcasts, in order (it
 * receives the versions between the last one it took and the one asked for, keeping the last),
 * so it must run from the trainer's first publication on.
 * UNVERIFIED on a GPU: without a device loading fails with DUEL_EDEVICE (docs/CUDA.md). One
 * thread (the snapshot loader's) owns a receiver. */
#ifndef DUEL_WEIGHT_TRANSPORT_MODEL_H
#define DUEL_WEIGHT_TRANSPORT_MODEL_H

#include <stdint.h>

#include "error.h"
#include "model.h"
#include "weight_transport.h"

typedef struct weight_transport_model_receiver weight_transport_model_receiver;

/* o: kind cuda_ipc or nccl (role, num_params and data_dir are filled in here); copied. DUEL_EINVAL
 * for the file kind (the folder is the transport: use model_load). Opens nothing yet. */
int weight_transport_model_receiver_create(const weight_transport_options *o,
                                           weight_transport_model_receiver **out, duel_error *err);
/* Snapshot `version` (its folder dir) as a model whose weights came through the transport.
 * DUEL_ENOTFOUND when the transport holds another version, DUEL_EFORMAT when the block does not
 * hash to meta.json's model.safetensors, DUEL_EDEVICE without a device, DUEL_EIO for Redis. */
int weight_transport_model_load(weight_transport_model_receiver *r, int64_t version,
                                const char *dir, model **out, duel_error *err);
/* What load does once the block is here (the part without a device, tested on the CPU): the
 * folder's model.safetensors header and num_params floats of block, checked against meta.json's
 * sha256, made into a model. DUEL_EFORMAT for a block of another size or hash. */
int weight_transport_model_from_block(const char *dir, const float *block, size_t num_params,
                                      int64_t version, model **out, duel_error *err);
/* The kind's name ("cuda_ipc", "nccl"). */
const char *weight_transport_model_kind(const weight_transport_model_receiver *r);
/* Versions loaded through the transport so far. */
long long weight_transport_model_received(const weight_transport_model_receiver *r);
void weight_transport_model_receiver_free(weight_transport_model_receiver *r);

#endif
