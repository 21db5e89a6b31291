/* cuda_compute.h: the CUDA compute backend, an implementation of inference/compute.h that the
 * `duel` executable (and the tests) hand to the engine as a provider, so that inference/ never
 * depends on cuda/ (cuda/ depends on inference/, one way).
 *
 * What it holds on the device (cuda/cuda_compute.cu):
 *   - the KV pool's storage: per layer one K and one V array of bf16
 *     [num_blocks][num_kv_heads][block_size][head_dim] (inference/kv_cache.h's layout, the same
 *     block ids; the pool itself has no storage and records its copy-on-write copies, which
 *     copy_blocks performs in conflict-free batches in the recorded order);
 *   - each arm's weights in bf16, one allocation per arm (q/k/v and gate/up fused as
 *     model_tensor_read gives them, packed bf16/q8 models' values as their kernels see them; a
 *     tied head is the embedding itself);
 *   - the step's logits (f32 rows), sampled on the device (backend_cuda_sample): only token ids
 *     and log-probabilities come back; a forced sample's log-probability is a log-softmax
 *     kernel's; final hidden states and target log-probabilities are copied back;
 *   - ERM ensembles (cuda_erm.h), scoring host features into host rewards.
 * A forward (cuda/cuda_forward.cu) is one pass per arm and step over every piece of the batch:
 * embedding, then per layer norm -> bf16 -> cuBLAS QKV (+bias) -> RoPE -> K/V written into the
 * paged cache -> paged attention (all single-token pieces in one decode launch, each longer
 * piece by the prefill kernel) -> cuBLAS o_proj accumulated into the residual -> norm -> MLP;
 * then the final norm and the head for the rows that want logits or hidden states. A step of
 * only single-token pieces (a decode step) is captured once per shape (rows rounded up to a
 * power of two, block-table width likewise) as a CUDA graph and replayed: inputs go through
 * fixed device buffers, so a replay only uploads the step's ids, positions, slots and tables.
 *
 * STATUS: compiled in every CUDA build; NEVER RUN ON A GPU (no device was lent when it was
 * written). tests/inference/test_compute_contract.c runs the contract tests against it when a
 * device answers (test_compute_contract_cuda; a SKIP line otherwise), and ops/bench_cuda.sh
 * checks it against the CPU engine on real shapes (docs/CUDA.md).
 *
 * In builds without nvcc (cuda_compute_absent.c) the provider exists, its probe says "built
 * without CUDA" and create fails with DUEL_EDEVICE. */
#ifndef DUEL_CUDA_COMPUTE_H
#define DUEL_CUDA_COMPUTE_H

#include "compute.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The provider "cuda" (a device: "auto" picks it when its probe finds a usable GPU). */
const compute_provider *cuda_compute_provider(void);

#ifdef __cplusplus
}
#endif

#endif
