# tests/tools/cli.cmake: tests of the `duel` executable (cli/): the UTF-8 stream printer in C, and
# the command-line behaviour as a shell script run against the built binary (exit 77 = skipped,
# when the random test model cannot be made).
duel_test(test_utf8_stream ${CMAKE_CURRENT_LIST_DIR}/test_utf8_stream.c
          ${PROJECT_SOURCE_DIR}/cli/utf8_stream.c)
if(NOT DUEL_FUZZ)
  target_include_directories(test_utf8_stream PRIVATE ${PROJECT_SOURCE_DIR}/cli)
  add_test(NAME test_cli COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_cli.sh $<TARGET_FILE:duel>)
  set_tests_properties(test_cli PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600 ENVIRONMENT
    "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BUILD_DIR=${PROJECT_BINARY_DIR};DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp;DUEL_PYTHON=${DUEL_PYTHON}")
endif()

# `duel sim` in process and its sweep runner on the shipped default model (tests/tools/test_sim.sh):
# bad input, the outputs' shape, determinism, resume; and simulated users over websockets against
# a real stack: redis-server, `duel train`, `duel serve` on free ports (test_sim_gateway.sh).
if(NOT DUEL_FUZZ)
  foreach(t test_sim test_sim_gateway)
    add_test(NAME ${t} COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/${t}.sh $<TARGET_FILE:duel>)
    set_tests_properties(${t} PROPERTIES TIMEOUT 600 ENVIRONMENT
      "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp;DUEL_PYTHON=${DUEL_PYTHON};DUEL_SANITIZED=${DUEL_SANITIZE}")
  endforeach()
endif()

# models/evaluate.py's scoring and models/wordnet_data.py's held-out split (Python, standard
# library; exit 77 = skipped without Debian's WordNet).
if(NOT DUEL_FUZZ)
  add_test(NAME test_models_py COMMAND ${DUEL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_models_py.py)
  set_tests_properties(test_models_py PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600 ENVIRONMENT
    "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endif()

# tests/tools/hf_to_gguf.py (the GGUF converter of ops/bench_llamacpp.sh): metadata, the q/k
# permutation (same attention scores under both RoPE conventions), rounded values (exit 77
# without torch).
if(NOT DUEL_FUZZ)
  add_test(NAME test_hf_to_gguf COMMAND ${DUEL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/test_hf_to_gguf.py)
  set_tests_properties(test_hf_to_gguf PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()
