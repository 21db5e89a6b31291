# config/embed_json.cmake: cmake -DIN=file.json -DOUT=file.c -P embed_json.cmake writes
# `const char duel_config_default_json[]` (NUL-terminated) and its length. Run by embed.cmake.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hex_len)
math(EXPR n "${hex_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE ${OUT}
  "/* Generated from config/default.json by config/embed_json.cmake: do not edit. */\n"
  "#include <stddef.h>\n"
  "extern const char duel_config_default_json[];\n"
  "extern const size_t duel_config_default_json_len;\n"
  "const char duel_config_default_json[] = {\n${bytes}0x00};\n"
  "const size_t duel_config_default_json_len = ${n};\n")
