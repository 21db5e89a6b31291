# tests/trainer/online.cmake: the online trainer service: ERM training, the Redis stream consumer
# (real redis-server per test), snapshots and crash safety of `duel train`.
duel_test(test_erm_train ${CMAKE_CURRENT_LIST_DIR}/test_erm_train.c)
# Integration tests: each starts its own redis-server (tests/tools/redis_fixture.h over
# common/redis_server.h) and trains the fixture model tiny-llama-f32 (fwd_make_models).
duel_test(test_online_service ${CMAKE_CURRENT_LIST_DIR}/test_online_service.c)
if(NOT DUEL_FUZZ)
  target_include_directories(test_online_service PRIVATE ${PROJECT_SOURCE_DIR}/tests/tools)
  set_tests_properties(test_online_service PROPERTIES FIXTURES_REQUIRED fwd_models TIMEOUT 120)
endif()
# Crash safety of the `duel train` executable: kill -9 at random points, resume, compare with an
# uninterrupted run.
duel_test(test_online_crash ${CMAKE_CURRENT_LIST_DIR}/test_online_crash.c)
if(NOT DUEL_FUZZ)
  target_include_directories(test_online_crash PRIVATE ${PROJECT_SOURCE_DIR}/tests/tools)
  target_compile_definitions(test_online_crash PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  add_dependencies(test_online_crash duel)
  set_tests_properties(test_online_crash PROPERTIES FIXTURES_REQUIRED fwd_models TIMEOUT 180)
endif()
# `duel train` under Redis restarts (SIGKILL, AOF always): it reconnects and keeps applying votes.
duel_test(test_train_redis_restart ${CMAKE_CURRENT_LIST_DIR}/test_train_redis_restart.c)
if(NOT DUEL_FUZZ)
  target_include_directories(test_train_redis_restart PRIVATE ${PROJECT_SOURCE_DIR}/tests/tools)
  target_compile_definitions(test_train_redis_restart PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  add_dependencies(test_train_redis_restart duel)
  set_tests_properties(test_train_redis_restart PROPERTIES FIXTURES_REQUIRED fwd_models TIMEOUT 120)
  set_property(TEST test_train_redis_restart APPEND PROPERTY ENVIRONMENT OPENBLAS_NUM_THREADS=1)
endif()
# The SEA synthetic mixture (in process, fixture model).
duel_test(test_online_mixture ${CMAKE_CURRENT_LIST_DIR}/test_online_mixture.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_online_mixture PROPERTIES FIXTURES_REQUIRED fwd_models TIMEOUT 120)
endif()
# Live knobs (duel:knobs): validation, and through a real redis-server.
duel_test(test_online_knobs ${CMAKE_CURRENT_LIST_DIR}/test_online_knobs.c)
if(NOT DUEL_FUZZ)
  target_include_directories(test_online_knobs PRIVATE ${PROJECT_SOURCE_DIR}/tests/tools)
  set_tests_properties(test_online_knobs PROPERTIES FIXTURES_REQUIRED fwd_models TIMEOUT 120)
endif()
# Weight transports: the file round trip and the GPU kinds' "no CUDA device" path.
duel_test(test_weight_transport ${CMAKE_CURRENT_LIST_DIR}/test_weight_transport.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_weight_transport PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
