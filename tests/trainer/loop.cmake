# tests/trainer/loop.cmake: issue 7's end-to-end learning loop without the gateway, through
# `duel bench loop` on the shipped default model: lexical-oracle votes into a private
# redis-server, `duel train` learns and publishes snapshots, the engine adapter hot-swaps them;
# exactly-once counts, hot-swaps and the held-out win rate are checked.
duel_test(test_learning_loop ${CMAKE_CURRENT_LIST_DIR}/test_learning_loop.c)
if(NOT DUEL_FUZZ)
  target_compile_definitions(test_learning_loop PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  add_dependencies(test_learning_loop duel)
  # Not RUN_SERIAL any more: with fixed batches and --max-lag (see the test's comment) what it
  # learns no longer depends on the tests beside it; a busy machine only makes it slower.
  set_tests_properties(test_learning_loop PROPERTIES TIMEOUT 1200)
endif()
