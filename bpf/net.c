/* net receiver: TCP retransmissions and state changes per process and remote endpoint, packet drops
 * with the kernel's drop reason. Aggregated in kernel maps, read at the collection interval.
 *
 * Retransmissions and most drops happen in softirq or timer context, where the current task is not
 * the socket's owner: owners are learned when a selected process is current during a state change
 * (connect, close), and looked up by socket address. Unknown owners are aggregated with tgid 0 and
 * the 4-tuple, for user space to attribute from /proc/PID/net/tcp and the process's socket fds.
 *
 * Defines: HAS_RETRANS_ERR (tcp_retransmit_skb has `err`: count only successful retransmissions, as
 * the kernel's RetransSegs does), HAS_RX_SK (kfree_skb has `rx_sk`).
 */
#include "gotel_ringbuf.h"
#include <net/sock.h> /* struct sock_common, for the raw tcp_retransmit_skb arguments */

/* <net/sock.h> also brings enum skb_drop_reason, the type BCC declares kfree_skb's `reason` with. */

#define IPPROTO_TCP_ 6
#define TCP_CLOSE_ 7

struct conn_key {
    u32 tgid;
    u16 family;
    u16 lport;
    u16 rport;
    u16 state; /* new state for state changes, 0 for retransmissions */
    u8 raddr[16];
    u8 laddr[16];
};

struct drop_key {
    u32 tgid;
    u32 reason;
    u16 protocol;
    u16 pad;
};

BPF_HASH(targets, u32, u8, 4096);
BPF_HASH(owners, u64, u32, 65536); /* socket address -> tgid */
/* Keyed by connection (both ports): user space drains these at every collection (lookup-and-delete)
 * and folds them into per-peer counters, so short connections do not fill the maps. */
BPF_HASH(retrans, struct conn_key, u64, 16384);
BPF_HASH(states, struct conn_key, u64, 16384);
BPF_PERCPU_HASH(drops, struct drop_key, u64, 4096);

/* Retransmissions, most state changes and drops run in softirq or timer context, where the current
 * task is whoever was interrupted: only the owners map names a socket's process. */
static __always_inline u32 owner_of(u64 sk) {
    u32 *o = owners.lookup(&sk);
    return o ? *o : 0;
}

/* A raw tracepoint, not a classic one: the kernel skips a classic tracepoint's program whenever any
 * BPF program or BPF map system call is already running on that CPU (the per-CPU bpf_prog_active
 * guard), and retransmissions run in softirq, which interrupts exactly those. Under load (other agents
 * reading their maps) that lost ~1 in 30 retransmissions (counted in the program's recursion_misses).
 * A raw tracepoint only guards against re-entering this same program. Arguments: (sk, skb[, err]). */
RAW_TRACEPOINT_PROBE(tcp_retransmit_skb) {
#ifdef HAS_RETRANS_ERR
    if ((int)ctx->args[2] != 0)
        return 0;
#endif
    struct sock *sk = (struct sock *)ctx->args[0];
    struct conn_key k = {};
    u16 family = 0, dport = 0, num = 0;
    bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
    bpf_probe_read_kernel(&num, sizeof(num), &sk->__sk_common.skc_num);
    bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
    k.tgid = owner_of((u64)sk);
    k.family = family;
    k.lport = num;             /* host order, as the tracepoint's sport */
    k.rport = ntohs(dport);
    if (family == 2) {
        bpf_probe_read_kernel(k.raddr, 4, &sk->__sk_common.skc_daddr);
        bpf_probe_read_kernel(k.laddr, 4, &sk->__sk_common.skc_rcv_saddr);
    } else {
        bpf_probe_read_kernel(k.raddr, 16, &sk->__sk_common.skc_v6_daddr);
        bpf_probe_read_kernel(k.laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
    }
    u64 zero = 0;
    u64 *c = retrans.lookup_or_try_init(&k, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP_)
        return 0;
    u64 sk = (u64)args->skaddr;
    u32 cur = bpf_get_current_pid_tgid() >> 32;
    /* transitions only a system call makes (connect, listen, close/shutdown): the current task owns it */
    int from_syscall = args->newstate == 2 /* SYN_SENT */ || args->newstate == 10 /* LISTEN */ ||
                       (args->oldstate == 1 && args->newstate == 4) /* ESTABLISHED -> FIN_WAIT1 */ ||
                       (args->oldstate == 8 && args->newstate == 9) /* CLOSE_WAIT -> LAST_ACK */;
    if (from_syscall && targets.lookup(&cur)) {
        u32 *o = owners.lookup(&sk);
        if (!o || *o != cur)
            owners.update(&sk, &cur);
    }
    struct conn_key k = {};
    k.tgid = owner_of(sk);
    k.family = args->family;
    k.lport = args->sport;
    k.rport = args->dport;
    k.state = args->newstate;
    if (args->family == 2) {
        __builtin_memcpy(k.raddr, args->daddr, 4);
        __builtin_memcpy(k.laddr, args->saddr, 4);
    } else {
        __builtin_memcpy(k.raddr, args->daddr_v6, 16);
        __builtin_memcpy(k.laddr, args->saddr_v6, 16);
    }
    u64 zero = 0;
    u64 *c = states.lookup_or_try_init(&k, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);
    if (args->newstate == TCP_CLOSE_)
        owners.delete(&sk);
    return 0;
}

TRACEPOINT_PROBE(skb, kfree_skb) {
    struct drop_key k = {};
#ifdef HAS_RX_SK
    u64 rx = (u64)args->rx_sk;
    if (rx) {
        u32 *o = owners.lookup(&rx);
        if (o)
            k.tgid = *o;
    }
#endif
    k.reason = args->reason;
    k.protocol = args->protocol;
    u64 zero = 0;
    u64 *c = drops.lookup_or_try_init(&k, &zero);
    if (c)
        (*c)++;
    return 0;
}
