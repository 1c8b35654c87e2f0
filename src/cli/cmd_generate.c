#include <stdio.h>
#include "cli/cli.h"
int cmd_generate(int argc, char **argv) { fputs("proteus generate: not yet\n", stderr); return CLI_FAIL; }
