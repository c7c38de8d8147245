// Writer CPU per send on loopback TCP: K frames as a sendmsg(2) of two slices each
// (header, body), against the same frames copied into one buffer and sent with send(2).
// docs/benchmarks.md, "Status check, 2026-12-01 morning".
//
//   gcc -O2 -pthread -o /tmp/send_slices crates/ringcast-bench/micro/send_slices.c
//   /tmp/send_slices K ROUNDS [BODY_BYTES]      e.g. /tmp/send_slices 32 60 100
//
// 1,000 connected socket pairs; a reader thread on CPU 1 drains them with epoll, the
// writer on CPU 0 sends K frames to each socket in turn, then sleeps 10 ms (a round).
// Seven repetitions of ROUNDS rounds per way, the two ways alternating; prints the
// median (and range) of the writer thread's CPU time per send.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SOCKETS 1000
#define REPS 7
#define MAX_FRAMES 32
#define MAX_BODY 4096

static int writers[SOCKETS], readers[SOCKETS];
static volatile int stop;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void *drain(void *unused) {
    (void)unused;
    pin(1);
    int ep = epoll_create1(0);
    for (int i = 0; i < SOCKETS; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.fd = readers[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, readers[i], &e);
    }
    static char buf[65536];
    struct epoll_event ready[256];
    while (!stop) {
        int n = epoll_wait(ep, ready, 256, 100);
        for (int i = 0; i < n; i++)
            while (read(ready[i].data.fd, buf, sizeof buf) > 0) {
            }
    }
    return NULL;
}

static double thread_cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_THREAD, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FRAMES_PER_SEND(1-%d) ROUNDS [BODY_BYTES(1-%d)]\n", argv[0], MAX_FRAMES, MAX_BODY);
        return 64;
    }
    int k = atoi(argv[1]), rounds = atoi(argv[2]), len = argc > 3 ? atoi(argv[3]) : 100;
    if (k < 1 || k > MAX_FRAMES || rounds < 1 || len < 1 || len > MAX_BODY) {
        fprintf(stderr, "out of range\n");
        return 64;
    }
    int one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t addr_len = sizeof addr;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (void *)&addr, sizeof addr) || getsockname(listener, (void *)&addr, &addr_len) ||
        listen(listener, 4096)) {
        perror("listen");
        return 1;
    }
    for (int i = 0; i < SOCKETS; i++) {
        readers[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(readers[i], (void *)&addr, sizeof addr) || (writers[i] = accept(listener, NULL, NULL)) < 0) {
            perror("connect");
            return 1;
        }
        setsockopt(writers[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(readers[i], F_SETFL, O_NONBLOCK);
        fcntl(writers[i], F_SETFL, O_NONBLOCK);
    }
    pthread_t reader;
    pthread_create(&reader, NULL, drain, NULL);
    pin(0);

    // A server's text frame header (RFC 6455 §5.2): 2 bytes, or 4 from 126 bytes up.
    static char body[MAX_BODY];
    char header[4] = {(char)0x81, (char)len};
    size_t header_len = 2;
    if (len >= 126) {
        header[1] = 126;
        header[2] = (char)(len >> 8);
        header[3] = (char)len;
        header_len = 4;
    }
    memset(body, 'x', sizeof body);
    struct iovec slices[2 * MAX_FRAMES];
    static char flat[MAX_FRAMES * (MAX_BODY + 4)];
    double per_send[2][REPS];
    for (int rep = 0; rep < REPS; rep++) {
        for (int copied = 0; copied < 2; copied++) {
            double start = thread_cpu_seconds();
            long sends = 0;
            for (int r = 0; r < rounds; r++) {
                for (int i = 0; i < SOCKETS; i++) {
                    ssize_t n;
                    if (copied) {
                        size_t at = 0;
                        for (int f = 0; f < k; f++) {
                            memcpy(flat + at, header, header_len);
                            memcpy(flat + at + header_len, body, len);
                            at += header_len + len;
                        }
                        n = send(writers[i], flat, at, MSG_NOSIGNAL);
                    } else {
                        for (int f = 0; f < k; f++) {
                            slices[2 * f] = (struct iovec){header, header_len};
                            slices[2 * f + 1] = (struct iovec){body, len};
                        }
                        struct msghdr m = {.msg_iov = slices, .msg_iovlen = 2 * k};
                        n = sendmsg(writers[i], &m, MSG_NOSIGNAL);
                    }
                    sends += n > 0;
                }
                nanosleep(&(struct timespec){0, 10000000}, NULL);
            }
            per_send[copied][rep] = (thread_cpu_seconds() - start) / sends * 1e6;
        }
    }
    for (int copied = 0; copied < 2; copied++) {
        qsort(per_send[copied], REPS, sizeof(double), cmp_double);
        printf("%d frames of %d B per send, %s: %.3f us/send (%.3f-%.3f)\n", k, len,
               copied ? "copied, send" : "sendmsg, 2 slices/frame", per_send[copied][REPS / 2], per_send[copied][0],
               per_send[copied][REPS - 1]);
    }
    stop = 1;
    pthread_join(reader, NULL);
    return 0;
}
