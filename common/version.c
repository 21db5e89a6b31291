/* version.c: the program's version string; DUEL_VERSION_STRING comes from CMake. */
#include "version.h"

#ifndef DUEL_VERSION_STRING
#define DUEL_VERSION_STRING "unknown"
#endif

const char *duel_version(void) { return DUEL_VERSION_STRING; }
