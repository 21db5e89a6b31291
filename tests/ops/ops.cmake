# tests/ops/: the ops/ scripts and configurations against real processes (issue 21).
# nginx (ops/lb) in front of two `duel serve --backend test`: affinity and failover. Release build
# only: the gateways run as the duel executable, and the sanitizer build's checks of it add nothing
# here that the gateway's own socket tests do not. Exit 77 (skipped) without nginx.
if(NOT DUEL_SANITIZE)
  duel_test(test_lb_nginx ${CMAKE_CURRENT_LIST_DIR}/test_lb_nginx.c)
  target_include_directories(test_lb_nginx PRIVATE ${PROJECT_SOURCE_DIR}/tests/gateway)
  target_compile_definitions(test_lb_nginx PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  add_dependencies(test_lb_nginx duel)
  set_tests_properties(test_lb_nginx PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77)
endif()
# ops/up with two gateways: its supervision (a part killed is started again; one that keeps dying
# stops the stack, named). Release build only, like the test above; the trainer trains the
# fixture model (fwd_models).
if(NOT DUEL_SANITIZE)
  add_test(NAME test_ops_up COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_ops_up.sh $<TARGET_FILE:duel>)
  set_tests_properties(test_ops_up PROPERTIES TIMEOUT 180 FIXTURES_REQUIRED fwd_models ENVIRONMENT
    "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BUILD_DIR=${PROJECT_BINARY_DIR};DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp")
endif()
