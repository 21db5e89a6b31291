/* version.h: the program's version string (from the CMake project version). */
#ifndef DUEL_VERSION_H
#define DUEL_VERSION_H

const char *duel_version(void);

#endif
