# Chaos under load (issue 21): ops/chaos at CI size. Two gateways, a trainer and redis-server
# under `duel sim --gateway` load, each part killed twice with SIGKILL and restarted; every
# acknowledged vote in duel:prefs once, applied once, only the deliberate bad entries
# dead-lettered. Without the uninterrupted replay (--no-replay: it trains everything a second
# time; `ops/chaos` runs it, test_online_crash proves it on a scripted stream). Release build
# only: the sanitizer build serves too slowly for thousands of votes.
if(NOT DUEL_SANITIZE)
  add_test(NAME test_chaos COMMAND bash ${PROJECT_SOURCE_DIR}/ops/chaos --votes 2000 --kills 2 --seed 7
           --no-replay --duel $<TARGET_FILE:duel>)
  # Not RUN_SERIAL: nothing in it is timed (each wait polls up to a generous limit), and alone it
  # would hold CI's second core idle for its whole run (about 100 s); it passed beside other
  # tests at load 10-20 in 148 s.
  set_tests_properties(test_chaos PROPERTIES TIMEOUT 400 ENVIRONMENT
    "DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp;DUEL_PYTHON=${DUEL_PYTHON}")
endif()

# Redis Sentinel (tests/chaos/test_sentinel.sh): master, replica, three sentinels, ACL
# credentials from the environment; kill -9 of the master under load, 0 acknowledged votes lost,
# the failover time printed. Release only (about 25 s of real processes; the code paths are the
# ones test_gateway_redis_worker covers under the sanitizers). 77: redis-sentinel missing.
if(NOT DUEL_SANITIZE)
  add_test(NAME test_sentinel COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_sentinel.sh $<TARGET_FILE:duel>)
  set_tests_properties(test_sentinel PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77 ENVIRONMENT
    "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp;DUEL_PYTHON=${DUEL_PYTHON}")
endif()
