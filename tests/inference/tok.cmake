# Tokenizer and chat template tests (owner: tok).
duel_test(test_tokenizer ${CMAKE_CURRENT_LIST_DIR}/test_tokenizer.c)
duel_test(test_chat_template ${CMAKE_CURRENT_LIST_DIR}/test_chat_template.c)

# Parity with @huggingface/tokenizers (node) on GPT-2's real vocabulary; skipped (exit 77) when
# node or the npm devDependencies are missing, so it never passes silently.
if(NOT DUEL_FUZZ)
  add_executable(tokenizer_parity ${PROJECT_SOURCE_DIR}/tests/tools/tokenizer_parity.c)
  target_link_libraries(tokenizer_parity PRIVATE duel_inference duel_common)
  add_test(NAME tokenizer_parity
    COMMAND sh ${PROJECT_SOURCE_DIR}/tests/tools/tokenizer_parity.sh ${PROJECT_SOURCE_DIR}
            ${PROJECT_BINARY_DIR}/test-tmp/tokenizer-parity $<TARGET_FILE:tokenizer_parity>)
  set_tests_properties(tokenizer_parity PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()
