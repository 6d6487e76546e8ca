/* The NFQUEUE floor for scripts/bench's netpath section: the least any NFQUEUE consumer can cost.
 *
 * Strategy: bind the queue netguard's rules send to, in the network namespace this process runs in,
 * and give every packet the verdict netguard gives an allowed flow, without reading the packet:
 * NF_REPEAT with the "passed" mark for a DNS answer (INPUT hook) and for a SYN (netguard accepts it
 * undecided), the "allowed" mark for anything else (the first data packet decides the flow). The TCP
 * flags byte is the one thing read, since without it the SYN would decide the flow and the floor would
 * queue one packet per connection where netguard queues two. Same copy mode and queue length as
 * netguard's binding (NetfilterQueue: full copies, 4096 packets).
 *
 *   nfqueue_floor QUEUE MASK ALLOWED PASSED   prints "ready", then serves until killed
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#define QUEUE_MAXLEN 4096 /* as netguard.daemon.nfqueue.QUEUE_MAXLEN */
#define HOOK_LOCAL_IN 1   /* NF_INET_LOCAL_IN: the rules queue DNS answers there */
#define TCP_SYN 0x02

static uint32_t mask, allowed, passed;

static int is_syn(const unsigned char *p, int len) {
    if (len < 1) return 0;
    int version = p[0] >> 4;
    if (version == 4) {
        int ihl = (p[0] & 0x0f) * 4;
        return len > ihl + 13 && p[9] == IPPROTO_TCP && (p[ihl + 13] & TCP_SYN);
    }
    /* IPv6 without extension headers (the bench sends none) */
    return version == 6 && len > 40 + 13 && p[6] == IPPROTO_TCP && (p[40 + 13] & TCP_SYN);
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data) {
    (void)msg;
    (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph) return 0;
    unsigned char *payload;
    int len = nfq_get_payload(nfa, &payload);
    uint32_t verdict_mark = (ph->hook == HOOK_LOCAL_IN || is_syn(payload, len)) ? passed : allowed;
    uint32_t mark = (nfq_get_nfmark(nfa) & ~mask) | verdict_mark;
    return nfq_set_verdict2(qh, ntohl(ph->packet_id), NF_REPEAT, mark, 0, NULL);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s QUEUE MASK ALLOWED PASSED\n", argv[0]);
        return 2;
    }
    uint16_t queue = (uint16_t)strtoul(argv[1], NULL, 0);
    mask = (uint32_t)strtoul(argv[2], NULL, 0);
    allowed = (uint32_t)strtoul(argv[3], NULL, 0);
    passed = (uint32_t)strtoul(argv[4], NULL, 0);
    struct nfq_handle *h = nfq_open();
    if (!h) {
        perror("nfq_open");
        return 1;
    }
    struct nfq_q_handle *qh = nfq_create_queue(h, queue, on_packet, NULL);
    if (!qh || nfq_set_mode(qh, NFQNL_COPY_PACKET, 0xffff) < 0 || nfq_set_queue_maxlen(qh, QUEUE_MAXLEN) < 0) {
        perror("nfq_create_queue");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    int fd = nfq_fd(h);
    static char buf[65536 + 4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n >= 0) {
            nfq_handle_packet(h, buf, (int)n);
        } else if (errno != ENOBUFS && errno != EINTR) {
            perror("recv");
            return 1;
        }
    }
}
