# tests/common/config.cmake: the shared configuration (common/config.c) and config/default.json
# against the sections' real parsers; the trainer's parser is reached through the duel executable.
duel_test(test_config ${CMAKE_CURRENT_LIST_DIR}/test_config.c)
if(NOT DUEL_FUZZ)
  target_compile_definitions(test_config PRIVATE DUEL_EXE="$<TARGET_FILE:duel>")
  add_dependencies(test_config duel)
  set_tests_properties(test_config PROPERTIES TIMEOUT 120)
endif()
