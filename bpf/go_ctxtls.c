/* go_ctxtls: context leaks and TLS handshakes from uprobes on Go's context and crypto/tls packages
 * (receivers/go_ebpf/below.py loads it beside go_ebpf.c; issue 19).
 *
 * Contexts. A probe at the entry of propagateCancel (every WithCancel / WithDeadline / WithTimeout /
 * WithCancelCause context passes there once) records the new context in ctx_live with its creating call
 * site: the first return address outside the context package, found by walking frame pointers
 * (WithTimeout -> WithDeadline -> WithDeadlineCause all stay inside it). A probe at the entry of every
 * closure of the constructors reads the context the closure captured (the cancel funcs capture only it):
 * found, the cancel func was called, and the entry goes. An entry found again at creation time means the
 * old context was freed by the GC (its address is reused) without its cancel func ever being called: a
 * leak, counted here at once.
 * User space counts entries older than a threshold as leaks and removes them. Per-site counts are
 * per-CPU (no atomics on the hot path).
 * Sampled mode (a ctx_windows entry for the process): the creation probe alone, attached by user space
 * for short windows (receivers/go_ebpf/ctxsample.py); only contexts created inside [open_ns, close_ns)
 * are counted, one in `every` of them tracked with the parent it will hold (a guard against reuse of its
 * memory); user space reads each tracked context's err field to tell whether it was canceled.
 *
 * TLS. Entry and RETs of crypto/tls.(*Conn).clientHandshake / serverHandshake (they run only for a real
 * handshake, unlike handshakeContext, which every Read passes): duration, the returned error's itab, one
 * two levels of wrapping undone (permanentError, CertificateVerificationError, net.OpError, fmt.wrapError:
 * their Error methods and the offset of the wrapped error come per binary), the first bytes of the final error value (an
 * x509.CertificateInvalidError's Reason, an alert's byte) and the message of an *errors.errorString;
 * negotiated version and cipher on success; the peer address from the *net.TCPConn under the tls.Conn.
 * User space names the error (receivers/go_ebpf/tls.py). */
#include "gotel_go.h"
#include "gotel_ringbuf.h"

/* gotel_go_offsets indices: keep in sync with receivers/go_ebpf/below.py OFFSETS */
#define C_CTX_LO 0          /* the context package's text range [lo, hi) */
#define C_CTX_HI 1
#define C_TLS_CONN 2        /* crypto/tls.Conn.conn (net.Conn) */
#define C_TLS_VERS 3        /* crypto/tls.Conn.vers (uint16) */
#define C_TLS_CIPHER 4      /* crypto/tls.Conn.cipherSuite (uint16) */
#define C_TCP_LOCALADDR 5   /* net.(*TCPConn).LocalAddr: fun[1] of a *net.TCPConn's net.Conn itab */
#define C_TCPCONN_FD 6      /* net.TCPConn.conn.fd */
#define C_NETFD_RADDR 7
#define C_TCPADDR_IP 8
#define C_TCPADDR_PORT 9
#define C_ERR_ERRSTR 10     /* errors.(*errorString).Error */
#define C_WRAP_ERR 11       /* the Error methods of N_WRAP wrapping errors ... */
#define C_WRAP_OFF 17       /* ... and the offset of the error each wraps */
#define C_CTX_CHILD_SI 23   /* 1: propagateCancel is a method, child in si (Go >= 1.21); else di */
#define C_CTX_REENTRY 24    /* 1: the created probe can run twice for one call (Go <= 1.20 prologue) */
#define C_AFTERFUNC_LO 25   /* context.AfterFunc's code: its propagateCancel makes no cancel func */
#define C_AFTERFUNC_HI 26
#define N_WRAP 6
#define UNWRAP_DEPTH 2      /* permanentError{net.OpError{alert}}: a remote alert */

#ifndef CTX_MAX
#define CTX_MAX 131072
#endif

#define K_TLS 1
#define barrier_var(v) asm volatile("" : "+r"(v))

struct ctx_key {
    u32 tgid;
    u32 pad;
    u64 fn;        /* the context: *cancelCtx, or *timerCtx (whose cancelCtx is its first field) */
};
struct ctx_val {
    u64 site;      /* return address in the creating function */
    u64 born_ns;
    u64 g;         /* the creating goroutine */
    u64 parent[2]; /* sampled: the parent Context (itab, data), which the context's first field holds */
    u64 weight;    /* sampled: the contexts this one stands for in its window; 0: exact mode */
};
struct ctx_window {
    u64 open_ns;   /* CLOCK_MONOTONIC: contexts created in [open_ns, close_ns) are counted */
    u64 close_ns;
    u64 seen;      /* contexts created in the window so far */
    u64 every;     /* track one in `every` of them (user space sets it from the last window's rate) */
};
struct site_key {
    u32 tgid;
    u32 pad;
    u64 site;
};
struct site_val {
    u64 created;
    u64 canceled;
    u64 freed_uncanceled;  /* address reused: the GC freed it, cancel never called */
};
BPF_HASH(ctx_live, struct ctx_key, struct ctx_val, CTX_MAX);
BPF_PERCPU_HASH(ctx_sites, struct site_key, struct site_val, 16384);
BPF_HASH(ctx_windows, u32, struct ctx_window, 4096);  /* tgid -> its current window (sampled mode) */
/* 0: contexts not tracked (ctx_live full); 1: sites not counted (ctx_sites full); 2: sampled contexts
 * whose memory came back from a constructor before user space read it (their end unknown, dropped) */
BPF_PERCPU_ARRAY(ctx_untracked, u64, 3);

static __always_inline void ctx_miss(int i) {
    u64 *v = ctx_untracked.lookup(&i);
    if (v)
        (*v)++;
}

static __always_inline struct site_val *site_of(u32 tgid, u64 site) {
    struct site_key k = {.tgid = tgid, .site = site};
    struct site_val *v = ctx_sites.lookup(&k);
    if (v)
        return v;
    struct site_val z = {};
    ctx_sites.update(&k, &z);  /* BPF_ANY: a racing CPU's insert is kept or replaced by zeros (its slot) */
    v = ctx_sites.lookup(&k);
    if (!v)
        ctx_miss(1);
    return v;
}

/* Entry of context.propagateCancel (Go < 1.21: a function, child in di) or (*cancelCtx).propagateCancel
 * (a method, child in si): every WithCancel / WithDeadline / WithTimeout / WithCancelCause context passes
 * there once, its *cancelCtx or *timerCtx as `child`. Entry probes, because a uprobe on a RET is
 * single-stepped (~12 us in a VM) and one on a prologue instruction is emulated. */
int ctx_created(struct pt_regs *ctx) {
    struct gotel_go_proc *p = gotel_go_current();
    if (!p)
        return 0;
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 now = bpf_ktime_get_ns(), weight = 0;
    struct ctx_window *w = ctx_windows.lookup(&tgid);
    if (w) {  /* sampled: outside its window a probe still attached (or not yet open) counts nothing */
        if (now < w->open_ns || now >= w->close_ns)
            return 0;
        weight = w->every ? w->every : 1;
    }
    u64 si = ctx->si, di = ctx->di;  /* both read: the verifier allows no computed offset into pt_regs */
    barrier_var(si);
    bool method = o->off[C_CTX_CHILD_SI] == 1;
    u64 child = method ? si : di;
    if (!child)
        return 0;
    u64 lo = o->off[C_CTX_LO], hi = o->off[C_CTX_HI];
    u64 pc = 0, fp = ctx->bp;
    bpf_probe_read_user(&pc, 8, (void *)ctx->sp);  /* at entry: the return address into the constructor */
    if (pc >= o->off[C_AFTERFUNC_LO] && pc < o->off[C_AFTERFUNC_HI])
        return 0;  /* context.AfterFunc: no cancel func to call */
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (pc < lo || pc >= hi)
            break;
        u64 frame[2] = {};
        if (bpf_probe_read_user(frame, 16, (void *)fp) < 0)
            break;
        fp = frame[0];
        pc = frame[1];
    }
    struct ctx_key k = {.tgid = tgid, .fn = child};
    struct ctx_val v = {.site = pc, .born_ns = now, .g = GO_GOROUTINE(ctx)};
    struct ctx_val *old = ctx_live.lookup(&k);
    if (old) {
        /* Go <= 1.20: the probe sits on the stack check's jump, which runs again after morestack */
        if (o->off[C_CTX_REENTRY] == 1 && old->site == pc && old->g == v.g && v.born_ns - old->born_ns < 1000000)
            return 0;
        if (old->weight) {
            /* sampled: freed and reused before user space read it; canceled or not, nobody knows */
            ctx_miss(2);
        } else {
            /* exact: the memory was freed and reused, and its cancel func was never called */
            struct site_val *os = site_of(tgid, old->site);
            if (os)
                __sync_fetch_and_add(&os->freed_uncanceled, 1);
        }
    }
    if (weight) {
        struct site_val *s = site_of(tgid, pc);
        if (s)
            s->created++;  /* per-CPU */
        if (__sync_fetch_and_add(&w->seen, 1) % weight) {
            if (old)
                ctx_live.delete(&k);  /* the entry would name a context that no longer exists */
            return 0;
        }
        v.weight = weight;
        /* (c *cancelCtx).propagateCancel(parent Context, child canceler): c ax, parent bx cx; before Go 1.21
         * propagateCancel(parent Context, child canceler): parent ax bx. All read, as above. */
        u64 ax = ctx->ax, bx = ctx->bx, cx = ctx->cx;
        barrier_var(ax);
        barrier_var(bx);
        barrier_var(cx);
        v.parent[0] = method ? bx : ax;
        v.parent[1] = method ? cx : bx;
        if (ctx_live.update(&k, &v) < 0)
            ctx_miss(0);
        return 0;
    }
    if (ctx_live.update(&k, &v) < 0) {
        ctx_miss(0);
        return 0;
    }
    struct site_val *s = site_of(tgid, pc);
    if (s)
        __sync_fetch_and_add(&s->created, 1);
    return 0;
}

/* Entry of every closure of the constructors: the cancel funcs capture the context first (dx is Go's
 * closure context register: {fn, c, ...}) */
int ctx_cancel(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 c = 0;
    if (bpf_probe_read_user(&c, 8, (void *)(ctx->dx + 8)) < 0 || !c)
        return 0;
    struct ctx_key k = {.tgid = tgid, .fn = c};
    struct ctx_val *v = ctx_live.lookup(&k);
    if (!v)
        return 0;  /* not tracked: called twice, a timer's closure, or created before tracing began */
    struct site_val *s = site_of(tgid, v->site);
    if (s)
        __sync_fetch_and_add(&s->canceled, 1);
    ctx_live.delete(&k);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- TLS */

#define MSG_LEN 128
#define DETAIL_LEN 32

struct tls_ev {
    u32 kind;
    u32 pid;
    u64 start_ns;
    u64 end_ns;
    u64 goroutine;
    u64 outer_fn;      /* the returned error's Error method (its itab's fun[0]): its dynamic type */
    u64 final_fn;      /* ... and that of the error it wraps (once or twice), else the same */
    u8 side;       /* 1 client, 2 server */
    u8 unwrapped;  /* final_itab is the error the outer one wraps */
    u16 vers;
    u16 cipher;
    u16 rport;
    u8 rip[16];
    u8 riplen;
    u8 pad[7];
    u8 detail[DETAIL_LEN];
    char msg[MSG_LEN];
};

struct hs_start {
    u64 start_ns;
    u64 conn;
};

GOTEL_RINGBUF(ctxtls_events, RINGBUF_PAGES);
BPF_HASH(tls_started, struct gotel_go_key, struct hs_start, 16384);

static __always_inline int tls_begin(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    struct gotel_go_key k = gotel_go_key_of(ctx);
    struct hs_start s = {.start_ns = bpf_ktime_get_ns(), .conn = GO_PARAM1(ctx)};
    tls_started.update(&k, &s);
    return 0;
}

int tls_client_start(struct pt_regs *ctx) { return tls_begin(ctx); }
int tls_server_start(struct pt_regs *ctx) { return tls_begin(ctx); }

static __always_inline u64 rd(u64 addr) {
    u64 v = 0;
    if (addr)
        bpf_probe_read_user(&v, 8, (void *)addr);
    return v;
}

static __always_inline void tls_peer(struct gotel_go_offsets *o, struct tls_ev *e, u64 conn) {
    u64 oc = o->off[C_TLS_CONN];
    if (oc == GOTEL_GO_OFFSET_UNKNOWN || o->off[C_TCPCONN_FD] == GOTEL_GO_OFFSET_UNKNOWN ||
        o->off[C_NETFD_RADDR] == GOTEL_GO_OFFSET_UNKNOWN || o->off[C_TCPADDR_IP] == GOTEL_GO_OFFSET_UNKNOWN ||
        o->off[C_TCPADDR_PORT] == GOTEL_GO_OFFSET_UNKNOWN)
        return;
    u64 nc[2] = {};
    if (bpf_probe_read_user(nc, 16, (void *)(conn + oc)) < 0 || !nc[0] || rd(nc[0] + 32) != o->off[C_TCP_LOCALADDR])
        return;  /* not a *net.TCPConn (a test pipe, a wrapped conn): no peer */
    u64 fd = rd(nc[1] + o->off[C_TCPCONN_FD]);
    if (!fd)
        return;
    u64 ra[2] = {};
    if (bpf_probe_read_user(ra, 16, (void *)(fd + o->off[C_NETFD_RADDR])) < 0 || !ra[1])
        return;
    u64 ip[2] = {};  /* IP []byte: ptr, len */
    if (bpf_probe_read_user(ip, 16, (void *)(ra[1] + o->off[C_TCPADDR_IP])) < 0)
        return;
    u64 port = rd(ra[1] + o->off[C_TCPADDR_PORT]);
    u64 n = ip[1];
    if (n != 4 && n != 16)
        return;
    if (bpf_probe_read_user(e->rip, n & 31, (void *)ip[0]) < 0)
        return;
    e->riplen = n;
    e->rport = port;
}

static __always_inline int tls_end(struct pt_regs *ctx, u8 side) {
    struct gotel_go_proc *p = gotel_go_current();
    if (!p)
        return 0;
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return 0;
    struct gotel_go_key k = gotel_go_key_of(ctx);
    struct hs_start *s = tls_started.lookup(&k);
    if (!s)
        return 0;
    struct hs_start st = *s;
    tls_started.delete(&k);
    struct tls_ev *e = gotel_reserved(ctxtls_events.ringbuf_reserve(sizeof(struct tls_ev)));
    if (!e)
        return 0;
    __builtin_memset(e, 0, sizeof(*e));
    e->kind = K_TLS;
    e->pid = k.tgid;
    e->start_ns = st.start_ns;
    e->end_ns = bpf_ktime_get_ns();
    e->goroutine = k.goroutine;
    e->side = side;
    /* errors are told apart by their Error method (fun[0] of an error or net.Error itab), not by itab:
     * itabs made at run time (a type assertion to net.Error, as permanentError holds) have no symbol, and
     * Go >= 1.27 names none; the method is a function, in the symbol table or the pclntab */
    u64 tab = GO_PARAM1(ctx), data = GO_PARAM2(ctx);
    if (tab) {
        u64 typ = rd(tab + 24);
        e->outer_fn = typ;
        e->final_fn = typ;
#pragma unroll
        for (int d = 0; d < UNWRAP_DEPTH; d++) {
            bool found = false;
#pragma unroll
            for (int i = 0; i < N_WRAP; i++) {
                if (!found && o->off[C_WRAP_ERR + i] == typ && o->off[C_WRAP_OFF + i] != GOTEL_GO_OFFSET_UNKNOWN) {
                    found = true;
                    u64 in[2] = {};
                    if (data && bpf_probe_read_user(in, 16, (void *)(data + o->off[C_WRAP_OFF + i])) == 0 && in[0]) {
                        typ = rd(in[0] + 24);
                        data = in[1];
                        e->final_fn = typ;
                        e->unwrapped = d + 1;
                    }
                }
            }
            if (!found)
                break;
        }
        if (data)
            bpf_probe_read_user(e->detail, DETAIL_LEN, (void *)data);
        u64 at = typ == o->off[C_ERR_ERRSTR] ? data : e->outer_fn == o->off[C_ERR_ERRSTR] ? GO_PARAM2(ctx) : 0;
        u64 str[2] = {};  /* errorString{s string}: the final one's, else the outer one's */
        if (at && bpf_probe_read_user(str, 16, (void *)at) == 0)
            gotel_go_read_str(e->msg, MSG_LEN, str[0], str[1]);
    } else if (st.conn) {
        u16 v = 0, c = 0;
        if (o->off[C_TLS_VERS] != GOTEL_GO_OFFSET_UNKNOWN)
            bpf_probe_read_user(&v, 2, (void *)(st.conn + o->off[C_TLS_VERS]));
        if (o->off[C_TLS_CIPHER] != GOTEL_GO_OFFSET_UNKNOWN)
            bpf_probe_read_user(&c, 2, (void *)(st.conn + o->off[C_TLS_CIPHER]));
        e->vers = v;
        e->cipher = c;
    }
    if (st.conn)
        tls_peer(o, e, st.conn);
    ctxtls_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}

int tls_client_end(struct pt_regs *ctx) { return tls_end(ctx, 1); }
int tls_server_end(struct pt_regs *ctx) { return tls_end(ctx, 2); }
