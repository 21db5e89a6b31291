# Fuzz target for the tokenizer.json loader (owner: tok).
duel_fuzz_target(fuzz_tokenizer ${CMAKE_CURRENT_LIST_DIR}/fuzz_tokenizer.c)
