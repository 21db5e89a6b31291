# tests/gateway/console.cmake: the operator console (issue 19): the admin API's tokens, the knob
# and stats stores against a real redis-server, `duel knobs` and `duel ops status`.
duel_test(test_admin_auth ${CMAKE_CURRENT_LIST_DIR}/test_admin_auth.c)
duel_test(test_knob_store ${CMAKE_CURRENT_LIST_DIR}/test_knob_store.c)
if(NOT DUEL_FUZZ)
  target_compile_definitions(test_knob_store PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  target_include_directories(test_knob_store PRIVATE ${PROJECT_SOURCE_DIR}/tests/tools)
  add_dependencies(test_knob_store duel)
  set_tests_properties(test_knob_store PROPERTIES TIMEOUT 60)
endif()

# The console end to end (tests/e2e/ops.test.mjs): redis-server, two duel serve, duel train,
# Debian's prometheus and Chromium through playwright-core. Exit 77 (skipped) when Chromium,
# playwright-core, node_modules/uplot or prometheus is missing.
if(DUEL_NODE AND TARGET duel AND NOT DUEL_FUZZ)
  add_test(NAME e2e_ops COMMAND ${DUEL_NODE} ${PROJECT_SOURCE_DIR}/tests/e2e/ops.test.mjs)
  set_tests_properties(e2e_ops PROPERTIES TIMEOUT 180 RUN_SERIAL TRUE SKIP_RETURN_CODE 77
    ENVIRONMENT "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BIN=$<TARGET_FILE:duel>;DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp;DUEL_E2E_ARTIFACTS=${PROJECT_BINARY_DIR}/test-artifacts/e2e-ops")
endif()

# bench_console: not a test; docs/BENCHMARKS.md ("Operator console") shows how to run it.
if(NOT DUEL_FUZZ)
  add_executable(bench_console ${CMAKE_CURRENT_LIST_DIR}/bench_console.c)
  target_link_libraries(bench_console PRIVATE duel_gateway duel_common PkgConfig::CMOCKA)
  target_include_directories(bench_console PRIVATE ${PROJECT_SOURCE_DIR}/tests/common)
endif()
