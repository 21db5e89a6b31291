# tests/trainer/files.cmake: the trainer's durable files under injected faults (short writes,
# failed fsyncs, crashes between renames: tests/common/fault_io.h): checkpoints, snapshots, and
# the online trainer's parts and checkpoint.
duel_test(test_checkpoint ${CMAKE_CURRENT_LIST_DIR}/test_checkpoint.c)
duel_test(test_snapshot_write ${CMAKE_CURRENT_LIST_DIR}/test_snapshot_write.c)
duel_test(test_online_checkpoint ${CMAKE_CURRENT_LIST_DIR}/test_online_checkpoint.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_online_checkpoint PROPERTIES FIXTURES_REQUIRED fwd_models TIMEOUT 120)
  # One BLAS thread: the fixture model's matrices are tiny, and idle BLAS threads spinning on a
  # busy machine cost more than the updates.
  set_property(TEST test_online_checkpoint APPEND PROPERTY ENVIRONMENT OPENBLAS_NUM_THREADS=1)
endif()
duel_test(test_online_parts ${CMAKE_CURRENT_LIST_DIR}/test_online_parts.c)
