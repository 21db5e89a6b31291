# st.cmake: libFuzzer targets for the model-file readers; seeds in corpus/fuzz_safetensors and
# corpus/fuzz_model_config.
duel_fuzz_target(fuzz_safetensors ${CMAKE_CURRENT_LIST_DIR}/fuzz_safetensors.c)
duel_fuzz_target(fuzz_model_config ${CMAKE_CURRENT_LIST_DIR}/fuzz_model_config.c)
