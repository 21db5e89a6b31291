# agent.cmake: libFuzzer target for the oracles' untrusted input (judge responses, answers scored
# by the lexical oracle); seeds in corpus/fuzz_judge_response.
duel_fuzz_target(fuzz_judge_response ${CMAKE_CURRENT_LIST_DIR}/fuzz_judge_response.c)
