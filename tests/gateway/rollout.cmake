# tests/gateway/rollout.cmake: the A/B rollout (issue 20): duel:rollout's actions with their audit
# entries and notes, refused specs leaving the rollout untouched, the arena votes of duel:prefs,
# `duel rollout` and `duel arena ratings`, against a real redis-server.
duel_test(test_rollout_store ${CMAKE_CURRENT_LIST_DIR}/test_rollout_store.c)
if(NOT DUEL_FUZZ)
  target_compile_definitions(test_rollout_store PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  target_include_directories(test_rollout_store PRIVATE ${PROJECT_SOURCE_DIR}/tests/tools)
  add_dependencies(test_rollout_store duel)
  set_tests_properties(test_rollout_store PROPERTIES TIMEOUT 60)
endif()
duel_test(test_rollout_api ${CMAKE_CURRENT_LIST_DIR}/test_rollout_api.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_rollout_api PROPERTIES TIMEOUT 60)
endif()
# Serving by arm on the default model: pinned versions resident, battles between two arms, an arm
# at weight 0 retired, the revision in duel:stats and /metrics (a gateway, the loader, Redis).
duel_test(test_rollout_serving ${CMAKE_CURRENT_LIST_DIR}/test_rollout_serving.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_rollout_serving PROPERTIES TIMEOUT 200 SKIP_RETURN_CODE 77)
  # End to end (two gateways, the controller, simulated users voting by the lexical oracle): a
  # damaged canary rolled back, a good one promoted. About 40 s in a release build (200 to 400
  # duels): not run in the sanitizer build, where it would take minutes.
  if(NOT DUEL_SANITIZE)
    add_test(NAME test_rollout_e2e COMMAND test_rollout_serving e2e)
    # Not RUN_SERIAL: what it asserts comes from the arena's battles and the controller's
    # checks, not from timing (its waits poll); it passed at load 10+ in 79 s.
    set_tests_properties(test_rollout_e2e PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
      ENVIRONMENT "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BUILD_DIR=${PROJECT_BINARY_DIR};DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp")
  endif()
endif()
# The console's rollout panel in Chromium (tests/e2e/rollout.test.mjs): leaderboard, a weight set
# and an abort from the page with their confirmations, a viewer without buttons.
if(DUEL_NODE AND NOT DUEL_FUZZ)
  add_test(NAME e2e_rollout COMMAND ${DUEL_NODE} ${PROJECT_SOURCE_DIR}/tests/e2e/rollout.test.mjs)
  set_tests_properties(e2e_rollout PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE SKIP_RETURN_CODE 77
    ENVIRONMENT "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BIN=$<TARGET_FILE:duel>;DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp")
endif()
