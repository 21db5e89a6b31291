# tests/trainer/train.cmake: the trainer's forward/backward layers, the Llama model and the DAP losses.
duel_test(test_train_layers ${CMAKE_CURRENT_LIST_DIR}/test_train_layers.c)
