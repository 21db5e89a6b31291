# agent.cmake: tests of the dueling agent's pure parts: the ERM ensemble (inference/erm.c) and the
# pair selection strategies (inference/duel.c).
duel_test(test_erm ${CMAKE_CURRENT_LIST_DIR}/test_erm.c)
duel_test(test_duel ${CMAKE_CURRENT_LIST_DIR}/test_duel.c)
