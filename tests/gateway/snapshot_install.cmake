# tests/gateway/snapshot_install.cmake: every way a snapshot is refused on its way into serving:
# the loader (gateway/snapshot_loader.c with common/snapshot.h) against a real redis-server and
# a stand-in backend, and the engine adapter's install on the fixture model.
duel_test(test_snapshot_install ${CMAKE_CURRENT_LIST_DIR}/test_snapshot_install.c)
if(NOT DUEL_FUZZ)
  target_include_directories(test_snapshot_install PRIVATE ${PROJECT_SOURCE_DIR}/tests/tools)
  set_tests_properties(test_snapshot_install PROPERTIES FIXTURES_REQUIRED fwd_models TIMEOUT 60)
endif()
