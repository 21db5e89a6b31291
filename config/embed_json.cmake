# config/embed_json.cmake: cmake -DIN=file.json -DOUT=file.c [-DNAME=symbol] -P embed_json.cmake
# writes `const char NAME[]` (NUL-terminated) and NAME_len; NAME defaults to
# duel_config_default_json. Run by embed.cmake, and by cli/ for the sweep's plot script.
if(NOT NAME)
  set(NAME duel_config_default_json)
endif()
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR n "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE ${OUT}
  "/* Generated from ${IN} by config/embed_json.cmake: do not edit. */\n"
  "#include <stddef.h>\n"
  "extern const char ${NAME}[];\n"
  "extern const size_t ${NAME}_len;\n"
  "const char ${NAME}[] = {\n${bytes}0x00};\n"
  "const size_t ${NAME}_len = ${n};\n")
