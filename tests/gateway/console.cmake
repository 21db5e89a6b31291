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
