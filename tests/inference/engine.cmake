# tests/inference/engine.cmake: the serving engine. test_engine_batch checks the batched paged
# forward (model_forward_batch) against model_forward and the torch reference; test_scheduler
# stress-tests continuous batching with a fake forward that detects corrupted KV; test_engine_queue
# the FIFO between the engine thread and its callers; test_engine
# checks the engine thread's equivalences and bad inputs on random models. All use the random
# models of the fwd_make_models fixture (tests/inference/fwd.cmake).
duel_test(test_engine_batch ${CMAKE_CURRENT_LIST_DIR}/test_engine_batch.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_engine_batch PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
duel_test(test_scheduler ${CMAKE_CURRENT_LIST_DIR}/test_scheduler.c)
duel_test(test_engine_queue ${CMAKE_CURRENT_LIST_DIR}/test_engine_queue.c)
duel_test(test_engine ${CMAKE_CURRENT_LIST_DIR}/test_engine.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_engine PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
duel_test(test_engine_duel ${CMAKE_CURRENT_LIST_DIR}/test_engine_duel.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_engine_duel PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
