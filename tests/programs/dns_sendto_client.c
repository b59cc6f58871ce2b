/* A resolver of the kind static programs carry: it asks NAMESERVER for NAME's A record
 * with sendto() on an unconnected UDP socket, and takes only a reply whose source is the
 * nameserver's address, as musl and dnspython do.
 *
 *   dns_sendto_client [-6] [-b kept|copy|readonly] [-r recvfrom|recvmsg] NAMESERVER NAME
 *
 * -6         an AF_INET6 socket (an IPv4 NAMESERVER then goes v4-mapped)
 * -b kept    send to the buffer the reply is checked against (musl's ns[], the default)
 * -b copy    send from a copy made for each send, check against one kept aside (dnspython)
 * -b readonly  send to and check against a buffer on a read-only page (a const sockaddr)
 * -r         read the reply with recvfrom (musl before 1.2.4, dnspython; the default) or
 *            recvmsg (musl 1.2.4 and later)
 *
 * Prints the address and exits 0; 1 when no acceptable answer comes within 5 s (or the
 * send fails); 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int usage(void) {
    fprintf(stderr, "usage: dns_sendto_client [-6] [-b kept|copy|readonly] "
                    "[-r recvfrom|recvmsg] NAMESERVER NAME\n");
    return 2;
}

/* The question for NAME, type A, class IN, after a 12-byte header with id ID. */
static size_t build_query(unsigned char *query, size_t room, unsigned short id,
                          const char *name) {
    size_t at = 12;
    memset(query, 0, 12);
    query[0] = id >> 8;
    query[1] = id & 0xff;
    query[2] = 0x01; /* RD */
    query[5] = 1;    /* one question */
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t length = dot ? (size_t)(dot - name) : strlen(name);
        if (length == 0 || length > 63 || at + length + 1 + 5 > room)
            return 0;
        query[at++] = (unsigned char)length;
        memcpy(query + at, name, length);
        at += length;
        name += length + (dot ? 1 : 0);
    }
    query[at++] = 0;
    memcpy(query + at, "\0\1\0\1", 4); /* A, IN */
    return at + 4;
}

/* Offset just past the (possibly compressed) name at OFFSET, or 0. */
static size_t skip_name(const unsigned char *reply, size_t length, size_t offset) {
    while (offset < length) {
        unsigned char label = reply[offset];
        if (label == 0)
            return offset + 1;
        if ((label & 0xc0) == 0xc0)
            return offset + 2 <= length ? offset + 2 : 0;
        offset += 1 + label;
    }
    return 0;
}

/* The first A record of REPLY into ADDRESS; 1 if found. */
static int first_a(const unsigned char *reply, size_t length, struct in_addr *address) {
    if (length < 12)
        return 0;
    unsigned questions = reply[4] << 8 | reply[5], answers = reply[6] << 8 | reply[7];
    size_t at = 12;
    for (unsigned i = 0; i < questions; i++) {
        at = skip_name(reply, length, at);
        if (!at || at + 4 > length)
            return 0;
        at += 4;
    }
    for (unsigned i = 0; i < answers; i++) {
        at = skip_name(reply, length, at);
        if (!at || at + 10 > length)
            return 0;
        unsigned type = reply[at] << 8 | reply[at + 1];
        unsigned size = reply[at + 8] << 8 | reply[at + 9];
        at += 10;
        if (at + size > length)
            return 0;
        if (type == 1 && size == 4) {
            memcpy(address, reply + at, 4);
            return 1;
        }
        at += size;
    }
    return 0;
}

/* Whether FROM is the address in EXPECTED (family, port and address, as musl compares). */
static int same_source(const struct sockaddr_storage *from, const void *expected, int family) {
    if (family == AF_INET) {
        const struct sockaddr_in *a = (const void *)from, *b = expected;
        return a->sin_family == AF_INET && a->sin_port == b->sin_port &&
               a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const void *)from, *b = expected;
    return a->sin6_family == AF_INET6 && a->sin6_port == b->sin6_port &&
           memcmp(&a->sin6_addr, &b->sin6_addr, 16) == 0;
}

int main(int argc, char **argv) {
    int family = AF_INET, use_recvmsg = 0, option;
    const char *buffer_kind = "kept";
    while ((option = getopt(argc, argv, "6b:r:")) != -1) {
        if (option == '6')
            family = AF_INET6;
        else if (option == 'b')
            buffer_kind = optarg;
        else if (option == 'r' && (!strcmp(optarg, "recvfrom") || !strcmp(optarg, "recvmsg")))
            use_recvmsg = !strcmp(optarg, "recvmsg");
        else
            return usage();
    }
    if (argc - optind != 2 || (strcmp(buffer_kind, "kept") && strcmp(buffer_kind, "copy") &&
                               strcmp(buffer_kind, "readonly")))
        return usage();
    const char *server = argv[optind], *name = argv[optind + 1];

    struct sockaddr_storage nameserver;
    memset(&nameserver, 0, sizeof nameserver);
    socklen_t length;
    if (family == AF_INET) {
        struct sockaddr_in *in = (void *)&nameserver;
        in->sin_family = AF_INET;
        in->sin_port = htons(53);
        if (inet_pton(AF_INET, server, &in->sin_addr) != 1)
            return usage();
        length = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (void *)&nameserver;
        char mapped[64];
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(53);
        if (!strchr(server, ':')) {
            snprintf(mapped, sizeof mapped, "::ffff:%s", server);
            server = mapped;
        }
        if (inet_pton(AF_INET6, server, &in6->sin6_addr) != 1)
            return usage();
        length = sizeof *in6;
    }

    /* Where the reply is checked against, and where sendto is told to send. */
    void *kept = &nameserver;
    if (!strcmp(buffer_kind, "readonly")) {
        void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
        if (page == MAP_FAILED)
            return perror("mmap"), 1;
        memcpy(page, &nameserver, length);
        if (mprotect(page, 4096, PROT_READ))
            return perror("mprotect"), 1;
        kept = page;
    }

    int sock = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return perror("socket"), 1;
    unsigned char query[512], reply[4096];
    unsigned short id = (unsigned short)(getpid() ^ time(NULL));
    size_t query_length = build_query(query, sizeof query, id, name);
    if (!query_length)
        return usage();

    struct sockaddr_storage copy;
    const void *target = kept;
    if (!strcmp(buffer_kind, "copy")) {
        memcpy(&copy, kept, length);
        target = &copy;
    }
    if (sendto(sock, query, query_length, 0, target, length) < 0)
        return perror("sendto"), 1;

    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long waited = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (waited >= 5000)
            break;
        struct pollfd ready = {sock, POLLIN, 0};
        if (poll(&ready, 1, (int)(5000 - waited)) <= 0)
            continue;
        struct sockaddr_storage from;
        socklen_t from_length = sizeof from;
        ssize_t got;
        if (use_recvmsg) {
            struct iovec vector = {reply, sizeof reply};
            struct msghdr message = {.msg_name = &from, .msg_namelen = sizeof from,
                                     .msg_iov = &vector, .msg_iovlen = 1};
            got = recvmsg(sock, &message, 0);
        } else {
            got = recvfrom(sock, reply, sizeof reply, 0, (struct sockaddr *)&from, &from_length);
        }
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return perror("receive"), 1;
        }
        if (!same_source(&from, kept, family)) {
            fprintf(stderr, "a reply from another address, ignored\n");
            continue;
        }
        if (got < 12 || reply[0] != query[0] || reply[1] != query[1])
            continue;
        struct in_addr address;
        if (!first_a(reply, (size_t)got, &address)) {
            fprintf(stderr, "%s: no address\n", name);
            return 1;
        }
        char text[INET_ADDRSTRLEN];
        printf("%s\n", inet_ntop(AF_INET, &address, text, sizeof text));
        return 0;
    }
    fprintf(stderr, "%s: no answer from %s\n", name, argv[optind]);
    return 1;
}
