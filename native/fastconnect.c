/*
 * fastconnect: streams-run's native connect path.
 *
 * Loaded with ctypes into the supervisor (streams_trace/supervisor/fastconnect.py),
 * it runs one thread of its own that reads the seccomp user-notification listener
 * in place of the Python loop. A connect to one of the tunnel's addresses is done
 * here, start to finish: the program's socket is taken with pidfd_getfd, connected
 * to the initiator access point, the LAN handshake (docs/protocol.md, connector
 * role) is run on it, and the held connect is answered. Every other notification
 * (a connect elsewhere, a name-service or DNS connect, anything this code is not
 * sure of) goes to the Python supervisor untouched, over a SOCK_SEQPACKET pair,
 * and Python answers it as before. After each connect it did, the thread sends
 * Python a record of what happened, for the -d line and the counts.
 *
 * Why a thread and not a helper process: it runs in the supervisor, so it may take
 * the program's sockets wherever the supervisor may (a Yama ptrace_scope of 1 lets
 * only ancestors in), and it needs no second copy of the LAN secret.
 *
 * Why native at all: the Python path costs 150-250 us of CPU per connect on top of
 * what the connection itself costs; this one a few. The Python path stays, for
 * machines where this file could not be built (benchmarks/bench_run.py compares).
 *
 * Wire format shared with fastconnect.py, native byte order, packed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL /* Linux 6.9 */
#endif
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS /* Linux 6.6 */
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

#define MAX_TARGETS 64
#define MAX_SECRET 1024
#define MAX_EVENTS 64

/* Python -> here: the setup, once, in fastconnect_start. */
struct target {
    uint32_t family; /* AF_INET (a v4-mapped IPv6 address is compared as IPv4) or AF_INET6 */
    uint16_t port;   /* host byte order */
    uint16_t unused;
    uint8_t addr[16];
} __attribute__((packed));

struct setup {
    uint32_t version; /* SETUP_VERSION */
    uint32_t timeout_ms;
    uint8_t tunnel_id[16];
    uint32_t secret_len; /* 0: the access point wants no handshake */
    uint8_t secret[MAX_SECRET];
    uint8_t dest4[sizeof(struct sockaddr_in)];  /* family 0: an IPv4 socket cannot reach the access point */
    uint8_t dest6[sizeof(struct sockaddr_in6)]; /* family 0: likewise for IPv6 */
    uint32_t n_targets;
    struct target targets[MAX_TARGETS];
} __attribute__((packed));
#define SETUP_VERSION 1
#define WIRE_VERSION 2 /* bumped with any change to the setup, the records or the outcomes */

/* Here -> Python. */
#define OP_FORWARD 1 /* followed by the struct seccomp_notif, for Python to answer */
#define OP_DONE 2

enum outcome {
    AUTHENTICATED = 0,
    CONNECTED_NO_SECRET = 1,
    UNREACHABLE = 2,      /* detail: errno */
    HANDSHAKE_FAILED = 3, /* detail: handshake.Failure, peer: the reason of a REJECT */
    IO_FAILED = 4,        /* detail: errno, during the handshake */
    TIMED_OUT = 5,
    ABANDONED = 6, /* streams-run was stopping */
};

struct done_msg {
    uint32_t op; /* OP_DONE */
    uint32_t tid;
    int32_t fd;
    int32_t result; /* what the program's connect returned: 0 or -errno */
    uint32_t target;
    uint32_t outcome;
    int32_t detail;
    int32_t peer;
    uint64_t elapsed_ns;
    uint32_t answered; /* 0: the thread had gone (killed) before the answer */
} __attribute__((packed));

/* The LAN handshake, connector side (docs/protocol.md; handshake.py is the reference). */
#define HEADER_SIZE 8
#define NONCE_SIZE 32
#define PROOF_SIZE 32
#define MAX_BODY 64
enum message { HELLO = 1, CHALLENGE = 2, PROOF = 3, ACCEPT = 4, REJECT = 5 };
static const int body_size[] = {[HELLO] = 48, [CHALLENGE] = 64, [PROOF] = 32, [ACCEPT] = 0, [REJECT] = 1};
enum failure {
    BAD_MAGIC = 1, BAD_VERSION = 2, UNEXPECTED_MESSAGE = 3, BAD_LENGTH = 4, OVERSIZED = 5,
    WRONG_TUNNEL = 6, BAD_PROOF = 7, REJECTED = 8, PEER_CLOSED = 9, TIMEOUT = 10,
};
static const char proof_label[] = "streams-trace LAN handshake v1"; /* and its NUL */

enum state { CONNECTING, WAIT_CHALLENGE, WAIT_ACCEPT };

struct conn {
    struct conn *next;
    uint64_t id; /* the notification's */
    uint32_t tid;
    int fd;   /* the program's descriptor number */
    int sock; /* our copy of it */
    uint32_t target;
    enum state state;
    uint64_t started, deadline;
    uint8_t nonce[NONCE_SIZE];
    uint8_t buffer[HEADER_SIZE + MAX_BODY];
    size_t have;
};

static struct {
    struct setup setup;
    struct sockaddr_in dest4; /* the setup's, aligned */
    struct sockaddr_in6 dest6;
    int listener, control, epoll;
    pthread_t thread;
    int running;
    int stopping;    /* Python is waiting for the thread: records may be dropped, not wait */
    int sync_wake_up; /* the kernel has SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6) */
    struct conn *conns;
} fc;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void forward(const struct seccomp_notif *req) {
    uint8_t message[sizeof(uint32_t) + sizeof *req];
    uint32_t op = OP_FORWARD;
    memcpy(message, &op, sizeof op);
    memcpy(message + sizeof op, req, sizeof *req);
    /* Blocking: Python reads these on its loop; a full pair is a busy supervisor. */
    while (send(fc.control, message, sizeof message, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
}

static void set_sync_wake_up(int on) {
    if (fc.sync_wake_up)
        ioctl(fc.listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS,
              (uint64_t)(on ? SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP : 0));
}

/* Answer a connect after its handshake. The same-CPU hand-off suits a notification
   (its thread has just gone to sleep here) and an answer given at once, but not this
   one: the access point we just heard from is running too, and the program would wait
   behind both while another CPU idles (notify.py says the same of the Python path). */
static int answer(uint64_t id, int result) {
    struct seccomp_notif_resp response = {.id = id, .val = 0, .error = result, .flags = 0};
    int answered = 1;
    set_sync_wake_up(0);
    while (ioctl(fc.listener, SECCOMP_IOCTL_NOTIF_SEND, &response) < 0) {
        if (errno != EINTR) {
            answered = 0; /* ENOENT: the thread was killed meanwhile */
            break;
        }
    }
    set_sync_wake_up(1);
    return answered;
}

static void disconnect(int sock) {
    struct sockaddr unspecified = {.sa_family = AF_UNSPEC};
    connect(sock, &unspecified, sizeof unspecified);
}

static void unlink_conn(struct conn *c) {
    for (struct conn **p = &fc.conns; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            return;
        }
}

/* Answer the program's connect, tell Python, forget the connection. */
static void finish(struct conn *c, int result, enum outcome outcome, int detail, int peer) {
    if (result != 0 && outcome != UNREACHABLE)
        disconnect(c->sock); /* as a refused connect leaves it: a retry is a fresh connect */
    struct done_msg done = {
        .op = OP_DONE, .tid = c->tid, .fd = c->fd, .result = result, .target = c->target,
        .outcome = outcome, .detail = detail, .peer = peer,
        .elapsed_ns = 0, .answered = 0,
    };
    done.answered = answer(c->id, result);
    done.elapsed_ns = now_ns() - c->started;
    epoll_ctl(fc.epoll, EPOLL_CTL_DEL, c->sock, NULL);
    close(c->sock);
    unlink_conn(c);
    OPENSSL_cleanse(c->nonce, sizeof c->nonce);
    free(c);
    int flags = MSG_NOSIGNAL | (fc.stopping ? MSG_DONTWAIT : 0);
    while (send(fc.control, &done, sizeof done, flags) < 0 && errno == EINTR) {
    }
}

/* 0, or -1 where libcrypto would not (a FIPS policy refusing the key, say). */
static int proof(const char *role, const uint8_t *connector_nonce, const uint8_t *acceptor_nonce,
                 uint8_t out[PROOF_SIZE]) {
    uint8_t message[sizeof proof_label + 16 + 16 + 2 * NONCE_SIZE];
    size_t n = 0, role_size = strlen(role) + 1;
    memcpy(message, proof_label, sizeof proof_label);
    n += sizeof proof_label;
    memcpy(message + n, role, role_size);
    n += role_size;
    memcpy(message + n, fc.setup.tunnel_id, 16);
    n += 16;
    memcpy(message + n, connector_nonce, NONCE_SIZE);
    n += NONCE_SIZE;
    memcpy(message + n, acceptor_nonce, NONCE_SIZE);
    n += NONCE_SIZE;
    unsigned int size = PROOF_SIZE;
    if (HMAC(EVP_sha256(), fc.setup.secret, (int)fc.setup.secret_len, message, n, out, &size) ==
            NULL || size != PROOF_SIZE)
        return -1;
    return 0;
}

static int send_all(struct conn *c, const uint8_t *data, size_t size) {
    /* Small messages on a fresh connection: they fit the send buffer. */
    ssize_t sent = send(c->sock, data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent == (ssize_t)size)
        return 0;
    return sent < 0 ? errno : EAGAIN;
}

static void header(uint8_t *out, enum message kind, size_t length) {
    memcpy(out, "GSLH", 4);
    out[4] = 1;
    out[5] = (uint8_t)kind;
    out[6] = (uint8_t)(length >> 8);
    out[7] = (uint8_t)length;
}

static void fail(struct conn *c, enum failure failure, int tell_peer, int peer) {
    if (tell_peer) {
        uint8_t reject[HEADER_SIZE + 1];
        header(reject, REJECT, 1);
        reject[HEADER_SIZE] = (uint8_t)failure;
        send_all(c, reject, sizeof reject);
    }
    finish(c, -ECONNREFUSED, HANDSHAKE_FAILED, failure, peer);
}

static void connected(struct conn *c) {
    if (fc.setup.secret_len == 0) {
        finish(c, 0, CONNECTED_NO_SECRET, 0, 0);
        return;
    }
    uint8_t hello[HEADER_SIZE + 16 + NONCE_SIZE];
    header(hello, HELLO, 16 + NONCE_SIZE);
    memcpy(hello + HEADER_SIZE, fc.setup.tunnel_id, 16);
    if (getrandom(c->nonce, NONCE_SIZE, 0) != NONCE_SIZE) {
        finish(c, -ECONNREFUSED, IO_FAILED, errno, 0);
        return;
    }
    memcpy(hello + HEADER_SIZE + 16, c->nonce, NONCE_SIZE);
    int error = send_all(c, hello, sizeof hello);
    if (error) {
        finish(c, -ECONNREFUSED, IO_FAILED, error, 0);
        return;
    }
    c->state = WAIT_CHALLENGE;
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(fc.epoll, EPOLL_CTL_MOD, c->sock, &event);
}

/* One whole message is in c->buffer. */
static void handle(struct conn *c, enum message kind, const uint8_t *body) {
    if (kind == REJECT) {
        fail(c, REJECTED, 0, body[0]);
        return;
    }
    if (kind == CHALLENGE) {
        uint8_t expected[PROOF_SIZE], message[HEADER_SIZE + PROOF_SIZE];
        if (proof("acceptor", c->nonce, body, expected) < 0 ||
            proof("connector", c->nonce, body, message + HEADER_SIZE) < 0) {
            finish(c, -ECONNREFUSED, IO_FAILED, EPROTO, 0);
            return;
        }
        if (CRYPTO_memcmp(expected, body + NONCE_SIZE, PROOF_SIZE) != 0) {
            fail(c, BAD_PROOF, 1, 0);
            return;
        }
        header(message, PROOF, PROOF_SIZE);
        int error = send_all(c, message, sizeof message);
        if (error) {
            finish(c, -ECONNREFUSED, IO_FAILED, error, 0);
            return;
        }
        c->state = WAIT_ACCEPT;
        c->have = 0;
        return;
    }
    finish(c, 0, AUTHENTICATED, 0, 0); /* ACCEPT */
}

static size_t body_length(const uint8_t *header) {
    return ((size_t)header[6] << 8) | header[7];
}

/* Read exactly what completes the next message (never application data after it). */
static void readable(struct conn *c) {
    for (;;) {
        size_t needed = HEADER_SIZE;
        if (c->have >= HEADER_SIZE)
            needed += body_length(c->buffer);
        ssize_t got = recv(c->sock, c->buffer + c->have, needed - c->have, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            finish(c, -ECONNREFUSED, IO_FAILED, errno, 0);
            return;
        }
        if (got == 0) {
            fail(c, PEER_CLOSED, 0, 0);
            return;
        }
        size_t before = c->have;
        c->have += (size_t)got;
        if (before < HEADER_SIZE && c->have >= HEADER_SIZE) { /* the header: judge it first */
            const uint8_t *h = c->buffer;
            size_t length = body_length(h);
            enum message kind = h[5];
            int expected = c->state == WAIT_CHALLENGE ? (kind == CHALLENGE || kind == REJECT)
                                                      : (kind == ACCEPT || kind == REJECT);
            if (memcmp(h, "GSLH", 4) != 0) {
                fail(c, BAD_MAGIC, 1, 0);
                return;
            }
            if (h[4] != 1) {
                fail(c, BAD_VERSION, 1, 0);
                return;
            }
            if (length > MAX_BODY) {
                fail(c, OVERSIZED, 1, 0);
                return;
            }
            if (!expected) {
                fail(c, UNEXPECTED_MESSAGE, 1, 0);
                return;
            }
            if ((int)length != body_size[kind]) {
                fail(c, BAD_LENGTH, 1, 0);
                return;
            }
        }
        if (c->have >= HEADER_SIZE &&
            c->have == HEADER_SIZE + body_length(c->buffer)) {
            c->have = 0;
            /* Finished (c is gone), failed, or PROOF sent: the ACCEPT cannot be here yet. */
            handle(c, c->buffer[5], c->buffer + HEADER_SIZE);
            return;
        }
    }
}

static void writable(struct conn *c) {
    int error = 0;
    socklen_t size = sizeof error;
    getsockopt(c->sock, SOL_SOCKET, SO_ERROR, &error, &size);
    if (error) {
        finish(c, -error, UNREACHABLE, error, 0);
        return;
    }
    connected(c);
}

/* An IPv4 or IPv6 connect address, as the targets hold them. */
struct ip_address {
    uint16_t family;  /* of the sockaddr: AF_INET or AF_INET6 */
    uint32_t compare; /* AF_INET for IPv4 and v4-mapped IPv6, else AF_INET6 */
    uint16_t port;    /* host byte order */
    uint8_t addr[16];
};

/* 1 if raw holds a whole IPv4 or IPv6 sockaddr, read into *out; else 0. */
static int parse_ip_address(const uint8_t *raw, size_t size, struct ip_address *out) {
    memcpy(&out->family, raw, sizeof out->family);
    if (out->family == AF_INET && size >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, raw, sizeof sin);
        out->compare = AF_INET;
        out->port = ntohs(sin.sin_port);
        memcpy(out->addr, &sin.sin_addr, 4);
        return 1;
    }
    if (out->family == AF_INET6 && size >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, raw, sizeof sin6);
        out->port = ntohs(sin6.sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
            out->compare = AF_INET;
            memcpy(out->addr, sin6.sin6_addr.s6_addr + 12, 4);
        } else {
            out->compare = AF_INET6;
            memcpy(out->addr, sin6.sin6_addr.s6_addr, 16);
        }
        return 1;
    }
    return 0;
}

/* The tunnel target this address names, or -1. */
static int find_target(const struct ip_address *address) {
    for (uint32_t i = 0; i < fc.setup.n_targets; i++) {
        const struct target *t = &fc.setup.targets[i];
        if (t->family == address->compare && t->port == address->port &&
            memcmp(t->addr, address->addr, address->compare == AF_INET ? 4 : 16) == 0)
            return (int)i;
    }
    return -1;
}

static int still_held(uint64_t id) {
    return ioctl(fc.listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

/* The process a thread belongs to, from /proc; 0 if unknown. */
static pid_t tgid_of(uint32_t tid) {
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%u/status", tid);
    int file = open(path, O_RDONLY | O_CLOEXEC);
    if (file < 0)
        return 0;
    ssize_t got = read(file, text, sizeof text - 1);
    close(file);
    if (got <= 0)
        return 0;
    text[got] = 0;
    const char *line = strstr(text, "\nTgid:");
    return line ? (pid_t)strtol(line + 6, NULL, 10) : 0;
}

/* The program's socket as a descriptor of ours, or -1. */
static int take_socket(uint32_t tid, uint64_t id, int fd) {
    int pidfd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (pidfd < 0) { /* before 6.9: a process's pidfd, through its main thread */
        pid_t tgid = tgid_of(tid);
        pidfd = tgid > 0 ? (int)syscall(SYS_pidfd_open, tgid, 0) : -1;
    }
    if (pidfd < 0)
        return -1;
    int copy = -1;
    if (still_held(id)) /* so the pidfd is of the thread that made this connect */
        copy = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    close(pidfd);
    return copy;
}

/* A socket this path may connect: a TCP socket, never connected, no fast open.
   Anything else goes to Python, which knows what the kernel would say. */
static int fresh_stream(int sock, int *family) {
    int type = 0, fastopen = 0;
    socklen_t size = sizeof type;
    if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &size) < 0 || type != SOCK_STREAM)
        return 0;
    size = sizeof *family;
    if (getsockopt(sock, SOL_SOCKET, SO_DOMAIN, family, &size) < 0)
        return 0;
    struct tcp_info info;
    size = sizeof info;
    if (getsockopt(sock, IPPROTO_TCP, TCP_INFO, &info, &size) < 0 || info.tcpi_state != TCP_CLOSE)
        return 0;
    size = sizeof fastopen;
    if (getsockopt(sock, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &fastopen, &size) == 0 && fastopen)
        return 0;
    return 1;
}

static void start_connect(struct conn *c, int family) {
    const struct sockaddr *destination;
    socklen_t size;
    if (family == AF_INET) {
        destination = (const struct sockaddr *)&fc.dest4;
        size = sizeof fc.dest4;
    } else {
        destination = (const struct sockaddr *)&fc.dest6;
        size = sizeof fc.dest6;
    }
    /* Non-blocking for our connect only: the flag lives on the program's open file, so
       it goes back at once; a blocking socket's SO_SNDTIMEO bounds the wait, as in the
       kernel. */
    int flags = fcntl(c->sock, F_GETFL);
    if (flags >= 0 && !(flags & O_NONBLOCK)) {
        struct timeval timeout = {0, 0};
        socklen_t tsize = sizeof timeout;
        if (getsockopt(c->sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, &tsize) == 0 &&
            (timeout.tv_sec || timeout.tv_usec)) {
            uint64_t limit = c->started + (uint64_t)timeout.tv_sec * 1000000000u +
                             (uint64_t)timeout.tv_usec * 1000u;
            if (limit < c->deadline)
                c->deadline = limit;
        }
        fcntl(c->sock, F_SETFL, flags | O_NONBLOCK);
    }
    int error = connect(c->sock, destination, size) < 0 ? errno : 0;
    if (error == ENETUNREACH && family == AF_INET6 &&
        IN6_IS_ADDR_V4MAPPED(&fc.dest6.sin6_addr)) {
        /* An IPv6-only socket (Go's "tcp6") cannot reach an IPv4 access point; a socket
           not yet bound or connected may drop that flag, and then can. */
        int off = 0;
        if (setsockopt(c->sock, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) == 0)
            error = connect(c->sock, destination, size) < 0 ? errno : 0;
    }
    if (error == EINPROGRESS) {
        /* A loopback connect is usually done by now: asking again (still non-blocking)
           says so, or EALREADY while it goes on. */
        error = connect(c->sock, destination, size) < 0 ? errno : 0;
        if (error == EISCONN)
            error = 0;
    }
    if (flags >= 0 && !(flags & O_NONBLOCK))
        fcntl(c->sock, F_SETFL, flags); /* the rest is MSG_DONTWAIT I/O and epoll */
    if (error == 0) {
        struct epoll_event event = {.events = 0, .data.ptr = c};
        epoll_ctl(fc.epoll, EPOLL_CTL_ADD, c->sock, &event);
        connected(c);
    } else if (error == EALREADY || error == EINPROGRESS) {
        struct epoll_event event = {.events = EPOLLOUT, .data.ptr = c};
        epoll_ctl(fc.epoll, EPOLL_CTL_ADD, c->sock, &event);
    } else {
        struct epoll_event event = {.events = 0, .data.ptr = c};
        epoll_ctl(fc.epoll, EPOLL_CTL_ADD, c->sock, &event);
        finish(c, -error, UNREACHABLE, error, 0);
    }
}

static void notified(void) {
    struct seccomp_notif req;
    memset(&req, 0, sizeof req); /* the kernel insists */
    if (ioctl(fc.listener, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0)
        return; /* ENOENT: its thread left the syscall; EINTR */
    if (req.data.nr != SYS_connect)
        goto to_python;
    /* The kernel's own limits on addrlen (EINVAL outside them): Python answers those. */
    int length = (int)req.data.args[2];
    if (length < 2 || length > 128)
        goto to_python;
    uint8_t raw[sizeof(struct sockaddr_in6)];
    size_t size = (size_t)length < sizeof raw ? (size_t)length : sizeof raw;
    struct iovec local = {raw, size}, remote = {(void *)(uintptr_t)req.data.args[1], size};
    if (process_vm_readv((pid_t)req.pid, &local, 1, &remote, 1, 0) != (ssize_t)size)
        goto to_python;
    struct ip_address address;
    if (!parse_ip_address(raw, size, &address))
        goto to_python;
    int target = find_target(&address);
    if (target < 0) {
        /* An IP address neither of the tunnel nor a nameserver's (port 53: Python
           answers for the tunnel's names) runs as the program made it, as in
           Redirector.on_connect. */
        if (address.port == 53)
            goto to_python;
        struct seccomp_notif_resp response = {
            .id = req.id, .val = 0, .error = 0, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
        ioctl(fc.listener, SECCOMP_IOCTL_NOTIF_SEND, &response); /* ENOENT: it has gone */
        return;
    }
    int fd = (int)req.data.args[0];
    int sock = take_socket(req.pid, req.id, fd);
    if (sock < 0)
        goto to_python;
    int family = 0;
    /* Python handles the rest: another family's address (the kernel refuses it), an
       access point this family cannot reach. */
    if (!fresh_stream(sock, &family) || family != address.family ||
        (family == AF_INET ? fc.dest4.sin_family : fc.dest6.sin6_family) == 0) {
        close(sock);
        goto to_python;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(sock);
        goto to_python;
    }
    c->id = req.id;
    c->tid = req.pid;
    c->fd = fd;
    c->sock = sock;
    c->target = (uint32_t)target;
    c->started = now_ns();
    c->deadline = c->started + (uint64_t)fc.setup.timeout_ms * 1000000u;
    c->next = fc.conns;
    fc.conns = c;
    start_connect(c, family);
    return;
to_python:
    forward(&req);
}

static void *run(void *unused) {
    (void)unused;
    struct epoll_event listen_event = {.events = EPOLLIN, .data.ptr = &fc.listener};
    struct epoll_event control_event = {.events = EPOLLIN, .data.ptr = &fc.control};
    epoll_ctl(fc.epoll, EPOLL_CTL_ADD, fc.listener, &listen_event);
    epoll_ctl(fc.epoll, EPOLL_CTL_ADD, fc.control, &control_event);
    for (;;) {
        int timeout = -1;
        uint64_t now = now_ns();
        for (struct conn *c = fc.conns; c; c = c->next) {
            int ms = c->deadline <= now ? 0 : (int)((c->deadline - now) / 1000000u) + 1;
            if (timeout < 0 || ms < timeout)
                timeout = ms;
        }
        struct epoll_event events[MAX_EVENTS];
        int n = epoll_wait(fc.epoll, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR)
            break;
        int stop = 0;
        for (int i = 0; i < n; i++) {
            void *what = events[i].data.ptr;
            if (what == &fc.listener) {
                if (events[i].events & EPOLLHUP)
                    stop = 1; /* the program has gone: no filter holds the listener */
                else
                    notified();
            } else if (what == &fc.control) {
                stop = 1; /* Python shut its end down (it sends nothing else) */
            }
        }
        /* Connections: each has one event at most, and finishing one frees no other, so
           every conn named here is still alive when its turn comes. */
        for (int i = 0; i < n; i++) {
            void *what = events[i].data.ptr;
            if (what == &fc.listener || what == &fc.control)
                continue;
            struct conn *c = what;
            if (c->state == CONNECTING)
                writable(c);
            else
                readable(c);
        }
        now = now_ns();
        for (struct conn *c = fc.conns, *next; c; c = next) {
            next = c->next;
            if (c->deadline <= now)
                finish(c, -ETIMEDOUT, TIMED_OUT, 0, 0);
        }
        if (stop)
            break;
    }
    fc.stopping = 1;
    while (fc.conns) /* the supervisor is ending: nothing will carry these any more */
        finish(fc.conns, -ECONNREFUSED, ABANDONED, 0, 0);
    /* End of file for Python: it stops waiting for us, or (if it did not ask us to
       stop) reads the listener itself from now on. */
    shutdown(fc.control, SHUT_WR);
    return NULL;
}

/* Start the thread; 0, or an errno. The listener stays Python's: it closes it after
   fastconnect_stop. */
int fastconnect_start(int listener, int control, const void *setup, size_t size) {
    if (fc.running)
        return EBUSY;
    if (size != sizeof fc.setup)
        return EINVAL;
    memcpy(&fc.setup, setup, size);
    if (fc.setup.version != SETUP_VERSION || fc.setup.n_targets > MAX_TARGETS ||
        fc.setup.secret_len > MAX_SECRET) {
        OPENSSL_cleanse(&fc.setup, sizeof fc.setup);
        return EINVAL;
    }
    memcpy(&fc.dest4, fc.setup.dest4, sizeof fc.dest4);
    memcpy(&fc.dest6, fc.setup.dest6, sizeof fc.dest6);
    fc.listener = listener;
    fc.control = control;
    fc.conns = NULL;
    fc.stopping = 0;
    fc.epoll = epoll_create1(EPOLL_CLOEXEC);
    if (fc.epoll < 0) {
        int error = errno;
        OPENSSL_cleanse(&fc.setup, sizeof fc.setup);
        return error;
    }
    fc.sync_wake_up = ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                            (uint64_t)SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0;
    /* Every signal stays with the Python thread (its signalfd must see them all). */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    int error = pthread_create(&fc.thread, NULL, run, NULL);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (error) {
        close(fc.epoll);
        OPENSSL_cleanse(&fc.setup, sizeof fc.setup);
        return error;
    }
    fc.running = 1;
    return 0;
}

/* After Python has closed its end of the control pair: wait for the thread. */
void fastconnect_stop(void) {
    if (!fc.running)
        return;
    pthread_join(fc.thread, NULL);
    close(fc.epoll);
    OPENSSL_cleanse(&fc.setup, sizeof fc.setup);
    fc.running = 0;
}

/* fastconnect.py checks both before it starts the thread. */
unsigned fastconnect_wire_version(void) { return WIRE_VERSION; }
size_t fastconnect_setup_size(void) { return sizeof(struct setup); }
