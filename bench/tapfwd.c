/* Reference for the pod benchmark: the minimal C forwarder between two TAP
 * fds (inherited, already configured), one frame per read() and write(),
 * poll() per wakeup. With vnet headers on both TAPs the header is passed
 * through untouched, so TSO super-frames cross whole.
 * SIGUSR1 prints "frames errors" so far.
 * usage: tapfwd FD_A FD_B BUFSIZE SECONDS */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t report;
static void on_usr1(int sig) { (void)sig; report = 1; }

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: tapfwd FD_A FD_B BUFSIZE SECONDS\n"); return 2; }
    int fd[2] = { atoi(argv[1]), atoi(argv[2]) };
    size_t cap = (size_t)atol(argv[3]);
    time_t end = time(NULL) + atol(argv[4]);
    char *buf = malloc(cap);
    unsigned long frames = 0, errors = 0;
    struct pollfd p[2] = { { fd[0], POLLIN, 0 }, { fd[1], POLLIN, 0 } };
    signal(SIGUSR1, on_usr1);
    while (time(NULL) < end) {
        if (report) { report = 0; printf("%lu %lu\n", frames, errors); fflush(stdout); }
        if (poll(p, 2, 200) <= 0) continue;
        for (int i = 0; i < 2; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            ssize_t n = read(fd[i], buf, cap);
            if (n <= 0) continue;
            if (write(fd[1 - i], buf, (size_t)n) < 0) errors++;
            frames++;
        }
    }
    printf("%lu %lu\n", frames, errors);
    return 0;
}
