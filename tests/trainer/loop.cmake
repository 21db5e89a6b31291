# tests/trainer/loop.cmake: issue 7's end-to-end learning loop without the gateway, through
# `duel bench loop` on the shipped default model: lexical-oracle votes into a private
# redis-server, `duel train` learns and publishes snapshots, the engine adapter hot-swaps them;
# exactly-once counts, hot-swaps and the held-out win rate are checked.
duel_test(test_learning_loop ${CMAKE_CURRENT_LIST_DIR}/test_learning_loop.c)
if(NOT DUEL_FUZZ)
  target_compile_definitions(test_learning_loop PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  add_dependencies(test_learning_loop duel)
  # RUN_SERIAL: the loop (serving and `duel train`, two processes) is held to a learning margin
  # that depends on how fast snapshots follow the votes; with other tests beside it on a busy
  # 2-core machine that latency reached 11 s p50 and the margin failed (win rate 0.64 < 0.67).
  set_tests_properties(test_learning_loop PROPERTIES TIMEOUT 1200 RUN_SERIAL TRUE)
endif()
