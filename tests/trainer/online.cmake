# tests/trainer/online.cmake: the online trainer service: ERM training, vote entry decoding, the
# Redis stream consumer (real redis-server per test), snapshots and crash safety of `duel train`.
duel_test(test_erm_train ${CMAKE_CURRENT_LIST_DIR}/test_erm_train.c)
duel_test(test_online_sha256 ${CMAKE_CURRENT_LIST_DIR}/test_online_sha256.c)
duel_test(test_vote_entry ${CMAKE_CURRENT_LIST_DIR}/test_vote_entry.c)
