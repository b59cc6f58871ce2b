/* Workloads for the streams-run benchmark and tests: time N system calls of one kind.
 *
 *   syscalls getppid N      N getppid() calls (not traced by the filter)
 *   syscalls open N PATH    N open()+read()+close() of PATH (an open-heavy program)
 *   syscalls connect N      N UDP connect()s to 127.0.0.1:9 (stopped, but not redirected)
 *   syscalls udp N          N datagrams to itself on loopback, sendto() and recvfrom() with
 *                           addresses, as a resolver's (the sendto stopped; not redirected)
 *   syscalls spawn N PATH   N fork()+execv(PATH)+waitpid() (a script's work; PATH: /bin/true)
 *   syscalls int80          one 32-bit system call from a 64-bit program
 *   syscalls x32            one x32-ABI system call (getpid with the x32 bit)
 *   syscalls nosys          syscall(-1), which is no system call: says its errno
 *
 * Prints the seconds the loop took (its own clock, so start-up is not counted).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "int80") == 0) {
        long pid;
        /* i386 getpid is 20: a foreign-ABI syscall the filter must not let through. */
        __asm__ volatile("int $0x80" : "=a"(pid) : "a"(20) : "memory");
        printf("int80 returned %ld\n", pid);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "x32") == 0) {
        printf("x32 returned %ld\n", syscall(0x40000000 | SYS_getpid));
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "nosys") == 0) {
        long result = syscall(-1);
        printf("syscall(-1) returned %ld: %s\n", result, strerror(errno));
        return 0;
    }
    if (argc < 3) { fprintf(stderr, "usage: syscalls getppid|open|connect|udp|spawn N [PATH]\n"); return 2; }
    long n = atol(argv[2]);
    char buffer[256];
    double started = now();
    if (strcmp(argv[1], "getppid") == 0) {
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
    } else if (strcmp(argv[1], "connect") == 0) {
        struct sockaddr_in discard = {.sin_family = AF_INET, .sin_port = htons(9)};
        discard.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int sock = socket(AF_INET, SOCK_DGRAM, 0);
        if (sock < 0) { perror("socket"); return 1; }
        for (long i = 0; i < n; i++) {
            if (connect(sock, (struct sockaddr *)&discard, sizeof discard) < 0) {
                perror("connect");
                return 1;
            }
        }
    } else if (strcmp(argv[1], "udp") == 0) {
        struct sockaddr_in self = {.sin_family = AF_INET};
        self.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof self;
        int sock = socket(AF_INET, SOCK_DGRAM, 0);
        if (sock < 0 || bind(sock, (struct sockaddr *)&self, sizeof self) < 0 ||
            getsockname(sock, (struct sockaddr *)&self, &length) < 0) {
            perror("udp socket");
            return 1;
        }
        for (long i = 0; i < n; i++) {
            struct sockaddr_in from;
            socklen_t from_length = sizeof from;
            if (sendto(sock, "x", 1, 0, (struct sockaddr *)&self, sizeof self) != 1 ||
                recvfrom(sock, buffer, sizeof buffer, 0, (struct sockaddr *)&from,
                         &from_length) != 1) {
                perror("udp");
                return 1;
            }
        }
    } else if (strcmp(argv[1], "spawn") == 0) {
        char *path = argc > 3 ? argv[3] : "/bin/true";
        char *child_argv[] = {path, NULL};
        for (long i = 0; i < n; i++) {
            int status;
            pid_t child = fork();
            if (child < 0) { perror("fork"); return 1; }
            if (child == 0) {
                execv(path, child_argv);
                _exit(127);
            }
            if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
                fprintf(stderr, "%s failed\n", path);
                return 1;
            }
        }
    } else {
        const char *path = argc > 3 ? argv[3] : "/etc/hostname";
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_RDONLY);
            if (fd < 0) { perror(path); return 1; }
            if (read(fd, buffer, sizeof buffer) < 0) return 1;
            close(fd);
        }
    }
    printf("%.6f\n", now() - started);
    return 0;
}
