# tests/trainer/transport.cmake: the serving end of the GPU weight transports
# (trainer/weight_transport_model.h) in the parts without a GPU: a snapshot's model from the
# trainer's parameter block, checked against meta.json's hash (fixture model tiny-llama-f32).
duel_test(test_weight_transport_model ${CMAKE_CURRENT_LIST_DIR}/test_weight_transport_model.c)
if(NOT DUEL_FUZZ)
  set_tests_properties(test_weight_transport_model PROPERTIES FIXTURES_REQUIRED fwd_models)
endif()
