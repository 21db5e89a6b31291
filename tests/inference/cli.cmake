# tests/inference/cli.cmake: tests of inference/sampler.c (owned by the cli engineer).
duel_test(test_sampler ${CMAKE_CURRENT_LIST_DIR}/test_sampler.c)
