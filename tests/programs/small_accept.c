/* A dual-stack server that accepts into a sockaddr_in (16 bytes) followed by a canary.
 *
 *   small_accept PORT
 *
 * Listens on [::]:PORT, prints "listening", accepts one connection with an address
 * buffer too small for an IPv6 peer (the kernel truncates, and says the real length),
 * answers "echo:" + its first line, then prints whether the bytes after the buffer
 * were left alone.
 */
#include <netinet/in.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: small_accept PORT\n"); return 2; }
    int server = socket(AF_INET6, SOCK_STREAM, 0);
    int off = 0, on = 1;
    setsockopt(server, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in6 local = {.sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[1]))};
    if (bind(server, (struct sockaddr *)&local, sizeof local) || listen(server, 8)) {
        perror("listen");
        return 1;
    }
    puts("listening");
    fflush(stdout);
    struct { struct sockaddr_in address; unsigned char canary[16]; } peer;
    memset(peer.canary, 0xAA, sizeof peer.canary);
    socklen_t length = sizeof peer.address;
    int conn = accept(server, (struct sockaddr *)&peer.address, &length);
    if (conn < 0) { perror("accept"); return 1; }
    char line[256] = "echo:";
    ssize_t n = read(conn, line + 5, sizeof line - 6);
    if (n > 0) write(conn, line, 5 + n);
    close(conn);
    int intact = 1;
    for (size_t i = 0; i < sizeof peer.canary; i++) intact &= peer.canary[i] == 0xAA;
    printf("canary %s\n", intact ? "intact" : "overwritten");
    return 0;
}
