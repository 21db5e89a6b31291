# tests/trainer/train.cmake: the trainer's forward/backward layers, the models' shared storage, the Llama and GPT-NeoX models
# and the DAP losses.
duel_test(test_train_layers ${CMAKE_CURRENT_LIST_DIR}/test_train_layers.c)
duel_test(test_dap_loss ${CMAKE_CURRENT_LIST_DIR}/test_dap_loss.c)
duel_test(test_train_storage ${CMAKE_CURRENT_LIST_DIR}/test_train_storage.c)
duel_test(test_llama_train ${CMAKE_CURRENT_LIST_DIR}/test_llama_train.c)
duel_test(test_neox_train ${CMAKE_CURRENT_LIST_DIR}/test_neox_train.c)

# Whole-model gradients against PyTorch autograd: the fixture writes the reference with Debian's
# python3-torch (DUEL_PYTHON); when that fails (no torch) the comparison test does not pass.
if(NOT DUEL_FUZZ)
  add_test(NAME trainer_torch_reference
           COMMAND ${DUEL_PYTHON} ${PROJECT_SOURCE_DIR}/tests/tools/torch_grad_reference.py
                   --out ${PROJECT_BINARY_DIR}/test-tmp/torch_grad_reference)
  set_tests_properties(trainer_torch_reference PROPERTIES FIXTURES_SETUP torch_grad_reference)
  duel_test(test_train_model_torch ${CMAKE_CURRENT_LIST_DIR}/test_train_model_torch.c)
  set_tests_properties(test_train_model_torch PROPERTIES FIXTURES_REQUIRED torch_grad_reference)
endif()

# Forked rows (a pair's prompt once, its two answers as branches) against plain rows.
duel_test(test_train_fork ${CMAKE_CURRENT_LIST_DIR}/test_train_fork.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_train_fork PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
