# tests/trainer/train2.cmake: the optimizer, checkpoints, the BPE trainer, the training data
# readers and the pretrain/SFT/DPO loops.
duel_test(test_bpe_train ${CMAKE_CURRENT_LIST_DIR}/test_bpe_train.c)
duel_test(test_adamw ${CMAKE_CURRENT_LIST_DIR}/test_adamw.c)
duel_test(test_lm_train ${CMAKE_CURRENT_LIST_DIR}/test_lm_train.c)
# The commands end to end (kill -9 and resume, bad lines, DPO) through the duel executable.
if(NOT DUEL_FUZZ)
  add_test(NAME test_train_cli COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_train_cli.sh $<TARGET_FILE:duel>)
endif()
