/* C-speed helpers for scripts/bench's netpath and peer sections, compiled with gcc at run time.
 *
 * Strategy: Python is too slow to measure microseconds or to feed a daemon 100k packets a second,
 * so the clients, the server and the floods are here. Every mode prints one line of numbers (or
 * one number per connection) that the Python section parses. Floods run closed-loop: at most
 * WINDOW packets are in flight between the sender (in one namespace) and the counter (in another,
 * entered with setns), so the daemon's queue never overflows and what is counted is what the
 * daemon let through.
 *
 *   server PORT EXPECT REPLY            serve forever: read EXPECT bytes, send REPLY bytes (a TLS
 *                                       record's header, then zeros), close
 *   connect ADDR PORT N PAYLOAD REPLY   N sequential connections; prints ns per connection
 *                                       (connect + PAYLOAD file + REPLY bytes back), -1 on failure
 *   hello-flood CLIENT_NS SERVER_NS SRC DST PAYLOAD COUNT WINDOW START
 *                                       IPv4 TCP segments (ACK|PSH) carrying PAYLOAD, each on a new
 *                                       flow (tuple number START..), counted arriving in SERVER_NS
 *   dns-flood SERVER_NS CLIENT_NS SRC DST DPORT TEMPLATE COUNT WINDOW START NAMEOFF ADDROFF
 *                                       UDP answers from SRC:53 to DST:DPORT (after one query the
 *                                       other way, as a resolver would); with NAMEOFF/ADDROFF
 *                                       > 0 an 8-digit counter and a 4-byte address are written
 *                                       there, so every answer teaches a new name
 * floods print: sent received noerror elapsed_ns
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define IDLE_NS 2000000000LL /* a flood ends when nothing has arrived for this long */
#define LIMIT_NS 60000000000LL /* and after this long in any case (it prints what it got) */
#define IO_TIMEOUT_S 3       /* a connection that takes longer failed (a blocked peer drops) */

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    static unsigned char buf[65536];
    *len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

static void enter(const char *ns) {
    char path[256];
    snprintf(path, sizeof path, "/var/run/netns/%s", ns);
    int fd = open(path, O_RDONLY);
    if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) die(path);
    close(fd);
}

static int read_n(int fd, size_t want) {
    char buf[4096];
    size_t got = 0;
    while (got < want) {
        ssize_t r = read(fd, buf, sizeof buf < want - got ? sizeof buf : want - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int server(int argc, char **argv) {
    if (argc != 3) return 2;
    int port = atoi(argv[0]);
    size_t expect = (size_t)atol(argv[1]), reply_len = (size_t)atol(argv[2]);
    char *reply = calloc(1, reply_len + 6);
    /* It begins as a TLS server's first record does (handshake, version 3.3, its length): what the
     * kernel's NETGUARD-CONFIRM test looks for in a real ServerHello. */
    if (reply_len >= 5) {
        reply[0] = 0x16, reply[1] = 0x03, reply[2] = 0x03;
        reply[3] = (char)((reply_len - 5) >> 8), reply[4] = (char)((reply_len - 5) & 0xff);
    }
    int s = socket(AF_INET6, SOCK_STREAM, 0), one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = in6addr_any};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 1024) < 0) die("server");
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {IO_TIMEOUT_S, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (read_n(c, expect) == 0) {
            ssize_t w = write(c, reply, reply_len);
            (void)w;
        }
        close(c); /* the server closes first: TIME_WAIT stays here, client ports stay free */
    }
}

static int connect_loop(int argc, char **argv) {
    if (argc != 5) return 2;
    const char *addr = argv[0];
    int port = atoi(argv[1]), n = atoi(argv[2]), one = 1;
    size_t len, reply_len = (size_t)atol(argv[4]);
    unsigned char *payload = read_file(argv[3], &len);
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (strchr(addr, ':')) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, addr, &a6->sin6_addr);
        sl = sizeof *a6;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, addr, &a4->sin_addr);
        sl = sizeof *a4;
    }
    for (int i = 0; i < n; i++) {
        long long t0 = now_ns(), took = -1;
        int s = socket(ss.ss_family, SOCK_STREAM, 0);
        struct timeval tv = {IO_TIMEOUT_S, 0};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(s, (struct sockaddr *)&ss, sl) == 0 && write(s, payload, len) == (ssize_t)len &&
            read_n(s, reply_len) == 0) {
            took = now_ns() - t0;
            char b[64];
            while (read(s, b, sizeof b) > 0) { /* wait for the server's FIN, outside the timing */
            }
        }
        close(s);
        printf("%lld\n", took);
    }
    return 0;
}

/* One flood packet; 0 when the kernel pushes back (full buffers, a full queue rejecting), so the
   burst ends there and the replies are drained. */
static int send_one(int fd, const void *buf, size_t len, const struct sockaddr_in *to) {
    if (sendto(fd, buf, len, 0, (const struct sockaddr *)to, sizeof *to) >= 0) return 1;
    if (errno == ENOBUFS || errno == EAGAIN || errno == EPERM) return 0;
    die("sendto");
    return 0;
}

static uint16_t csum(const void *data, size_t len, uint32_t sum) {
    const unsigned char *p = data;
    for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1) sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static int hello_flood(int argc, char **argv) {
    if (argc != 8) return 2;
    size_t len;
    unsigned char *payload = read_file(argv[4], &len);
    long count = atol(argv[5]), window = atol(argv[6]), start = atol(argv[7]);
    struct in_addr src, dst;
    inet_pton(AF_INET, argv[2], &src);
    inet_pton(AF_INET, argv[3], &dst);
    enter(argv[0]);
    int tx = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    enter(argv[1]);
    int rx = socket(AF_INET, SOCK_RAW, IPPROTO_TCP);
    if (tx < 0 || rx < 0) die("raw socket");
    int big = 1 << 24;
    setsockopt(rx, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    fcntl(rx, F_SETFL, O_NONBLOCK);
    unsigned char pkt[65536], in[65536];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
    long sent = 0, received = 0;
    long long t0 = now_ns(), last = t0;
    while (received < count) {
        while (sent < count && sent - received < window) {
            long k = start + sent;
            struct iphdr *ip = (struct iphdr *)pkt;
            struct tcphdr *tcp = (struct tcphdr *)(pkt + 20);
            memset(pkt, 0, 40);
            ip->version = 4;
            ip->ihl = 5;
            ip->ttl = 64;
            ip->protocol = IPPROTO_TCP;
            ip->tot_len = htons((uint16_t)(40 + len));
            ip->saddr = src.s_addr;
            ip->daddr = dst.s_addr;
            /* a new flow per packet: 64000 source ports x destination ports 10000.. */
            tcp->source = htons((uint16_t)(1024 + k % 64000));
            tcp->dest = htons((uint16_t)(10000 + (k / 64000) % 50000));
            tcp->seq = htonl((uint32_t)(k * 7919));
            tcp->ack_seq = htonl(1);
            tcp->doff = 5;
            tcp->ack = 1;
            tcp->psh = 1;
            tcp->window = htons(64240);
            memcpy(pkt + 40, payload, len);
            unsigned char pseudo[12];
            memcpy(pseudo, &ip->saddr, 4);
            memcpy(pseudo + 4, &ip->daddr, 4);
            pseudo[8] = 0;
            pseudo[9] = IPPROTO_TCP;
            pseudo[10] = (unsigned char)((20 + len) >> 8);
            pseudo[11] = (unsigned char)((20 + len) & 0xff);
            uint32_t sum = 0;
            for (int i = 0; i < 12; i += 2) sum += (uint32_t)(pseudo[i] << 8 | pseudo[i + 1]);
            tcp->check = htons(csum(pkt + 20, 20 + len, sum));
            if (!send_one(tx, pkt, 40 + len, &to)) break;
            sent++;
        }
        struct pollfd p = {.fd = rx, .events = POLLIN};
        poll(&p, 1, 10);
        for (;;) {
            ssize_t r = recv(rx, in, sizeof in, 0);
            if (r < 0) break;
            struct iphdr *ip = (struct iphdr *)in;
            if (ip->saddr == src.s_addr && (size_t)r >= 40 + len) {
                received++;
                last = now_ns();
            }
        }
        if (now_ns() - last > IDLE_NS || now_ns() - t0 > LIMIT_NS) break;
    }
    printf("%ld %ld %ld %lld\n", sent, received, received, last - t0);
    return 0;
}

static int dns_flood(int argc, char **argv) {
    if (argc != 11) return 2;
    size_t len;
    unsigned char *tmpl = read_file(argv[5], &len);
    unsigned char msg[65536];
    memcpy(msg, tmpl, len);
    long count = atol(argv[6]), window = atol(argv[7]), start = atol(argv[8]);
    long name_off = atol(argv[9]), addr_off = atol(argv[10]);
    int dport = atoi(argv[4]);
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = htons(53)};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)dport)};
    inet_pton(AF_INET, argv[2], &from.sin_addr);
    inet_pton(AF_INET, argv[3], &to.sin_addr);
    enter(argv[0]);
    int tx = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
    setsockopt(tx, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(tx, (struct sockaddr *)&from, sizeof from) < 0) die("bind :53");
    enter(argv[1]);
    int rx = socket(AF_INET, SOCK_DGRAM, 0);
    int big = 1 << 24;
    setsockopt(rx, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    if (bind(rx, (struct sockaddr *)&to, sizeof to) < 0) die("bind receiver");
    /* A query first, so that the answers are the reply direction of a tracked flow, as real
     * answers are (netguard queues only those). */
    unsigned char query[12] = {0x12, 0x34, 0x01, 0x00};
    if (sendto(rx, query, sizeof query, 0, (struct sockaddr *)&from, sizeof from) < 0) die("query");
    fcntl(rx, F_SETFL, O_NONBLOCK);
    long sent = 0, received = 0, noerror = 0;
    long long t0 = now_ns(), last = t0;
    unsigned char in[65536];
    while (received < count) {
        while (sent < count && sent - received < window) {
            long k = start + sent;
            msg[0] = (unsigned char)(k >> 8);
            msg[1] = (unsigned char)k;
            if (name_off > 0) {
                char digits[12];
                snprintf(digits, sizeof digits, "%08ld", labs(k % 100000000));
                memcpy(msg + name_off, digits, 8);
            }
            if (addr_off > 0) {
                uint32_t a = htonl((uint32_t)(0x0a000000 + (k & 0xffffff)));
                memcpy(msg + addr_off, &a, 4);
            }
            if (!send_one(tx, msg, len, &to)) break;
            sent++;
        }
        struct pollfd p = {.fd = rx, .events = POLLIN};
        poll(&p, 1, 10);
        for (;;) {
            ssize_t r = recv(rx, in, sizeof in, 0);
            if (r < 0) break;
            received++;
            if (r >= 4 && (in[3] & 0x0f) == 0) noerror++;
            last = now_ns();
        }
        if (now_ns() - last > IDLE_NS || now_ns() - t0 > LIMIT_NS) break;
    }
    printf("%ld %ld %ld %lld\n", sent, received, noerror, last - t0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    if (!strcmp(argv[1], "server")) return server(argc - 2, argv + 2);
    if (!strcmp(argv[1], "connect")) return connect_loop(argc - 2, argv + 2);
    if (!strcmp(argv[1], "hello-flood")) return hello_flood(argc - 2, argv + 2);
    if (!strcmp(argv[1], "dns-flood")) return dns_flood(argc - 2, argv + 2);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
