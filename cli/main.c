/* main.c: the `duel` executable; dispatches to subcommands. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        printf("usage: duel <command> [options]\n");
        return 0;
    }
    fprintf(stderr, "duel: unknown command '%s'\n", argv[1]);
    return 2;
}
