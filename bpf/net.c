/* net receiver: TCP retransmissions, state changes, resets, connect latency and failures, and how each
 * connection ended, per process and remote endpoint; packet drops with the kernel's drop reason.
 * Aggregated in kernel maps, read at the collection interval.
 *
 * Retransmissions and most drops happen in softirq or timer context, where the current task is not
 * the socket's owner: owners are learned when a selected process is current during a state change
 * (connect, close), and looked up by socket address. Unknown owners are aggregated with tgid 0 and
 * the 4-tuple, for user space to attribute from /proc/PID/net/tcp and the process's socket fds.
 *
 * Defines: HAS_RETRANS_ERR (tcp_retransmit_skb has `err`: count only successful retransmissions, as
 * the kernel's RetransSegs does), HAS_RX_SK (kfree_skb has `rx_sk`), HAS_RST_REASON and
 * RST_KEEPALIVE (tcp_send_reset has `reason`, and the number of TCP_KEEPALIVE_TIMEOUT in it),
 * HAS_PROBE_SK (tcp_probe has `skaddr`: peer liveness is tracked).
 */
#include "gotel_ringbuf.h"
#include <net/sock.h> /* struct sock_common, for the raw tcp_retransmit_skb arguments */

/* <net/sock.h> also brings enum skb_drop_reason, the type BCC declares kfree_skb's `reason` with. */

#if defined(HAS_RST_REASON) && !defined(_LINUX_RST_REASON_H)
/* BCC declares tcp_send_reset's `reason` as enum sk_rst_reason (<net/rstreason.h>, Linux 6.10), which
 * older header sets lack: a complete enum of the same size is all the struct needs; the values come
 * from the running kernel's format, in user space. */
enum sk_rst_reason { GOTEL_SK_RST_REASON_ANY_ = 0 };
#endif

#define IPPROTO_TCP_ 6
#define TCP_ESTABLISHED_ 1
#define TCP_SYN_SENT_ 2
#define TCP_SYN_RECV_ 3
#define TCP_FIN_WAIT1_ 4
#define TCP_CLOSE_ 7
#define TCP_CLOSE_WAIT_ 8
#define TCP_LISTEN_ 10
#define ECONNREFUSED_ 111

/* how an established connection ended (closes map); user space names them */
#define END_PEER_CLOSE 1
#define END_LOCAL_CLOSE 2
#define END_PEER_RESET 3
#define END_KEEPALIVE_TIMEOUT 4
#define END_ABORT 5

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

/* Local port -> tgid of the selected process listening on it: a connection it accepts (SYN_RECV ->
 * ESTABLISHED, in softirq) is owned from its first state. Ports are not per netns here: two selected
 * processes listening on one port number in two namespaces share an entry (the last one wins). */
BPF_HASH(listeners, u32, u32, 4096);

/* Connect attempts of selected processes, from CLOSE -> SYN_SENT (the connect system call). */
struct connecting_v {
    u64 ts;
    u32 tgid;
    u32 pad;
};
BPF_HASH(connecting, u64, struct connecting_v, 16384); /* deleted at the attempt's end */

/* An attempt that ended SYN_SENT -> CLOSE without a RST waits here for its error, which the kernel
 * reports (inet_sk_error_report: no socket address, only the tuple) right after the state change. An
 * attempt the process itself abandoned (close() while connecting: Go's dial timeout) gets no error:
 * user space collects those once they are older than a second. */
struct tuple_key {
    u16 family;
    u16 lport;
    u16 rport;
    u16 pad;
    u8 raddr[16];
};
struct failed_v {
    u64 dur;
    u64 when;
    u32 tgid;
    u32 pad;
};
BPF_TABLE("lru_hash", struct tuple_key, struct failed_v, failed, 4096);
/* The other order: an ICMP error to a connecting socket is reported before its CLOSE. */
BPF_TABLE("lru_hash", struct tuple_key, s32, early_err, 4096);

/* Connect duration per (process, peer, outcome) in log2 slots of nanoseconds. */
struct connect_key {
    u32 tgid;
    u16 family;
    u16 rport;
    s32 err; /* 0: established; an errno */
    u32 slot;
    u8 raddr[16];
};
struct connect_v {
    u64 count;
    u64 sum_ns;
};
BPF_HASH(connects, struct connect_key, struct connect_v, 16384);

/* RSTs sent and received per connection. tgid 0 and no socket: a reset the kernel sent for no socket
 * (a closed port). */
struct reset_key {
    u32 tgid;
    u16 family;
    u16 lport;
    u16 rport;
    u8 received;
    u8 active;   /* sent by tcp_send_active_reset (no packet provoked it): an abort of ours */
    u16 reason;  /* sk_rst_reason where the kernel has it */
    u16 has_sk;
    u8 raddr[16];
    u8 laddr[16];
};
BPF_HASH(resets, struct reset_key, u64, 16384);

BPF_TABLE("lru_hash", u64, u8, rst_rcvd, 16384);   /* socket got a RST: its coming CLOSE is the peer's reset */
BPF_TABLE("lru_hash", u64, u8, ka_timeout, 16384); /* socket aborted by the keepalive timer */
/* Socket -> retransmissions since the peer last sent a segment (any: data, ACK, keepalive answer).
 * Nonzero when the connection ends: the peer (or the path) had stopped answering. */
BPF_TABLE("lru_hash", u64, u32, unanswered, 16384);

/* How each established connection of a selected process ended, counted once, at its first state
 * out of ESTABLISHED (or SYN_RECV for one reset before it was accepted). */
struct close_key {
    u32 tgid;
    u16 family;
    u16 lport;
    u16 rport;
    u8 cause;
    u8 answering; /* 1: the peer's TCP had answered everything sent; 2: unknown */
    u8 raddr[16];
    u8 laddr[16];
};
BPF_HASH(closes, struct close_key, u64, 16384);

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
#ifdef HAS_PROBE_SK
    if (k.tgid) {
        u64 skk = (u64)sk;
        u32 z32 = 0;
        u32 *u = unanswered.lookup_or_try_init(&skk, &z32);
        if (u)
            __sync_fetch_and_add(u, 1);
    }
#endif
    return 0;
}

#ifdef HAS_PROBE_SK
/* Every segment an established socket receives: the peer's TCP is answering. One hash delete, and
 * only sockets with retransmissions outstanding are in the map. A raw tracepoint (args: sk, skb): the
 * classic one has the kernel format a whole record (addresses, window, srtt) for each segment before
 * the program runs, which cost more than the program. */
RAW_TRACEPOINT_PROBE(tcp_probe) {
    u64 sk = (u64)ctx->args[0];
    unanswered.delete(&sk);
    return 0;
}
#endif

static __always_inline void copy_addr(u8 *dst, u16 family, const u8 *v4, const u8 *v6) {
    if (family == 2)
        __builtin_memcpy(dst, v4, 4);
    else
        __builtin_memcpy(dst, v6, 16);
}

static __always_inline void record_connect(u32 tgid, u16 family, u16 rport, const u8 *raddr, s32 err, u64 dur) {
    struct connect_key ck = {};
    ck.tgid = tgid;
    ck.family = family;
    ck.rport = rport;
    ck.err = err;
    u32 slot = bpf_log2l(dur);
    ck.slot = slot > 39 ? 39 : slot;
    __builtin_memcpy(ck.raddr, raddr, 16);
    struct connect_v zero = {};
    struct connect_v *v = connects.lookup_or_try_init(&ck, &zero);
    if (v) {
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->sum_ns, dur);
    }
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
    int is_target = targets.lookup(&cur) != 0;
    u8 *reset_in = rst_rcvd.lookup(&sk);
    if (from_syscall && is_target) {
        u32 *o = owners.lookup(&sk);
        if (!o || *o != cur)
            owners.update(&sk, &cur);
    }
    if (args->newstate == TCP_LISTEN_ && is_target) {
        u32 lp = args->sport;
        listeners.update(&lp, &cur);
    }
    if (args->oldstate == TCP_SYN_RECV_ && args->newstate == TCP_ESTABLISHED_) {
        u32 lp = args->sport;
        u32 *l = listeners.lookup(&lp);
        if (l)
            owners.update(&sk, l);
    }
    /* an abort from close() (SO_LINGER 0, unread data): the only way to CLOSE from these states in
     * the owner's own system call, and no RST came in */
    if (args->newstate == TCP_CLOSE_ && is_target && !reset_in && !ka_timeout.lookup(&sk) &&
        (args->oldstate == TCP_ESTABLISHED_ || args->oldstate == TCP_CLOSE_WAIT_) && !owners.lookup(&sk))
        owners.update(&sk, &cur);
    struct conn_key k = {};
    k.tgid = owner_of(sk);
    k.family = args->family;
    k.lport = args->sport;
    k.rport = args->dport;
    k.state = args->newstate;
    copy_addr(k.raddr, args->family, args->daddr, args->daddr_v6);
    copy_addr(k.laddr, args->family, args->saddr, args->saddr_v6);
    u64 zero = 0;
    u64 *c = states.lookup_or_try_init(&k, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);

    /* connect latency and outcome */
    if (args->newstate == TCP_SYN_SENT_ && is_target) {
        struct connecting_v cv = {};
        cv.ts = bpf_ktime_get_ns();
        cv.tgid = cur;
        connecting.update(&sk, &cv);
    } else if (args->oldstate == TCP_SYN_SENT_) {
        struct connecting_v *cv = connecting.lookup(&sk);
        if (cv) {
            u64 now = bpf_ktime_get_ns();
            u64 dur = now - cv->ts;
            u32 tgid = cv->tgid;
            connecting.delete(&sk);
            if (args->newstate == TCP_ESTABLISHED_) {
                record_connect(tgid, k.family, k.rport, k.raddr, 0, dur);
            } else if (args->newstate == TCP_CLOSE_ && reset_in) {
                record_connect(tgid, k.family, k.rport, k.raddr, ECONNREFUSED_, dur);
            } else if (args->newstate == TCP_CLOSE_) {
                struct tuple_key tk = {};
                tk.family = k.family;
                tk.lport = k.lport;
                tk.rport = k.rport;
                __builtin_memcpy(tk.raddr, k.raddr, 16);
                s32 *early = early_err.lookup(&tk);
                if (early) {
                    record_connect(tgid, k.family, k.rport, k.raddr, *early, dur);
                    early_err.delete(&tk);
                    goto connect_done;
                }
                struct failed_v fv = {};
                fv.dur = dur;
                fv.when = now;
                fv.tgid = tgid;
                failed.update(&tk, &fv);
            }
        }
    }
connect_done:;

    /* how an established connection ended: at its first state out of ESTABLISHED */
    u8 cause = 0;
    if (args->oldstate == TCP_ESTABLISHED_ || args->oldstate == TCP_SYN_RECV_) {
        if (args->newstate == TCP_CLOSE_WAIT_)
            cause = END_PEER_CLOSE;
        else if (args->newstate == TCP_FIN_WAIT1_)
            cause = END_LOCAL_CLOSE;
        else if (args->newstate == TCP_CLOSE_)
            cause = reset_in ? END_PEER_RESET : ka_timeout.lookup(&sk) ? END_KEEPALIVE_TIMEOUT : END_ABORT;
    }
    if (cause && k.tgid) {
        struct close_key ck = {};
        ck.tgid = k.tgid;
        ck.family = k.family;
        ck.lport = k.lport;
        ck.rport = k.rport;
        ck.cause = cause;
#ifdef HAS_PROBE_SK
        u32 *u = unanswered.lookup(&sk);
        ck.answering = (cause == END_KEEPALIVE_TIMEOUT || (u && *u)) ? 0 : 1;
#else
        ck.answering = cause == END_KEEPALIVE_TIMEOUT ? 0 : 2;
#endif
        __builtin_memcpy(ck.raddr, k.raddr, 16);
        __builtin_memcpy(ck.laddr, k.laddr, 16);
        u64 *n = closes.lookup_or_try_init(&ck, &zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
    if (args->newstate == TCP_CLOSE_) {
        owners.delete(&sk);
        rst_rcvd.delete(&sk);
        ka_timeout.delete(&sk);
        unanswered.delete(&sk);
        connecting.delete(&sk);
    }
    return 0;
}

#ifdef HAS_ERROR_REPORT
/* The error of a connect that ended without a RST (ETIMEDOUT, EHOSTUNREACH, ...), by tuple. */
TRACEPOINT_PROBE(sock, inet_sk_error_report) {
    if (args->protocol != IPPROTO_TCP_)
        return 0;
    struct tuple_key tk = {};
    tk.family = args->family;
    tk.lport = args->sport;
    tk.rport = args->dport;
    copy_addr(tk.raddr, args->family, args->daddr, args->daddr_v6);
    struct failed_v *f = failed.lookup(&tk);
    if (!f) {
        s32 err = args->error;
        if (err)
            early_err.update(&tk, &err);
        return 0;
    }
    record_connect(f->tgid, tk.family, tk.rport, tk.raddr, args->error, f->dur);
    failed.delete(&tk);
    return 0;
}
#endif

/* sockaddr_in / sockaddr_in6 as the reset tracepoint stores them (28 bytes) */
static __always_inline u16 sa_port(const u8 *sa) {
    return ((u16)sa[2] << 8) | sa[3];
}

static __always_inline void sa_addr(u8 *dst, const u8 *sa, u16 family) {
    if (family == 2)
        __builtin_memcpy(dst, sa + 4, 4);
    else
        __builtin_memcpy(dst, sa + 8, 16);
}

TRACEPOINT_PROBE(tcp, tcp_send_reset) {
    u64 sk = (u64)args->skaddr;
    struct reset_key k = {};
    u16 family = 0;
    __builtin_memcpy(&family, args->saddr, 2);
    k.family = family;
    k.lport = sa_port(args->saddr);
    k.rport = sa_port(args->daddr);
    sa_addr(k.laddr, args->saddr, family);
    sa_addr(k.raddr, args->daddr, family);
    k.active = args->skbaddr == 0;
    k.has_sk = sk != 0;
    if (sk)
        k.tgid = owner_of(sk);
    /* an abort by close() (SO_LINGER 0, unread data) sends its RST after the socket went to CLOSE,
     * when its owner entry is gone: the closing system call's process is the owner */
    if (sk && !k.tgid && k.active && args->state == TCP_CLOSE_) {
        u32 cur = bpf_get_current_pid_tgid() >> 32;
        if (targets.lookup(&cur))
            k.tgid = cur;
    }
#ifdef HAS_RST_REASON
    k.reason = args->reason;
    if (sk && args->reason == RST_KEEPALIVE) {
        u8 one = 1;
        ka_timeout.update(&sk, &one);
    }
#endif
    u64 zero = 0;
    u64 *c = resets.lookup_or_try_init(&k, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset) {
    u64 sk = (u64)args->skaddr;
    u8 one = 1;
    rst_rcvd.update(&sk, &one);
    struct reset_key k = {};
    k.tgid = owner_of(sk);
    k.family = args->family;
    k.lport = args->sport;
    k.rport = args->dport;
    k.received = 1;
    k.has_sk = 1;
    copy_addr(k.raddr, args->family, args->daddr, args->daddr_v6);
    copy_addr(k.laddr, args->family, args->saddr, args->saddr_v6);
    u64 zero = 0;
    u64 *c = resets.lookup_or_try_init(&k, &zero);
    if (c)
        __sync_fetch_and_add(c, 1);
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
