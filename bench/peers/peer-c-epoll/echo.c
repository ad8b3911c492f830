/*
 * peer-c-epoll: a plain C epoll echo server, the baseline `ringhold serve --engine epoll` is held to.
 *
 * Written as a careful C server would be, nothing clever:
 *   - one thread per core (--threads N), each with its own SO_REUSEPORT listener (backlog 4096) and
 *     its own epoll instance: no lock and no shared state between threads;
 *   - edge-triggered (EPOLLET), non-blocking sockets (accept4 SOCK_NONBLOCK), TCP_NODELAY as ringhold
 *     sets it;
 *   - on readiness: accept until EAGAIN; read until EAGAIN into one per-thread buffer and write each
 *     chunk straight back;
 *   - on a short write: the rest is copied into a per-connection buffer, the connection waits for
 *     EPOLLOUT (EPOLL_CTL_MOD) and reads nothing more until it is written (backpressure), then goes
 *     back to EPOLLIN. An idle connection owns no user-space memory at all.
 *   - accept errors (EMFILE, ...) are reported once and retried after 100 ms, as the other peers do.
 *
 * --short-read: treat a read shorter than the buffer as "drained" and skip the read that would
 * return EAGAIN (what nginx does under edge-triggered epoll). Off by default; it exists to show
 * what that one syscall per request is worth (bench/results/<date>-syscalls).
 *
 * Command line as the other peers: --listen ADDR (port 0 allowed) --threads N; prints
 * "listening on ADDR" to stderr once every thread listens. Build:
 *   gcc -O2 -Wall -Wextra -pthread -o peer-c-epoll echo.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAME "peer-c-epoll"
#define BACKLOG 4096
#define BUF_SIZE 16384
#define MAX_EVENTS 512

/* A connection whose echo did not fit in the socket's send buffer: the bytes still to write.
 * epoll's data.ptr points at it while the connection waits for EPOLLOUT. */
struct pending {
    int fd;
    uint32_t off, len;
    char data[];
};

/* epoll data: a pending struct (pointer, low bit 0) or a plain fd tagged (fd << 1) | 1. */
#define TAG_FD(fd) ((((uint64_t)(uint32_t)(fd)) << 1) | 1)
#define IS_FD(u) ((u) & 1)
#define FD_OF(u) ((int)((u) >> 1))

static struct sockaddr_storage listen_addr;
static socklen_t listen_len;
static int short_read;

static void die(const char *what) {
    fprintf(stderr, NAME ": %s: %s\n", what, strerror(errno));
    exit(1);
}

static int make_listener(void) {
    int fd = socket(listen_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
    if (bind(fd, (struct sockaddr *)&listen_addr, listen_len) < 0) die("cannot listen: bind");
    if (listen(fd, BACKLOG) < 0) die("cannot listen");
    return fd;
}

struct worker {
    int lfd, ep;
    int accept_backoff; /* accept failed (EMFILE, ...): retry 100 ms later */
    int64_t retry_at_ms;
    int warned;
    char buf[BUF_SIZE];
};

static void close_conn(int fd) { close(fd); /* close removes it from the epoll set */ }

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes buf[0..n) to fd; on a short write keeps the rest and waits for EPOLLOUT.
 * Returns 1 if everything was written, 0 if the rest is pending, -1 if the connection was closed. */
static int echo_out(struct worker *w, int fd, const char *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = write(fd, buf + done, n - done);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) break;
        close_conn(fd);
        return -1;
    }
    if (done == n) return 1;
    size_t rest = n - done;
    struct pending *p = malloc(sizeof *p + rest);
    if (!p) {
        close_conn(fd);
        return -1;
    }
    p->fd = fd;
    p->off = 0;
    p->len = (uint32_t)rest;
    memcpy(p->data, buf + done, rest);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.ptr = p};
    if (epoll_ctl(w->ep, EPOLL_CTL_MOD, fd, &ev) < 0) {
        free(p);
        close_conn(fd);
        return -1;
    }
    return 0;
}

static void on_readable(struct worker *w, int fd) {
    for (;;) {
        ssize_t n = read(fd, w->buf, sizeof w->buf);
        if (n > 0) {
            if (echo_out(w, fd, w->buf, (size_t)n) != 1) return;
            if (short_read && (size_t)n < sizeof w->buf) return;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        close_conn(fd); /* EOF or error */
        return;
    }
}

static void on_writable(struct worker *w, struct pending *p) {
    int fd = p->fd;
    while (p->off < p->len) {
        ssize_t r = write(fd, p->data + p->off, p->len - p->off);
        if (r > 0) {
            p->off += (uint32_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) return; /* wait for the next EPOLLOUT edge */
        free(p);
        close_conn(fd);
        return;
    }
    free(p);
    /* Back to reading. MOD re-checks readiness, so bytes that arrived meanwhile raise an event. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = TAG_FD(fd)};
    if (epoll_ctl(w->ep, EPOLL_CTL_MOD, fd, &ev) < 0) close_conn(fd);
}

static void on_accept(struct worker *w) {
    for (;;) {
        int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN) {
                w->accept_backoff = 0;
                return;
            }
            if (!w->warned) {
                fprintf(stderr, NAME ": accept: %s\n", strerror(errno));
                w->warned = 1;
            }
            w->accept_backoff = 1;
            w->retry_at_ms = now_ms() + 100;
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = TAG_FD(fd)};
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) close(fd);
    }
}

static void *serve(void *arg) {
    struct worker *w = arg;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    if (w->ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = TAG_FD(w->lfd)};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lfd, &ev) < 0) die("epoll_ctl listener");
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int timeout = -1;
        if (w->accept_backoff) {
            int64_t left = w->retry_at_ms - now_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        int n = epoll_wait(w->ep, evs, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        /* With an edge-triggered listener, the connections left in the queue raise no new event. */
        if (w->accept_backoff && now_ms() >= w->retry_at_ms) on_accept(w);
        for (int i = 0; i < n; i++) {
            uint64_t u = evs[i].data.u64;
            if (IS_FD(u) && FD_OF(u) == w->lfd)
                on_accept(w);
            else if (IS_FD(u))
                on_readable(w, FD_OF(u));
            else
                on_writable(w, evs[i].data.ptr);
        }
    }
    return NULL;
}

static void usage(int code) {
    printf(NAME ": TCP echo server for ringhold's bench (plain C, epoll)\n\n"
                "Usage: " NAME " [--listen ADDR] [--threads N] [--short-read]\n\n"
                "  --listen ADDR  address to listen on, ip:port or [ip6]:port (port 0 picks one; default 127.0.0.1:0)\n"
                "  --threads N    threads, one listener and epoll each (default: number of cores)\n"
                "  --short-read   a read shorter than the buffer ends the read loop (no read until EAGAIN)\n");
    exit(code);
}

static void fail(const char *msg, const char *arg) {
    fprintf(stderr, NAME ": %s '%s' (try --help)\n", msg, arg);
    exit(2);
}

static void parse_listen(const char *s) {
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) fail("not an ip:port:", s);
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535) fail("not an ip:port:", s);
    memset(&listen_addr, 0, sizeof listen_addr);
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&listen_addr;
        host[hl - 1] = 0;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) fail("not an ip:port:", s);
        listen_len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&listen_addr;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) fail("not an ip:port:", s);
        listen_len = sizeof *a;
    }
}

int main(int argc, char **argv) {
    long threads = sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    parse_listen("127.0.0.1:0");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        const char *eq = strchr(a, '=');
        char key[32];
        size_t kl = eq ? (size_t)(eq - a) : strlen(a);
        if (kl >= sizeof key) fail("unknown argument", a);
        memcpy(key, a, kl);
        key[kl] = 0;
        if (!strcmp(key, "-h") || !strcmp(key, "--help")) usage(0);
        if (!strcmp(key, "--short-read")) {
            short_read = 1;
            continue;
        }
        if (strcmp(key, "--listen") && strcmp(key, "--threads")) fail("unknown argument", a);
        v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) fail("needs a value:", key);
        if (!strcmp(key, "--listen")) {
            parse_listen(v);
        } else {
            char *end;
            threads = strtol(v, &end, 10);
            if (*end || end == v || threads < 1 || threads > 1024)
                fail("--threads must be a number from 1 to 1024, not", v);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &lim) < 0)
            fprintf(stderr, NAME ": warning: cannot raise RLIMIT_NOFILE: %s\n", strerror(errno));
    }
    /* The first listener resolves port 0; the others bind the same address with SO_REUSEPORT. */
    struct worker *ws = calloc((size_t)threads, sizeof *ws);
    if (!ws) die("calloc");
    ws[0].lfd = make_listener();
    listen_len = sizeof listen_addr;
    if (getsockname(ws[0].lfd, (struct sockaddr *)&listen_addr, &listen_len) < 0) die("getsockname");
    for (long t = 1; t < threads; t++) ws[t].lfd = make_listener();
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    if (!tids) die("calloc");
    for (long t = 0; t < threads; t++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 256 << 10);
        errno = pthread_create(&tids[t], &attr, serve, &ws[t]);
        if (errno) die("pthread_create");
        pthread_attr_destroy(&attr);
    }
    char host[INET6_ADDRSTRLEN];
    unsigned port;
    if (listen_addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&listen_addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        fprintf(stderr, "listening on [%s]:%u\n", host, port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&listen_addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        fprintf(stderr, "listening on %s:%u\n", host, port);
    }
    for (long t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    return 0;
}
