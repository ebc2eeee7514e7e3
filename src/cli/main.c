#include <stdio.h>

int main(void)
{
    fprintf(stderr, "exsa: no commands yet\n");
    return 1;
}
