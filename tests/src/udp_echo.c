/*
 * skiff-udp-echo: the UDP server and client of the test image (Debian's busybox has neither a
 * UDP server applet nor `nc -u`). Linked statically by build.rs, so it runs in the image's
 * busybox-only root.
 *
 *   skiff-udp-echo serve PORT
 *       Answers every datagram with "<hostname> <peer address>:<peer port>".
 *
 *   skiff-udp-echo ask [-c] [-p SRCPORT] [-w WAIT_MS] [-n COUNT] [-i INTERVAL_MS] [-u TEXT]
 *                      HOST PORT
 *       Sends COUNT datagrams (default 1), each from a fresh socket (bound to SRCPORT when
 *       given, so every datagram belongs to the same conntrack flow), connect()ed first with
 *       -c, sendto() otherwise. Waits up to WAIT_MS (default 1000) for each reply and sleeps
 *       INTERVAL_MS (default 0) after each; with -u, stops after the first reply containing
 *       TEXT. Prints one line per datagram, stamped with the time it was sent:
 *       "<unix ms> <reply>", "<unix ms> timeout" or "<unix ms> error <reason>".
 *       Exits 0 when at least one reply came (with -u: one containing TEXT), 1 otherwise,
 *       2 on bad arguments.
 *
 *   skiff-udp-echo hold [-w WAIT_MS] [-i INTERVAL_MS] HOST PORT
 *       An application holding one connected UDP socket: connect()s once, then sends a
 *       datagram every INTERVAL_MS (default 100) on that socket, waiting up to WAIT_MS
 *       (default 100) for each reply. Only after an error from send() or recv() (such as
 *       ECONNABORTED when the socket was destroyed under it) does it close the socket and
 *       connect a new one, through the same code path as the first. Runs until killed,
 *       printing "<unix ms> connected <n>" per connect, and per datagram
 *       "<unix ms> <reply>", "<unix ms> timeout" or "<unix ms> error <op>: <reason>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void usage(void) {
    fputs("usage: skiff-udp-echo serve PORT\n"
          "       skiff-udp-echo ask [-c] [-p SRCPORT] [-w WAIT_MS] [-n COUNT] [-i INTERVAL_MS] [-u TEXT] HOST PORT\n"
          "       skiff-udp-echo hold [-w WAIT_MS] [-i INTERVAL_MS] HOST PORT\n",
          stderr);
    exit(2);
}

/* A decimal number in [lo, hi], or exit 2 naming what was wrong. */
static long number(const char *what, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "skiff-udp-echo: %s must be a number in %ld..%ld, not '%s'\n", what, lo, hi, s);
        exit(2);
    }
    return v;
}

static long long unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int serve(const char *port_arg) {
    long port = number("PORT", port_arg, 1, 65535);
    char host[256] = {0};
    if (gethostname(host, sizeof host - 1) < 0) {
        perror("gethostname");
        return 1;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("bind");
        return 1;
    }
    for (;;) {
        char buf[2048];
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("recvfrom");
            return 1;
        }
        char ip[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
        char reply[512];
        int m = snprintf(reply, sizeof reply, "%s %s:%u", host, ip, ntohs(peer.sin_port));
        if (m < 0)
            continue;
        if ((size_t)m >= sizeof reply)
            m = sizeof reply - 1;
        /* A failed reply (peer gone) must not stop the server. */
        (void)sendto(fd, reply, (size_t)m, 0, (struct sockaddr *)&peer, len);
    }
}

/* One datagram and its answer; prints the line, returns 1 when a reply came (containing
 * `until`, when that is set). */
static int ask_once(const struct sockaddr_in *dst, long src_port, int connected, long wait_ms,
                    const char *until) {
    long long at = unix_ms();
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        printf("%lld error socket: %s\n", at, strerror(errno));
        return 0;
    }
    int got = 0;
    if (src_port) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons((unsigned short)src_port)};
        src.sin_addr.s_addr = htonl(INADDR_ANY);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            printf("%lld error bind: %s\n", at, strerror(errno));
            goto out;
        }
    }
    static const char ping[] = "ping";
    ssize_t sent;
    if (connected) {
        if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0) {
            printf("%lld error connect: %s\n", at, strerror(errno));
            goto out;
        }
        sent = send(fd, ping, sizeof ping - 1, 0);
    } else {
        sent = sendto(fd, ping, sizeof ping - 1, 0, (const struct sockaddr *)dst, sizeof *dst);
    }
    if (sent < 0) {
        printf("%lld error send: %s\n", at, strerror(errno));
        goto out;
    }
    long long deadline = at + wait_ms;
    for (;;) {
        long long left = deadline - unix_ms();
        if (left <= 0) {
            printf("%lld timeout\n", at);
            goto out;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            printf("%lld error poll: %s\n", at, strerror(errno));
            goto out;
        }
        if (r == 0)
            continue;
        char buf[600];
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n < 0) {
            /* A connected socket reports the ICMP error of the datagram here. */
            printf("%lld error recv: %s\n", at, strerror(errno));
            goto out;
        }
        buf[n] = 0;
        /* One line per datagram, whatever the reply holds. */
        for (char *c = buf; *c; c++)
            if (*c == '\n' || *c == '\r')
                *c = ' ';
        printf("%lld %s\n", at, buf);
        got = !until || strstr(buf, until) != NULL;
        goto out;
    }
out:
    close(fd);
    fflush(stdout);
    return got;
}

static int ask(int argc, char **argv) {
    int connected = 0;
    long src_port = 0, wait_ms = 1000, count = 1, interval_ms = 0;
    const char *until = NULL;
    int i = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *opt = argv[i];
        if (!strcmp(opt, "-c")) {
            connected = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *val = argv[++i];
        if (!strcmp(opt, "-p"))
            src_port = number("SRCPORT", val, 1, 65535);
        else if (!strcmp(opt, "-w"))
            wait_ms = number("WAIT_MS", val, 1, 600000);
        else if (!strcmp(opt, "-n"))
            count = number("COUNT", val, 1, 1000000);
        else if (!strcmp(opt, "-i"))
            interval_ms = number("INTERVAL_MS", val, 0, 600000);
        else if (!strcmp(opt, "-u"))
            until = val;
        else
            usage();
    }
    if (argc - i != 2)
        usage();
    struct sockaddr_in dst = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, argv[i], &dst.sin_addr) != 1) {
        fprintf(stderr, "skiff-udp-echo: HOST must be an IPv4 address, not '%s'\n", argv[i]);
        return 2;
    }
    dst.sin_port = htons((unsigned short)number("PORT", argv[i + 1], 1, 65535));
    int replies = 0;
    for (long k = 0; k < count; k++) {
        replies += ask_once(&dst, src_port, connected, wait_ms, until);
        if (until && replies)
            break;
        if (interval_ms) {
            struct timespec ts = {.tv_sec = interval_ms / 1000, .tv_nsec = (interval_ms % 1000) * 1000000};
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
            }
        }
    }
    return replies > 0 ? 0 : 1;
}

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* socket() and connect() to dst: the only way hold() gets a socket; -1 after printing why. */
static int hold_connect(const struct sockaddr_in *dst, long *connects) {
    long long at = unix_ms();
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        printf("%lld error socket: %s\n", at, strerror(errno));
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0) {
        printf("%lld error connect: %s\n", at, strerror(errno));
        close(fd);
        return -1;
    }
    printf("%lld connected %ld\n", at, ++*connects);
    return fd;
}

/* One datagram on the held socket; returns 0 on an error from send/recv (the socket is
 * then done), 1 otherwise (a reply or a timeout). */
static int hold_once(int fd, long wait_ms) {
    static const char ping[] = "ping";
    long long at = unix_ms();
    if (send(fd, ping, sizeof ping - 1, 0) < 0) {
        printf("%lld error send: %s\n", at, strerror(errno));
        return 0;
    }
    long long deadline = at + wait_ms;
    for (;;) {
        long long left = deadline - unix_ms();
        if (left <= 0) {
            printf("%lld timeout\n", at);
            return 1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        char buf[600];
        ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0) {
            printf("%lld error recv: %s\n", at, strerror(errno));
            return 0;
        }
        buf[n] = 0;
        for (char *c = buf; *c; c++)
            if (*c == '\n' || *c == '\r')
                *c = ' ';
        printf("%lld %s\n", at, buf);
        return 1;
    }
}

static int hold(int argc, char **argv) {
    long wait_ms = 100, interval_ms = 100;
    int i = 0;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (!strcmp(argv[i], "-w"))
            wait_ms = number("WAIT_MS", argv[i + 1], 1, 600000);
        else if (!strcmp(argv[i], "-i"))
            interval_ms = number("INTERVAL_MS", argv[i + 1], 1, 600000);
        else
            usage();
    }
    if (argc - i != 2)
        usage();
    struct sockaddr_in dst = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, argv[i], &dst.sin_addr) != 1) {
        fprintf(stderr, "skiff-udp-echo: HOST must be an IPv4 address, not '%s'\n", argv[i]);
        return 2;
    }
    dst.sin_port = htons((unsigned short)number("PORT", argv[i + 1], 1, 65535));
    long connects = 0;
    int fd = -1;
    for (;;) {
        if (fd < 0)
            fd = hold_connect(&dst, &connects);
        if (fd >= 0 && !hold_once(fd, wait_ms)) {
            close(fd);
            fd = -1;
        }
        fflush(stdout);
        sleep_ms(interval_ms);
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "serve") && argc == 3)
        return serve(argv[2]);
    if (argc >= 2 && !strcmp(argv[1], "ask"))
        return ask(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "hold"))
        return hold(argc - 2, argv + 2);
    usage();
}
