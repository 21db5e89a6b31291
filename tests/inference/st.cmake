# st.cmake: tests of the model-file readers (inference/safetensors.c, inference/model_config.c).
duel_test(test_safetensors ${CMAKE_CURRENT_LIST_DIR}/test_safetensors.c)
duel_test(test_model_config ${CMAKE_CURRENT_LIST_DIR}/test_model_config.c)
