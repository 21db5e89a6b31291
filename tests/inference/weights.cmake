# tests/inference/weights.cmake: the packed weight formats (bf16, q8) and their kernels
# (inference/weight_format.c, weight_matmul.c, matmul_bf16.c, matmul_q8.c) against references in
# double; kernels this CPU lacks print a skip line.
duel_test(test_weight_matmul ${CMAKE_CURRENT_LIST_DIR}/test_weight_matmul.c)
# Whole models with bf16 / q8 weights and the bf16 KV cache against the torch references with
# the weights rounded the same way (fwd_make_models), and on the shipped default model.
duel_test(test_forward_weights ${CMAKE_CURRENT_LIST_DIR}/test_forward_weights.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_forward_weights PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
