# config/embed.cmake: compiles config/default.json into duel_common as the C string behind
# duel_config_default_text() (common/config.c): the defaults and the schema of every config.
# Included from common/CMakeLists.txt after duel_common is defined; the generated file is rebuilt
# whenever default.json changes.
set(DUEL_DEFAULT_CONFIG_JSON ${PROJECT_SOURCE_DIR}/config/default.json)
set(DUEL_DEFAULT_CONFIG_C ${CMAKE_CURRENT_BINARY_DIR}/config_default_json.c)
add_custom_command(
  OUTPUT ${DUEL_DEFAULT_CONFIG_C}
  COMMAND ${CMAKE_COMMAND} -DIN=${DUEL_DEFAULT_CONFIG_JSON} -DOUT=${DUEL_DEFAULT_CONFIG_C}
          -P ${PROJECT_SOURCE_DIR}/config/embed_json.cmake
  DEPENDS ${DUEL_DEFAULT_CONFIG_JSON} ${PROJECT_SOURCE_DIR}/config/embed_json.cmake
  COMMENT "Embedding config/default.json")
target_sources(duel_common PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/config.c ${DUEL_DEFAULT_CONFIG_C})
