# agent.cmake: tests of the preference oracles (oracle/): lexical scores, preference labels, the
# HTTP judge against an in-process stand-in server, the reward-model oracle.
duel_test(test_lexical ${CMAKE_CURRENT_LIST_DIR}/test_lexical.c)
duel_test(test_preference ${CMAKE_CURRENT_LIST_DIR}/test_preference.c)
duel_test(test_judge ${CMAKE_CURRENT_LIST_DIR}/test_judge.c)
