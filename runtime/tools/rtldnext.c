/* Test helper: prints "ok" when time() answers through the interposer of nextlib.c (see there). */
#include <stdio.h>
#include <time.h>

int main(void) {
    time_t t = time(NULL);
    printf(t > 0 ? "ok\n" : "bad\n");
    return t > 0 ? 0 : 1;
}
