/* A test client for streams-run: resolve HOST, connect to PORT, send a line, print the reply.
 *
 *   client [-n] [-6] [-t THREADS [-x]] [-c CONNECTIONS] [-f FORKS] HOST PORT
 *
 * -n  non-blocking connect (EINPROGRESS, poll, SO_ERROR)
 * -6  use an AF_INET6 socket (an IPv4 answer becomes a v4-mapped address)
 * -t/-c  THREADS threads each making CONNECTIONS connections; -f  FORKS processes do it
 * -x  with -t: the main thread leaves (pthread_exit) before the others connect, and the
 *     last of them reports and exits
 * Prints the first reply, then "ok N" with the number of good round trips; exit 0 only
 * when every round trip came back right. On a connect error prints "connect: STRERROR".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int nonblocking, inet6, connections = 1, leader_exits, threads_left, expected_trips;
static struct sockaddr_storage target;
static socklen_t target_len;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int good, printed;

static int resolve(const char *host, const char *port) {
    struct addrinfo hints = {0}, *result;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int error = getaddrinfo(host, port, &hints, &result);
    if (error) {
        fprintf(stderr, "getaddrinfo %s: %s\n", host, gai_strerror(error));
        return -1;
    }
    struct sockaddr_in *v4 = (struct sockaddr_in *)result->ai_addr;
    if (inet6) {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&target;
        memset(v6, 0, sizeof *v6);
        v6->sin6_family = AF_INET6;
        v6->sin6_port = v4->sin_port;
        v6->sin6_addr.s6_addr[10] = 0xff;
        v6->sin6_addr.s6_addr[11] = 0xff;
        memcpy(&v6->sin6_addr.s6_addr[12], &v4->sin_addr, 4);
        target_len = sizeof *v6;
    } else {
        memcpy(&target, v4, sizeof *v4);
        target_len = sizeof *v4;
    }
    freeaddrinfo(result);
    return 0;
}

static int round_trip(int id) {
    int fd = socket(inet6 ? AF_INET6 : AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    int rc = connect(fd, (struct sockaddr *)&target, target_len);
    if (rc < 0 && errno == EINPROGRESS) {
        struct pollfd p = {fd, POLLOUT, 0};
        poll(&p, 1, 20000);
        int error = 0;
        socklen_t len = sizeof error;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
        if (error) { errno = error; rc = -1; } else rc = 0;
    }
    if (rc < 0) {
        pthread_mutex_lock(&lock);
        printf("connect: %s\n", strerror(errno));
        pthread_mutex_unlock(&lock);
        close(fd);
        return -1;
    }
    if (nonblocking) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    char line[64], reply[256];
    int n = snprintf(line, sizeof line, "hello %d\n", id);
    if (write(fd, line, n) != n) { close(fd); return -1; }
    shutdown(fd, SHUT_WR);
    int got = 0, r;
    while ((r = read(fd, reply + got, sizeof reply - 1 - got)) > 0) got += r;
    close(fd);
    reply[got] = 0;
    char expected[80];
    snprintf(expected, sizeof expected, "echo:%s", line);
    pthread_mutex_lock(&lock);
    if (!printed) { printf("%s", reply); printed = 1; }
    int ok = strcmp(reply, expected) == 0;
    if (ok) good++;
    pthread_mutex_unlock(&lock);
    return ok ? 0 : -1;
}

static void *worker(void *arg) {
    long base = (long)arg;
    if (leader_exits) usleep(200000);  /* connect only once the main thread is gone */
    for (int i = 0; i < connections; i++) round_trip((int)(base * 1000 + i));
    if (leader_exits) {
        pthread_mutex_lock(&lock);
        if (--threads_left == 0) {
            printf("ok %d\n", good);
            exit(good == expected_trips ? 0 : 1);
        }
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = 0, forks = 0, option;
    while ((option = getopt(argc, argv, "n6t:c:f:x")) != -1) {
        switch (option) {
        case 'n': nonblocking = 1; break;
        case '6': inet6 = 1; break;
        case 't': threads = atoi(optarg); break;
        case 'c': connections = atoi(optarg); break;
        case 'f': forks = atoi(optarg); break;
        case 'x': leader_exits = 1; break;
        default: return 2;
        }
    }
    if (argc - optind != 2 || (leader_exits && !threads)) {
        fprintf(stderr, "usage: client [-n] [-6] [-t N [-x]] [-c N] [-f N] HOST PORT\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    if (resolve(argv[optind], argv[optind + 1])) return 3;
    expected_trips = connections * (threads ? threads : 1);
    if (forks) {
        for (int i = 0; i < forks; i++) {
            if (fork() == 0) {
                printed = 1;
                for (int j = 0; j < connections; j++) round_trip(i * 1000 + j);
                _exit(good == connections ? 0 : 1);
            }
        }
        int failures = 0, status;
        while (wait(&status) > 0) failures += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        printf("forks ok %d\n", forks - failures);
        return failures ? 1 : 0;
    }
    if (threads) {
        pthread_t ids[1024];
        threads_left = threads;
        for (long i = 0; i < threads; i++) pthread_create(&ids[i], NULL, worker, (void *)i);
        if (leader_exits) pthread_exit(NULL);
        for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    } else {
        worker((void *)0);
    }
    printf("ok %d\n", good);
    return good == expected_trips ? 0 : 1;
}
