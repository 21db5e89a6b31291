# tests/fuzz/vote.cmake: libFuzzer target for the vote codec (common/vote_entry.c: unpack, decode,
# and the encoder's round trip); seeds in corpus/fuzz_vote_entry (valid a/b and tie votes, f16
# features, a wrong model id).
duel_fuzz_target(fuzz_vote_entry ${CMAKE_CURRENT_LIST_DIR}/fuzz_vote_entry.c)
