/* proteus: one binary, sub-commands. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void usage(FILE *f) {
    fputs("usage: proteus <command> [options]\n"
          "\n"
          "commands:\n"
          "  serve      OpenAI-compatible HTTP server (see README: Configuration)\n"
          "  generate   generate text from a prompt or a chat message, streamed\n"
          "  perf       measure prompt processing and generation speed\n"
          "  bench      replay a request trace against an OpenAI-compatible server\n"
          "  simulate   replay a request trace on a simulated GPU cluster with the scheduler\n"
          "\n"
          "Run 'proteus <command> --help' for a command's options.\n",
          f);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "perf")) return cmd_perf(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "simulate")) return cmd_simulate(argc - 1, argv + 1);
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return CLI_OK;
    }
    fprintf(stderr, "proteus: unknown command '%s'\n", cmd);
    usage(stderr);
    return CLI_USAGE;
}
