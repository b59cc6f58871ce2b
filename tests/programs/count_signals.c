/* Counts the SIGTERMs it gets: prints "ready", waits for the first, then one second more,
 * and prints how many arrived. (A C program: it takes a signal as soon as it comes, where
 * Python's interpreter would give streams-run time to forward a copy that merges.) */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t got;

static void on_term(int sig)
{
    (void)sig;
    got++;
}

int main(void)
{
    signal(SIGTERM, on_term);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (!got)
        pause();
    sleep(1);
    printf("%d\n", (int)got);
    return 0;
}
