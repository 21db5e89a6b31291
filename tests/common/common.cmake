duel_test(test_utf8 ${CMAKE_CURRENT_LIST_DIR}/test_utf8.c)
duel_test(test_rng ${CMAKE_CURRENT_LIST_DIR}/test_rng.c)
duel_test(test_file_map ${CMAKE_CURRENT_LIST_DIR}/test_file_map.c)
duel_test(test_json_util ${CMAKE_CURRENT_LIST_DIR}/test_json_util.c)
