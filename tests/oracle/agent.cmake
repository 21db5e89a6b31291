# agent.cmake: tests of the preference oracles (oracle/): lexical scores, preference labels (the
# simulated user's noise model), the HTTP judge against an in-process stand-in server, the
# reward-model oracle, prompt sets and simulated users.
duel_test(test_lexical ${CMAKE_CURRENT_LIST_DIR}/test_lexical.c)
duel_test(test_preference ${CMAKE_CURRENT_LIST_DIR}/test_preference.c)
duel_test(test_judge ${CMAKE_CURRENT_LIST_DIR}/test_judge.c)
duel_test(test_oracle_config ${CMAKE_CURRENT_LIST_DIR}/test_oracle_config.c)
duel_test(test_rm ${CMAKE_CURRENT_LIST_DIR}/test_rm.c)
duel_test(test_user ${CMAKE_CURRENT_LIST_DIR}/test_user.c)

# The rm oracle's models: two random two-label reward models with float64 torch references and a
# causal LM, written by Debian's /usr/bin/python3 (torch). Without torch the fixture FAILS (ops/test
# installs python3-torch); it never skips.
if(NOT DUEL_FUZZ)
  add_test(NAME agent_make_reward_models
           COMMAND ${DUEL_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/make_reward_models.py
                   ${PROJECT_BINARY_DIR}/test-models-oracle)
  set_tests_properties(agent_make_reward_models PROPERTIES FIXTURES_SETUP agent_reward_models
                       TIMEOUT 300)
  set_tests_properties(test_rm PROPERTIES FIXTURES_REQUIRED agent_reward_models)
endif()
