# compute.cmake: the compute interface's contract (inference/compute.h) in every CI run, against
# the CPU backend (test_compute_contract) and the test double that keeps its own K/V like a
# device (test_compute_contract_reference, tests/inference/compute_reference.c);
# tests/cuda/cuda.cmake runs the same executable against the CUDA backend.
duel_test(test_compute_contract ${CMAKE_CURRENT_LIST_DIR}/test_compute_contract.c
          ${CMAKE_CURRENT_LIST_DIR}/compute_reference.c)
if(TARGET test_compute_contract)
  add_test(NAME test_compute_contract_reference COMMAND test_compute_contract reference)
  set_tests_properties(test_compute_contract_reference PROPERTIES ENVIRONMENT
    "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BUILD_DIR=${PROJECT_BINARY_DIR};DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp")
  set_tests_properties(test_compute_contract test_compute_contract_reference
                       PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
