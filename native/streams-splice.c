/*
 * streams-splice: the native data pump of streams_trace.
 *
 *   streams-splice [--die-with-parent] CONTROL_FD
 *
 * CONTROL_FD is one end of an AF_UNIX SOCK_SEQPACKET pair whose other end the
 * owner (streams_trace/relay/native.py) keeps. Each message from the owner is
 * one `struct add_msg` carrying two connected sockets (SCM_RIGHTS): the helper
 * joins them and carries bytes both ways with splice(2) through two pipes, so
 * the bytes never enter user space. When a pair ends the helper sends back one
 * `struct done_msg` with the byte counts. End of file on the control socket
 * (the owner closed it, or died) resets every pair and ends the helper, so it
 * never outlives its owner; a message of the op OP_END_WHEN_SENT alone (no
 * descriptors) asks the helper to close each pair from then on as soon as its
 * side a has finished sending (the owner's program has gone; see
 * end_when_sent in pump.py); --die-with-parent adds PR_SET_PDEATHSIG for the
 * case where a forked copy of the owner still holds the control socket. SIGTERM,
 * SIGINT and SIGHUP (the parent-death signal is SIGTERM) end it the same way:
 * every pair reset, never a clean end of file for a stream cut short.
 *
 * Semantics match streams_trace/relay/pump.py (the pure-Python fallback):
 * end of file on one side becomes shutdown(SHUT_WR) on the other once the pipe
 * has drained (half close passes through); a reset or write error on either
 * side closes both with SO_LINGER 0, so the reset passes through; a pair is
 * closed when both directions have finished.
 *
 * Exit status: 0 after the control socket closed, 2 on bad usage, 1 when the
 * event loop itself fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define PROGRAM "streams-splice"
#ifndef PIPE_SIZE
#define PIPE_SIZE (256 * 1024)
#endif
/* Bytes one direction may move per wake-up before other pairs get their turn. */
#define FAIR_SHARE (4 * PIPE_SIZE)
#define MAX_EVENTS 256

/* Wire format shared with streams_trace/relay/native.py (native byte order). */
#define OP_ADD 1
#define OP_END_WHEN_SENT 2
struct add_msg {
    uint32_t op;
    uint32_t reserved;
    uint64_t id;
};
struct done_msg {
    uint64_t id;
    uint64_t a_to_b;
    uint64_t b_to_a;
    uint32_t reset;
    uint32_t reserved;
};

struct direction {
    int source, sink;
    int pipe_read, pipe_write;
    size_t capacity; /* the pipe's real size: F_SETPIPE_SZ may be refused */
    size_t buffered;
    uint64_t moved;
    int eof;
    /* The last read found no room or no data while bytes waited in the pipe: a
     * full pipe cannot be told apart from an empty socket, so reading waits
     * for a drain instead of spinning on a readable socket. */
    int stalled;
    int finished; /* EOF seen and forwarded as shutdown(SHUT_WR) */
};

struct pair;
/* What epoll hands back: one endpoint of a pair (side 0 is a, 1 is b). */
struct endpoint {
    struct pair *pair;
    int side;
    uint32_t events; /* the interest registered now */
    int registered;  /* in the epoll set now */
    int hung_up;     /* reported EPOLLHUP: shut down both ways, no error */
    int done;        /* removed for good: both its directions are over */
};

struct pair {
    uint64_t id;
    int fd[2];
    struct direction forward, backward; /* a->b, b->a */
    struct endpoint end[2];
    int reset;
    int closed; /* closed in this batch of events; freed after it */
    struct pair *prev, *next; /* every live pair, so EOF on control can close them */
};

static int debug_enabled;
static int control_fd = -1;
static volatile sig_atomic_t stop_requested;
static int ending; /* OP_END_WHEN_SENT came: a pair whose side a finished closes */

static void note_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}
static int epoll_fd = -1;
static struct pair *pairs;
/* Pairs closed while a batch of events is handled: a later event of the same
 * batch may still point at one, so they are freed only after the batch. */
static struct pair *closed_pairs;
static struct endpoint control_end; /* epoll data for the control socket */

static void say(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fputs(PROGRAM ": ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
}

static int is_reset_error(int err)
{
    return err == ECONNRESET || err == EPIPE || err == ETIMEDOUT || err == EHOSTUNREACH ||
           err == ENETUNREACH || err == ECONNABORTED;
}

/* After splice said 0: move the urgent byte it stopped at into the pipe (the owner set
 * SO_OOBINLINE, so it is part of the stream) and return 1; 0 at the real end of file. */
static int urgent_byte(struct direction *d)
{
    int at_mark = 0;
    char byte;
    if (ioctl(d->source, SIOCATMARK, &at_mark) < 0 || !at_mark)
        return 0;
    if (recv(d->source, &byte, 1, MSG_DONTWAIT) != 1)
        return 0;
    return write(d->pipe_write, &byte, 1) == 1; /* there is room: the caller checked */
}

static int open_pipe(struct direction *d)
{
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -1;
    (void)fcntl(fds[1], F_SETPIPE_SZ, PIPE_SIZE); /* keep the default if refused */
    int size = fcntl(fds[1], F_GETPIPE_SZ);
    d->pipe_read = fds[0];
    d->pipe_write = fds[1];
    d->capacity = size > 0 ? (size_t)size : 65536;
    return 0;
}

static void report(const struct pair *p)
{
    struct done_msg msg = {
        .id = p->id,
        .a_to_b = p->forward.moved,
        .b_to_a = p->backward.moved,
        .reset = (uint32_t)p->reset,
    };
    /* Blocking on purpose: the owner's reader thread drains these promptly, and
     * a lost report would leave a pair counted as active forever. */
    while (send(control_fd, &msg, sizeof msg, MSG_NOSIGNAL) < 0) {
        if (errno == EINTR)
            continue;
        if (errno != EPIPE && errno != ECONNRESET)
            say("cannot report pair %llu: %s", (unsigned long long)p->id, strerror(errno));
        break;
    }
}

/* Close a pair. cut: the helper stops with the pair still open; a side that still had
 * bytes or its end of file to come gets a reset (its stream is incomplete), while a
 * side whose direction had finished keeps what is queued for it. */
static void close_pair(struct pair *p, int cut)
{
    struct direction *dirs[2] = {&p->forward, &p->backward};
    for (int i = 0; i < 2; i++) {
        close(dirs[i]->pipe_read);
        close(dirs[i]->pipe_write);
    }
    if (cut)
        p->reset = 1; /* as reported: the pair did not end by itself */
    for (int side = 0; side < 2; side++) {
        /* Deregister explicitly: close() alone leaves the registration alive
         * while another process still holds a copy of the socket. */
        if (p->end[side].registered)
            epoll_ctl(epoll_fd, EPOLL_CTL_DEL, p->fd[side], NULL);
        /* fd[0] is the forward source: what goes toward it is the backward direction. */
        const struct direction *toward = side == 0 ? &p->backward : &p->forward;
        /* SO_LINGER 0 (the owner armed it, so that our death resets the streams) makes
         * close() send a reset, so a reset passes through; a side whose stream is
         * complete is disarmed, and keeps what is queued for it. */
        struct linger linger = {.l_onoff = p->reset && !(cut && toward->finished),
                                .l_linger = 0};
        (void)setsockopt(p->fd[side], SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
        close(p->fd[side]);
    }
    if (p->prev)
        p->prev->next = p->next;
    else
        pairs = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (debug_enabled)
        say("pair %llu closed%s: %llu bytes a->b, %llu bytes b->a", (unsigned long long)p->id,
            p->reset ? " by a reset" : "", (unsigned long long)p->forward.moved,
            (unsigned long long)p->backward.moved);
    report(p);
    p->closed = 1;
    p->next = closed_pairs;
    closed_pairs = p;
}

static void free_closed_pairs(void)
{
    while (closed_pairs) {
        struct pair *p = closed_pairs;
        closed_pairs = p->next;
        free(p);
    }
}

/* Move what can move now in one direction, without blocking; -1 on a reset. */
static int move(struct direction *d)
{
    size_t budget = FAIR_SHARE;
    while (budget > 0) {
        size_t progress = 0;
        if (!d->eof && d->buffered < d->capacity) {
            ssize_t n = splice(d->source, NULL, d->pipe_write, NULL, d->capacity - d->buffered,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n == 0 && urgent_byte(d))
                n = 1;
            if (n == 0) {
                d->eof = 1;
            } else if (n > 0) {
                d->buffered += (size_t)n;
                d->moved += (uint64_t)n;
                progress += (size_t)n;
            } else if (errno == EAGAIN) {
                d->stalled = d->buffered > 0;
            } else if (errno != EINTR) {
                if (!is_reset_error(errno))
                    say("relay error: %s", strerror(errno));
                return -1;
            }
        }
        if (d->buffered) {
            ssize_t n = splice(d->pipe_read, NULL, d->sink, NULL, d->buffered,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0) {
                d->buffered -= (size_t)n;
                progress += (size_t)n;
                d->stalled = 0;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                if (!is_reset_error(errno))
                    say("relay error: %s", strerror(errno));
                return -1;
            }
        }
        if (d->eof && !d->buffered && !d->finished) {
            d->finished = 1;
            if (shutdown(d->sink, SHUT_WR) < 0 && errno != ENOTCONN) {
                if (!is_reset_error(errno))
                    say("relay error: %s", strerror(errno));
                return -1;
            }
        }
        if (!progress)
            return 0;
        budget = progress >= budget ? 0 : budget - progress;
    }
    return 0;
}

/* Readable if the socket may still send, writable if bytes wait for it. */
static uint32_t interest(const struct direction *out, const struct direction *into)
{
    uint32_t events = 0;
    if (!out->eof && !out->stalled && out->buffered < out->capacity)
        events |= EPOLLIN;
    if (into->buffered)
        events |= EPOLLOUT;
    return events;
}

static void update_interest(struct pair *p)
{
    for (int side = 0; side < 2; side++) {
        struct endpoint *e = &p->end[side];
        const struct direction *out = side == 0 ? &p->forward : &p->backward;
        const struct direction *into = side == 0 ? &p->backward : &p->forward;
        if (e->done)
            continue;
        /* A socket shut down both ways reports EPOLLHUP on every wait (level
         * triggered), whatever the interest. Once nothing more can happen on
         * it, or while its bytes wait for the other side's pipe to drain (the
         * drain is signalled on the other socket), it leaves the epoll set,
         * else the loop would spin at full speed. */
        int finished_here = out->eof && into->finished;
        int parked = e->hung_up && interest(out, into) == 0;
        if (finished_here || parked) {
            if (e->registered)
                epoll_ctl(epoll_fd, EPOLL_CTL_DEL, p->fd[side], NULL);
            e->registered = 0;
            e->done = finished_here;
            continue;
        }
        uint32_t events = interest(out, into);
        struct epoll_event ev = {.events = events, .data.ptr = e};
        if (!e->registered) {
            epoll_ctl(epoll_fd, EPOLL_CTL_ADD, p->fd[side], &ev);
            e->registered = 1;
            e->events = events;
        } else if (events != e->events) {
            epoll_ctl(epoll_fd, EPOLL_CTL_MOD, p->fd[side], &ev);
            e->events = events;
        }
    }
}

/* The socket's pending error, which a reset leaves (ECONNRESET, or EPIPE after
 * the peer's FIN); reading it clears it. */
static int pending_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

static void service(struct pair *p, int side, uint32_t events)
{
    if (move(&p->forward) < 0 || move(&p->backward) < 0) {
        p->reset = 1;
    } else if (events & (EPOLLERR | EPOLLHUP)) {
        /* No read or write surfaced it (this side's directions may be over):
         * an error means the peer reset; a clean hang-up is remembered. */
        if (pending_error(p->fd[side]))
            p->reset = 1;
        else if (events & EPOLLHUP)
            p->end[side].hung_up = 1;
    }
    if (p->reset || (p->forward.finished && p->backward.finished)) {
        close_pair(p, 0);
        return;
    }
    if (ending && p->forward.finished) {
        close_pair(p, 1);
        return;
    }
    update_interest(p);
}

static void refuse(uint64_t id, int fds[2], int count)
{
    struct linger linger = {.l_onoff = 1, .l_linger = 0};
    for (int i = 0; i < count; i++) {
        (void)setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
        close(fds[i]);
    }
    struct pair dummy = {.id = id, .reset = 1};
    report(&dummy);
}

static void add_pair(uint64_t id, int fds[2])
{
    struct pair *p = calloc(1, sizeof *p);
    if (!p) {
        say("pair %llu refused: out of memory", (unsigned long long)id);
        refuse(id, fds, 2);
        return;
    }
    p->id = id;
    p->fd[0] = fds[0];
    p->fd[1] = fds[1];
    p->forward.source = p->backward.sink = fds[0];
    p->forward.sink = p->backward.source = fds[1];
    if (open_pipe(&p->forward) < 0) {
        say("pair %llu refused: cannot make a pipe: %s", (unsigned long long)id, strerror(errno));
        free(p);
        refuse(id, fds, 2);
        return;
    }
    if (open_pipe(&p->backward) < 0) {
        say("pair %llu refused: cannot make a pipe: %s", (unsigned long long)id, strerror(errno));
        close(p->forward.pipe_read);
        close(p->forward.pipe_write);
        free(p);
        refuse(id, fds, 2);
        return;
    }
    p->next = pairs;
    if (pairs)
        pairs->prev = p;
    pairs = p;
    for (int side = 0; side < 2; side++) {
        int flags = fcntl(fds[side], F_GETFL);
        fcntl(fds[side], F_SETFL, flags | O_NONBLOCK);
        p->end[side] = (struct endpoint){.pair = p, .side = side};
        struct epoll_event ev = {.events = 0, .data.ptr = &p->end[side]};
        if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fds[side], &ev) < 0) {
            say("pair %llu refused: epoll: %s", (unsigned long long)id, strerror(errno));
            p->reset = 1;
            close_pair(p, 0);
            return;
        }
        p->end[side].registered = 1;
    }
    service(p, 0, 0);
}

/* Read one control message: 1 when one was handled, 2 when none is waiting, 0
 * when the owner has gone (end of file). */
static int read_control(void)
{
    struct add_msg msg;
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = &msg, .iov_len = sizeof msg};
    struct msghdr header = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof control.buf,
    };
    ssize_t n = recvmsg(control_fd, &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n == 0)
        return 0;
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 2;
        if (errno == ECONNRESET)
            return 0;
        say("control socket: %s", strerror(errno));
        return 0;
    }
    int fds[2] = {-1, -1};
    int count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&header); c; c = CMSG_NXTHDR(&header, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int carried = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *data = (int *)CMSG_DATA(c);
            for (int i = 0; i < carried; i++) {
                if (count < 2)
                    fds[count++] = data[i];
                else
                    close(data[i]);
            }
        }
    }
    if ((size_t)n == sizeof msg && msg.op == OP_END_WHEN_SENT && count == 0 &&
        !(header.msg_flags & MSG_CTRUNC)) {
        ending = 1;
        for (struct pair *p = pairs, *next; p; p = next) {
            next = p->next; /* close_pair unlinks p */
            if (p->forward.finished)
                close_pair(p, 1);
        }
        return 1;
    }
    if ((size_t)n != sizeof msg || msg.op != OP_ADD || count != 2 ||
        (header.msg_flags & MSG_CTRUNC)) {
        say("bad control message (%zd bytes, %d descriptors); pair refused", n, count);
        refuse((size_t)n == sizeof msg ? msg.id : 0, fds, count);
        return 1;
    }
    add_pair(msg.id, fds);
    return 1;
}

static void raise_descriptor_limit(void)
{
    /* Each pair costs six descriptors: two sockets and two pipes. */
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &limit);
    }
}

int main(int argc, char **argv)
{
    int die_with_parent = 0;
    int arg = 1;
    for (; arg < argc && argv[arg][0] == '-'; arg++) {
        if (strcmp(argv[arg], "--die-with-parent") == 0)
            die_with_parent = 1;
        else if (strcmp(argv[arg], "-d") == 0 || strcmp(argv[arg], "--debug") == 0)
            debug_enabled = 1;
        else
            break;
    }
    const char *env = getenv("STREAMS_SPLICE_DEBUG");
    if (env && *env && strcmp(env, "0") != 0)
        debug_enabled = 1;
    char *end = NULL;
    long fd = arg == argc - 1 ? strtol(argv[arg], &end, 10) : -1;
    if (fd < 0 || fd > INT_MAX || !end || *end != '\0') {
        fprintf(stderr,
                "usage: " PROGRAM " [--die-with-parent] [-d] CONTROL_FD\n"
                "Started by streams_trace; CONTROL_FD is a SOCK_SEQPACKET socket.\n");
        return 2;
    }
    control_fd = (int)fd;
    int kind = 0;
    socklen_t len = sizeof kind;
    if (getsockopt(control_fd, SOL_SOCKET, SO_TYPE, &kind, &len) < 0 || kind != SOCK_SEQPACKET) {
        say("descriptor %d is not a SOCK_SEQPACKET socket", control_fd);
        return 2;
    }
    /* Stop signals are held except while waiting in epoll_pwait: one that comes
     * during the work on a batch ends that wait at once, none is missed. */
    sigset_t stop_signals, waiting_mask;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop_signals, &waiting_mask);
    sigdelset(&waiting_mask, SIGTERM);
    sigdelset(&waiting_mask, SIGINT);
    sigdelset(&waiting_mask, SIGHUP);
    struct sigaction on_stop = {.sa_handler = note_stop};
    sigemptyset(&on_stop.sa_mask);
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGHUP, &on_stop, NULL);
    if (die_with_parent) {
        pid_t parent = getppid();
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* caught: the pairs are reset, not just closed */
        if (getppid() != parent) /* the parent died before prctl took effect */
            return 0;
    }
    signal(SIGPIPE, SIG_IGN); /* a write to a reset peer is an error, not a death */
    raise_descriptor_limit();

    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) {
        say("epoll_create1: %s", strerror(errno));
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &control_end};
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, control_fd, &ev) < 0) {
        say("epoll_ctl: %s", strerror(errno));
        return 1;
    }

    struct epoll_event events[MAX_EVENTS];
    int running = 1;
    while (running) {
        int ready = epoll_pwait(epoll_fd, events, MAX_EVENTS, -1, &waiting_mask);
        if (ready < 0) {
            if (errno != EINTR) {
                say("epoll_wait: %s", strerror(errno));
                return 1;
            }
            if (stop_requested) {
                if (pairs)
                    say("stopped by a signal: every open pair is reset");
                running = 0;
            }
            continue;
        }
        for (int i = 0; i < ready; i++) {
            struct endpoint *e = events[i].data.ptr;
            if (e == &control_end) {
                /* A burst of new pairs is taken in one go, a few at a time. */
                for (int taken = 0; taken < 64 && running; taken++) {
                    int result = read_control();
                    if (result == 0)
                        running = 0;
                    else if (result == 2)
                        break;
                }
                continue;
            }
            if (!e->pair->closed)
                service(e->pair, e->side, events[i].events);
        }
        free_closed_pairs();
    }
    /* The owner has gone: close every pair (reporting it while anyone listens), by a
     * reset: bytes still in flight are lost, and an end of file would pass the stream
     * off as complete. */
    while (pairs)
        close_pair(pairs, 1);
    free_closed_pairs();
    return 0;
}
