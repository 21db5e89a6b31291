# tests/cuda/cuda.cmake: the CUDA backend (cuda/). test_cuda_api needs no GPU and runs everywhere;
# test_cuda_kernels compares every kernel with its CPU reference and, without a GPU, prints
# "SKIP: no CUDA device (...)" and exits 77, which ctest reports as skipped. bench_cuda_kernels is a
# tool, not a test: ops/bench_cuda.sh runs it on a GPU machine (docs/CUDA.md).
duel_test(test_cuda_api ${CMAKE_CURRENT_LIST_DIR}/test_cuda_api.c)
duel_test(test_cuda_kernels ${CMAKE_CURRENT_LIST_DIR}/test_cuda_kernels.c)
if(TARGET test_cuda_kernels)
  set_tests_properties(test_cuda_kernels PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
  add_executable(bench_cuda_kernels ${CMAKE_CURRENT_LIST_DIR}/bench_cuda_kernels.c)
  target_link_libraries(bench_cuda_kernels PRIVATE duel_cuda duel_common)
endif()
# test_cuda_erm: batched ERM scoring on the GPU (cuda/cuda_erm.h) against erm_score; without a GPU
# it checks the no-device error contract, then prints its SKIP line and exits 77.
duel_test(test_cuda_erm ${CMAKE_CURRENT_LIST_DIR}/test_cuda_erm.c)
if(TARGET test_cuda_erm)
  set_tests_properties(test_cuda_erm PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()
# test_compute_contract_cuda: the compute interface's contract (tests/inference/test_compute_contract.c,
# built by tests/inference/compute.cmake) against the CUDA backend; without a GPU it prints
# "SKIP: no CUDA device (...)" and exits 77.
if(TARGET test_compute_contract)
  add_test(NAME test_compute_contract_cuda COMMAND test_compute_contract cuda)
  set_tests_properties(test_compute_contract_cuda PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
    FIXTURES_REQUIRED fwd_models ENVIRONMENT
    "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BUILD_DIR=${PROJECT_BINARY_DIR};DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp")
endif()
# compare_backends: a tool, not a test: ops/bench_cuda.sh checks the CUDA backend against the CPU
# on model directories with it (its dry run compares the CPU with the test double).
add_executable(compare_backends ${CMAKE_CURRENT_LIST_DIR}/compare_backends.c
               ${PROJECT_SOURCE_DIR}/tests/inference/compute_reference.c)
target_include_directories(compare_backends PRIVATE ${PROJECT_SOURCE_DIR}/tests/inference)
target_link_libraries(compare_backends PRIVATE duel_cuda duel_inference duel_common)
