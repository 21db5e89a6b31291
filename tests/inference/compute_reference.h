/* compute_reference.h: the test double of the compute interface (inference/compute.h), a CPU
 * backend that behaves like a device one: the KV pool has no host storage (the backend keeps
 * its own arrays indexed by block id, and performs the copy-on-write copies the pool records),
 * logits stay in the backend between forward and sample, and every sequence of a step runs on
 * its own (one model_forward_batch per entry), the obviously correct way. The contract tests
 * (test_compute_contract.c) and the engine equivalence tests run against it in every CI build,
 * so the paths a GPU backend takes are checked without a GPU. */
#ifndef DUEL_TESTS_COMPUTE_REFERENCE_H
#define DUEL_TESTS_COMPUTE_REFERENCE_H

#include "compute.h"

/* The provider "reference" (not a device: "auto" never picks it). */
const compute_provider *compute_reference_provider(void);

#endif
