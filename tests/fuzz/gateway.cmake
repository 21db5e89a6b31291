# tests/fuzz/gateway.cmake: libFuzzer targets for the gateway's untrusted input: the duel.v1
# message parser (gateway/protocol.c; seeds in corpus/fuzz_protocol: every message type, errors
# of each kind) and the HTTP request rules (gateway/http_route.c: paths, query strings, Origin,
# Sec-WebSocket-Protocol; seeds in corpus/fuzz_http_route). ops/test runs each for 20 s.
duel_fuzz_target(fuzz_protocol ${CMAKE_CURRENT_LIST_DIR}/fuzz_protocol.c)
duel_fuzz_target(fuzz_http_route ${CMAKE_CURRENT_LIST_DIR}/fuzz_http_route.c)
if(TARGET fuzz_protocol)
  target_link_libraries(fuzz_protocol PRIVATE duel_gateway)
  target_link_libraries(fuzz_http_route PRIVATE duel_gateway)
endif()
