# tests/gateway/: the gateway's tests (owner: gateway). Unit tests of the protocol parser, the
# spill log and vote records; socket tests against a real gateway and a real redis-server.
duel_test(test_gateway_protocol ${CMAKE_CURRENT_LIST_DIR}/test_protocol.c)
duel_test(test_gateway_spill_log ${CMAKE_CURRENT_LIST_DIR}/test_spill_log.c)
duel_test(test_gateway_socket ${CMAKE_CURRENT_LIST_DIR}/test_gateway_socket.c)
set_tests_properties(test_gateway_socket PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)
duel_test(test_gateway_no_vote_lost ${CMAKE_CURRENT_LIST_DIR}/test_no_vote_lost.c)
set_tests_properties(test_gateway_no_vote_lost PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)
