# tests/inference/fwd.cmake: the CPU forward pass. test_cpu_ops checks each layer kernel against a
# float64 C reference; test_forward checks whole models against the PyTorch float64 reference
# (tests/tools/torch_reference.py). The fixture fwd_make_models writes the random models and
# reference outputs into ${PROJECT_BINARY_DIR}/test-models with Debian's /usr/bin/python3; when
# that Python lacks torch the fixture FAILS (ops/test installs python3-torch), it never skips.
duel_test(test_cpu_ops ${CMAKE_CURRENT_LIST_DIR}/test_cpu_ops.c)
duel_test(test_forward ${CMAKE_CURRENT_LIST_DIR}/test_forward.c)

if(NOT DUEL_FUZZ)
  add_test(NAME fwd_make_models
           COMMAND ${DUEL_PYTHON} ${PROJECT_SOURCE_DIR}/tests/tools/make_random_model.py
                   --test-fixture ${PROJECT_BINARY_DIR}/test-models)
  set_tests_properties(fwd_make_models PROPERTIES FIXTURES_SETUP fwd_models TIMEOUT 300)
  set_tests_properties(test_forward PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
