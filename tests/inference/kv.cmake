# Tests of the paged KV cache's memory manager (inference/kv_cache.c).
duel_test(test_kv_cache ${CMAKE_CURRENT_LIST_DIR}/test_kv_cache.c)
