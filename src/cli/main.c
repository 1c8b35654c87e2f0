#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    fprintf(stderr, "usage: proteus generate ...\n");
    return 2;
}
