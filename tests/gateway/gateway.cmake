# tests/gateway/: the gateway's tests (owner: gateway). Unit tests of the protocol parser and the
# spill log; socket tests against a real gateway and a real redis-server.
duel_test(test_gateway_protocol ${CMAKE_CURRENT_LIST_DIR}/test_protocol.c)
duel_test(test_gateway_spill_log ${CMAKE_CURRENT_LIST_DIR}/test_spill_log.c)
duel_test(test_gateway_socket ${CMAKE_CURRENT_LIST_DIR}/test_gateway_socket.c)
set_tests_properties(test_gateway_socket PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)
duel_test(test_gateway_no_vote_lost ${CMAKE_CURRENT_LIST_DIR}/test_no_vote_lost.c)
set_tests_properties(test_gateway_no_vote_lost PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)

# The browser test (tests/e2e): node + playwright-core driving Debian's /usr/bin/chromium against
# `duel serve`. Exit 77 (skipped) when chromium or playwright-core is missing.
if(DUEL_NODE AND TARGET duel AND NOT DUEL_FUZZ)
  add_test(NAME e2e_chat COMMAND ${DUEL_NODE} ${PROJECT_SOURCE_DIR}/tests/e2e/chat.test.mjs)
  set_tests_properties(e2e_chat PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE SKIP_RETURN_CODE 77
    ENVIRONMENT "DUEL_SOURCE_DIR=${PROJECT_SOURCE_DIR};DUEL_BIN=$<TARGET_FILE:duel>;DUEL_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp;DUEL_E2E_ARTIFACTS=${PROJECT_BINARY_DIR}/test-artifacts/e2e")
endif()
duel_test(test_gateway_backend_engine ${CMAKE_CURRENT_LIST_DIR}/test_backend_engine.c)
set_tests_properties(test_gateway_backend_engine PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77)

# bench_gateway: not a test; docs/BENCHMARKS.md ("Gateway") shows how to run it.
if(NOT DUEL_FUZZ)
  add_executable(bench_gateway ${CMAKE_CURRENT_LIST_DIR}/bench_gateway.c)
  target_link_libraries(bench_gateway PRIVATE duel_gateway duel_common PkgConfig::CMOCKA)
  target_include_directories(bench_gateway PRIVATE ${PROJECT_SOURCE_DIR}/tests/common)
endif()
duel_test(test_gateway_snapshot_swap ${CMAKE_CURRENT_LIST_DIR}/test_snapshot_swap.c)
set_tests_properties(test_gateway_snapshot_swap PROPERTIES TIMEOUT 300 RUN_SERIAL TRUE
                     SKIP_RETURN_CODE 77)
# The Redis thread when a pipelined command fails: no reply read for another command's, a
# refused XADD spilled and replayed once.
duel_test(test_gateway_redis_worker ${CMAKE_CURRENT_LIST_DIR}/test_redis_worker.c)
# The A/B router: spec parsing and pinning, and the Redis thread's once-per-change feed.
duel_test(test_gateway_rollout ${CMAKE_CURRENT_LIST_DIR}/test_rollout.c)
# Hostile clients (issue 21): descriptors exhausted, upgrades without duel.v1, connection caps,
# hello/idle/partial-message timeouts, HTTP methods, HEAD, 431, the Origin allow-list.
duel_test(test_gateway_hostile ${CMAKE_CURRENT_LIST_DIR}/test_gateway_hostile.c)
set_tests_properties(test_gateway_hostile PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)
# The duel table's byte budget for finished duels (gateway.max_duel_bytes).
duel_test(test_gateway_duel_table ${CMAKE_CURRENT_LIST_DIR}/test_duel_table.c)
# Limits' own codes, the trusted proxy's client address (in test_gateway_hostile above) and wss
# through lws's TLS with a self-signed certificate the test makes (openssl CLI, libssl client).
find_package(OpenSSL)
if(OpenSSL_FOUND)
  duel_test(test_gateway_tls ${CMAKE_CURRENT_LIST_DIR}/test_gateway_tls.c)
  if(TARGET test_gateway_tls)
    target_link_libraries(test_gateway_tls PRIVATE OpenSSL::SSL OpenSSL::Crypto)
    set_tests_properties(test_gateway_tls PROPERTIES TIMEOUT 60)
  endif()
endif()
# The live fuzzer: frame fuzzers, slowloris, 1,000 idle connections and an ask burst against a
# running gateway while a normal user chats (its time to duel within 2x of alone, plus a floor).
duel_test(test_gateway_live_fuzz ${CMAKE_CURRENT_LIST_DIR}/test_gateway_live_fuzz.c)
set_tests_properties(test_gateway_live_fuzz PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)
