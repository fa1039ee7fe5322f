/* go_ebpf: gRPC and net/http spans from uprobes on Go functions (receivers/go_ebpf).
 *
 * Entry probes and probes on every RET (never uretprobes). Requests are paired by (pid, goroutine) or by
 * the gRPC clientStream pointer; struct offsets and code addresses come per binary from
 * gotel_go_offsets (DWARF + symbol table, filled by user space; GOTEL_GO_OFFSET_UNKNOWN when unknown, and
 * then the field is simply not read). One finished request = one ring-buffer record, submitted without a
 * wake-up. Trace ids here are local: user space continues incoming traceparents and stitches client and
 * server spans of traced processes (receivers/go_ebpf/events.py). At a call's end its RED metrics are
 * added to go_red and the sampling decision is made (call_done); only kept calls reach the ring buffer. */
#include "gotel_go.h"
#include "gotel_ringbuf.h"

/* offsets table indices: keep in sync with receivers/go_ebpf/layout.py (tests/unit/go_ebpf/test_record_layout.py
 * checks every slot, flag and type value against the Python) */
#define O_STREAM_METHOD 0
#define O_STREAM_ID 1
#define O_STREAM_CTX 2
#define O_H2S_REMOTE 3
#define O_H2S_LOCAL 4
#define O_TCPADDR_IP 5
#define O_TCPADDR_PORT 6
#define O_STATUS_S 7
#define O_SPB_CODE 8
#define O_SPB_MSG 9
#define O_ERROR_E 10
#define O_CS_ATTEMPT 11
#define O_ATT_T 12
#define O_ATT_S 13
#define O_H2C_REMOTE 14
#define O_H2C_LOCAL 15
#define O_TIMERCTX_DEADLINE 16
#define A_TIMERCTX_VALUE 17
#define A_VALUECTX_VALUE 18
#define A_CANCELCTX_VALUE 19
#define A_STATUSERR_ERROR 20
#define A_IOEOF 21
#define O_MHF_FIELDS 22
#define O_FH_STREAMID 23
#define O_HF_SIZE 24
#define O_HF_VALUE 25
#define O_REQ_METHOD 26
#define O_REQ_URL 27
#define O_URL_PATH 28
#define O_REQ_REMOTEADDR 29
#define O_REQ_HOST 30
#define O_RESP_STATUS 31
#define O_REQ_PATTERN 32
#define O_URL_SCHEME 33
#define O_URL_HOST 34
#define O_RESPONSE_STATUSCODE 35
#define O_CS_CTX 36
#define O_CS_CALLHDR 37
#define O_CALLHDR_METHOD 38
#define O_CS_BEGINTIME 39
#define O_G_M 40
#define O_M_CURG 41
/* grpc-go eras (issue 14): appended block, see layout.py */
#define O_SS_STREAM 42   /* ServerStream.Stream (grpc >= 1.69) */
#define O_CLS_STREAM 43  /* ClientStream.Stream (grpc >= 1.69) */
#define O_ATT_BEGINTIME 44  /* csAttempt.beginTime (grpc >= 1.58: no longer in clientStream) */
/* ---- HTTP hops (issue 22): offsets from slot H_BASE (receivers/go_ebpf/layout.py HTTP_OFFSETS) ---- */
#define H_BASE 64
#define H_RESP_CONN (H_BASE + 0)        /* net/http.response.conn */
#define H_CONN_RWC (H_BASE + 1)         /* net/http.conn.rwc (net.Conn) */
#define H_PC_CONN (H_BASE + 2)          /* net/http.persistConn.conn (net.Conn) */
#define H_PC_NWRITE (H_BASE + 3)        /* net/http.persistConn.nwrite */
#define H_TCPCONN_FD (H_BASE + 4)       /* net.TCPConn.conn.fd */
#define H_NETFD_LADDR (H_BASE + 5)
#define H_NETFD_RADDR (H_BASE + 6)
#define H_TLS_CONN (H_BASE + 7)         /* crypto/tls.Conn.conn (net.Conn) */
#define HA_TLS_LOCALADDR (H_BASE + 8)   /* crypto/tls.(*Conn).LocalAddr: a net.Conn itab's fun[1] */
#define HA_TCP_LOCALADDR (H_BASE + 9)   /* net.(*TCPConn).LocalAddr */
#define HA_RESP_HEADER (H_BASE + 10)    /* net/http.(*response).Header: an HTTP/1 ResponseWriter itab's fun[0] */
#define H_REQ_HEADER (H_BASE + 11)      /* net/http.Request.Header */
#define H_MAP_A (H_BASE + 12)           /* classic: hmap.B; swiss: Map.dirLen */
#define H_MAP_B (H_BASE + 13)           /* classic: hmap.buckets; swiss: Map.dirPtr */
#define H_MAP_C (H_BASE + 14)           /* classic: hmap.oldbuckets; swiss: table.groups */
#define H_MAP_D (H_BASE + 15)           /* classic: bucket.keys; swiss: group.slots */
#define H_MAP_E (H_BASE + 16)           /* classic: bucket.elems; swiss: slot size */
#define H_MAP_F (H_BASE + 17)           /* classic: bucket size; swiss: group size */
#define HA_H2RW_HEADER (H_BASE + 18)    /* (*http2responseWriter).Header: an HTTP/2 ResponseWriter itab's fun[0] */
#define H_H2RW_RWS (H_BASE + 19)
#define H_H2RWS_STREAM (H_BASE + 20)
#define H_H2RWS_STATUS (H_BASE + 21)
#define H_H2ST_ID (H_BASE + 22)
#define H_H2ST_SC (H_BASE + 23)
#define H_H2SC_CONN (H_BASE + 24)
#define H_H2REQ_HEADER (H_BASE + 25)    /* the Header of the request encodeAndWriteHeaders gets */
#define H_H2CS_ID (H_BASE + 26)
#define H_H2CS_CC (H_BASE + 27)
#define H_H2CC_TCONN (H_BASE + 28)
/* golang.org/x/net/http2 used directly: its own types (responseWriter.rws is at 0, checked in layout.py) */
#define HX_RWS_STREAM (H_BASE + 29)
#define HX_RWS_STATUS (H_BASE + 30)
#define HX_ST_ID (H_BASE + 31)
#define HX_SC_CONN (H_BASE + 32)
#define HX_CS_ID (H_BASE + 33)
#define HX_CS_CC (H_BASE + 34)
#define HX_CC_TCONN (H_BASE + 35)
#define HA_H2C_BUFCONN 122  /* h2c.(*bufConn).LocalAddr: h2c's net.Conn wrapper (its net.Conn at 0); after the flow block */
#define H_PC_BW 123        /* traceparent injection (INJECT_TP): net/http.persistConn.bw (*bufio.Writer) */
#define H_BW_BUF 124       /* bufio.Writer.buf ([]byte) */
#define H_BW_N 125         /* bufio.Writer.n */
#define H_TREQ_REQ 126     /* net/http.transportRequest.Request (*Request, embedded) */
#define XNET_CLIENT 1  /* gev.obj of an HTTP client span begun at x/net's (*Transport).roundTripOpt */
#define F_HTTP_SWISS_MAP (1 << 16)      /* gotel_go_proc.flags: http.Header is a swiss-table map (Go >= 1.24) */
/* event flags */
#define E_HTTP_CONN (1 << 16)  /* HTTP: addresses set, stream_id = the request's order on its HTTP/1 connection or its HTTP/2 stream id */
#define E_HTTP2 (1 << 17)
#define E_HTTP_TP (1 << 18)    /* the request has a traceparent header (an HTTP server's in in_tp) */
#define E_HTTP_TS (1 << 19)    /* and a tracestate header: in http_ts while the call runs, after the record in the ring */
#define TS_LEN 96
/* ---- end of the HTTP hops block */

/* written by the BPF side, not user space (which leaves them GOTEL_GO_OFFSET_UNKNOWN): the itab of
 * context.Context for *timerCtx, *valueCtx and *cancelCtx in this binary, once a walk has recognised it
 * (in the order of A_TIMERCTX_VALUE, A_VALUECTX_VALUE, A_CANCELCTX_VALUE: ctx_kind indexes both) */
#define L_ITAB_TIMER (GOTEL_GO_MAX_OFFSETS - 3)
#define L_ITAB_VALUE (GOTEL_GO_MAX_OFFSETS - 2)
#define L_ITAB_CANCEL (GOTEL_GO_MAX_OFFSETS - 1)

/* gotel_go_proc.flags */
#define F_ERROR_VIA_STATUS 1   /* status.Error{s *Status} (newer grpc) instead of {e *spb.Status} */
#define F_NEWPROC1_GO117 2     /* callergp is newproc1's 4th argument */
#define F_OPHDR_CTX 4          /* operateHeaders(ctx, frame, ...) (grpc >= 1.60) */
/* grpc-go eras (issue 14): high bits, see layout.py */
#define F_SS_STREAM_PTR (1 << 8)   /* ServerStream embeds *Stream (1.69-1.76), else Stream (1.77+) */
#define F_CLS_STREAM_PTR (1 << 9)  /* ClientStream embeds *Stream (1.69-1.76), else Stream (1.77+) */

#define T_GRPC_SERVER 1
#define T_GRPC_CLIENT 2
#define T_HTTP_SERVER 3
#define T_HTTP_CLIENT 4

/* event flags */
#define E_DEADLINE 1
#define E_STATUS 2       /* code/message read from a status */
#define E_NONSTATUS_ERR 4 /* an error that is not a gRPC status */
#define E_TRACEPARENT 8
#define E_PARENT 16
#define E_ADDR 32
#define E_NO_OFFSETS 64  /* the binary lacks DWARF: attributes needing offsets were not read */
#define E_STREAM_ID 128
#define E_BEGIN_WALL 256 /* start missed (call began before the pid was traced): aux/obj hold clientStream.beginTime */
#define E_SAMPLED_TP (1 << 24) /* sampling: an incoming traceparent (of this call or the call it serves) said sampled */

#define STR_LEN 96
#define TP_LEN 56
#define PEER_LEN 64  /* a TCP address as Go prints it: at most "[" 39 "%" zone (15) "]:65535", 63 characters */

/* A call in progress (srv_ongoing, cli_start, cli_streams) and the ring record of a finished one. Fields a
 * type does not use share storage: a gRPC record is the first GEV_GRPC_SIZE bytes (all its RED key and
 * span strings), an HTTP record all of it, followed in the ring by TS_LEN bytes of tracestate when
 * E_HTTP_TS says so. receivers/go_ebpf/events.py GRPC_RECORD / HTTP_SERVER_RECORD / HTTP_CLIENT_RECORD
 * decode it (tests/unit/go_ebpf/test_record_layout.py checks both sides). */
struct gev {
    u64 start_ns;
    u64 end_ns;
    u32 pid;
    u32 type;
    u64 span_id;
    u64 parent_span_id;
    u64 trace_hi;
    u64 trace_lo;
    u64 dl_wall;
    s64 dl_ext;
    s32 code;
    u32 flags;
    u32 stream_id;
    u16 lport;
    u16 rport;
    u8 lip[16];
    u8 rip[16];
    u8 liplen;
    u8 riplen;
    u8 pad[6];
    u64 obj;           /* stream / clientStream / response pointer (pairing) */
    u64 aux;           /* transport pointer (server) */
    char method[STR_LEN];      /* gRPC: the full method; HTTP: the request method */
    union {
        char msg[STR_LEN];     /* gRPC: the status message */
        char path[STR_LEN];    /* HTTP server: the URL path, then the route pattern (E_STREAM_ID) */
        char host[STR_LEN];    /* HTTP client: the URL's host[:port] */
    };
    union {
        char tp[TP_LEN];       /* gRPC server: the incoming traceparent */
        char req_host[TP_LEN]; /* HTTP server: the Host header */
        char scheme[TP_LEN];   /* HTTP client: the URL scheme */
    };
    /* ---- HTTP only: a gRPC record ends here */
    union {
        struct {
            char in_tp[TP_LEN];   /* HTTP server: the incoming traceparent header (E_HTTP_TP) */
            char peer[PEER_LEN];  /* HTTP server: Request.RemoteAddr ("ip:port" of the peer) */
        };
        char url_path[STR_LEN];   /* HTTP client: the URL path */
    };
};
#define GEV_GRPC_SIZE 392
_Static_assert(GEV_GRPC_SIZE == __builtin_offsetof(struct gev, in_tp), "GEV_GRPC_SIZE: where gRPC records end");

struct tp_key {
    u32 tgid;
    u32 stream_id;
    u64 transport;
};

struct tp_val {
    char tp[TP_LEN];
};

GOTEL_RINGBUF(go_events, RINGBUF_PAGES);
/* Uprobe programs are preemptible on recent kernels (migrate_disable, not preempt_disable), so a per-CPU
 * scratch buffer could be shared by two programs interleaved on one CPU. Records are therefore built in
 * place in their own map slot (or ring-buffer reservation), starting from this never-written zero value. */
BPF_ARRAY(zero_gev, struct gev, 1);
/* an HTTP call's tracestate header (rare: not in every record), by (tgid, span id) until the call ends */
struct ts_val {
    char ts[TS_LEN];
};
BPF_TABLE("lru_hash", struct gotel_go_key, struct ts_val, http_ts, 4096);
/* a gRPC connection's addresses, by (tgid, *http2Server or *http2Client); `ident` tells a reused transport address apart */
struct conn_addr {
    u64 ident[2];  /* the remote and local *net.TCPAddr pointers */
    u16 lport;
    u16 rport;
    u8 lip[16];
    u8 rip[16];
    u8 liplen;
    u8 riplen;
};
BPF_TABLE("lru_hash", struct gotel_go_key, struct conn_addr, srv_conn_addr, 4096);
BPF_HASH(srv_ongoing, struct gotel_go_key, struct gev, 16384);   /* grpc + http servers, by goroutine */
BPF_HASH(cli_start, struct gotel_go_key, struct gev, 16384);     /* client call entered, by goroutine */
BPF_HASH(cli_streams, struct gotel_go_key, struct gev, 32768);  /* grpc client stream, by clientStream (not LRU: LRU maps evict early) */
/* goroutine -> the goroutine serving the call it was started under (by that goroutine or any of its
 * descendants), and that call's span id: a descendant's calls are children of that call while it lasts */
struct go_anc {
    u64 g;
    u64 span_id;
};
BPF_TABLE("lru_hash", struct gotel_go_key, struct go_anc, go_parent, 65536);
BPF_HASH(newproc_caller, u64, u64, 1024);                        /* thread -> callergp during newproc1 */
BPF_TABLE("lru_hash", struct tp_key, struct tp_val, incoming_tp, 16384);  /* traceparent by (transport, stream id) */
BPF_PERCPU_ARRAY(tp_scratch, struct tp_val, 1);
BPF_TABLE("lru_hash", struct gotel_go_key, u8, cli_done, 16384);
/* 0: client finish without a recorded start (span lost, counted) */
/* 1: a call whose goroutine ended before its end was seen (span lost, counted) */
BPF_PERCPU_ARRAY(go_unmatched, u64, 2);
static __always_inline void unmatched_inc(int i) { u64 *v = go_unmatched.lookup(&i); if (v) (*v)++; }  /* clientStreams already finished */

#define barrier_var(v) asm volatile("" : "+r"(v))
#define KNOWN(o) ((o) != GOTEL_GO_OFFSET_UNKNOWN)

static __always_inline u64 rd64(u64 addr) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}


static __always_inline void read_str_at(char *dst, u32 size, u64 base, u64 off) {
    if (!base || !KNOWN(off))
        return;
    u64 s[2] = {};
    if (bpf_probe_read_user(s, sizeof(s), (void *)(base + off)) < 0) {
        gotel_count_lost(GOTEL_LOST_READ);
        return;
    }
    gotel_go_read_str(dst, size, s[0], s[1]);
}

/* Walks a context.Context chain (valueCtx/cancelCtx/timerCtx, parent at offset 0) for the first
 * timerCtx and copies its deadline (time.Time wall, ext). Concrete types are recognised by the itab's
 * Value method (context.Context's 4th method: itab.fun[3] at +48), which needs no itab symbols; each
 * itab recognised is remembered in the binary's offsets (one itab per concrete type), so a walk then
 * compares pointers instead of reading every itab (a user-memory read costs ~80 ns here). */
#define CTX_TIMER 1   /* kind k: itab learned in slot L_ITAB_TIMER + k - 1, Value method A_TIMERCTX_VALUE + k - 1 */
#define CTX_VALUE 2
#define CTX_CANCEL 3
static __always_inline int ctx_kind(struct gotel_go_offsets *o, u64 tab) {
#pragma unroll
    for (int k = 0; k < 3; k++)
        if (tab == o->off[L_ITAB_TIMER + k])
            return k + 1;
    u64 fn = rd64(tab + 48);
#pragma unroll
    for (int k = 0; k < 3; k++) {
        if (fn == o->off[A_TIMERCTX_VALUE + k]) {
            o->off[L_ITAB_TIMER + k] = tab;
            return k + 1;
        }
    }
    return 0;
}

static __always_inline void ctx_deadline_walk(struct gotel_go_proc *p, struct gev *e, u64 tab, u64 data,
                                              bool stop_at_cancel) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return;
    u64 off = o->off[O_TIMERCTX_DEADLINE];
    if (!KNOWN(off) || !KNOWN(o->off[A_TIMERCTX_VALUE]))
        return;
#pragma unroll
    for (int i = 0; i < 10; i++) {
        if (!tab || !data)
            return;
        int kind = ctx_kind(o, tab);
        if (kind == CTX_TIMER) {
            u64 t[2] = {};
            if (bpf_probe_read_user(t, sizeof(t), (void *)(data + off)) == 0) {
                e->dl_wall = t[0];
                e->dl_ext = (s64)t[1];
                e->flags |= E_DEADLINE;
            }
            return;
        }
        if (!kind || (stop_at_cancel && kind == CTX_CANCEL))
            return;
        u64 parent[2] = {};
        if (bpf_probe_read_user(parent, sizeof(parent), (void *)data) < 0)
            return;
        tab = parent[0];
        data = parent[1];
    }
}

static __always_inline void ctx_deadline(struct gotel_go_proc *p, struct gev *e, u64 tab, u64 data) {
    ctx_deadline_walk(p, e, tab, data, false);
}

/* A served stream's context is WithTimeout(transport ctx, grpc-timeout) or WithCancel(transport ctx) under a
 * few values (peer, metadata): the first cancelCtx up the chain means no deadline, and the walk stops there
 * instead of climbing the transport's own chain on every call. */
static __always_inline void server_ctx_deadline(struct gotel_go_proc *p, struct gev *e, u64 tab, u64 data) {
    ctx_deadline_walk(p, e, tab, data, true);
}

static __always_inline void read_tcpaddr(struct gotel_go_proc *p, u64 iface_addr, u8 *ip, u8 *iplen, u16 *port) {
    u64 a[2] = {};
    if (bpf_probe_read_user(a, sizeof(a), (void *)iface_addr) < 0 || !a[1])
        return;
    u64 o_ip = gotel_go_offset(p, O_TCPADDR_IP), o_port = gotel_go_offset(p, O_TCPADDR_PORT);
    if (!KNOWN(o_ip) || !KNOWN(o_port))
        return;
    u64 pt = rd64(a[1] + o_port);
    *port = (u16)pt;
    u64 sl[2] = {};
    bpf_probe_read_user(sl, sizeof(sl), (void *)(a[1] + o_ip));
    if (sl[1] == 4 || sl[1] == 16) {
        bpf_probe_read_user(ip, sl[1] & 16 ? 16 : 4, (void *)sl[0]);
        *iplen = sl[1];
    }
}

/* Ids: one random number per call, stretched by splitmix64 (a helper call costs more than the mixing). */
#define GOLDEN 0x9e3779b97f4a7c15ULL
static __always_inline u64 mix64(u64 x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static __always_inline u64 id_seed(u64 now) {
    return ((u64)bpf_get_prandom_u32() << 32) ^ now;
}

static __always_inline void call_init(struct gev *e, u32 type) {
    e->start_ns = bpf_ktime_get_ns();
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->type = type;
}

/* A new call in progress keyed by goroutine, zeroed in its map slot (see zero_gev) with its start time,
 * pid and type; NULL when the table is full (counted). One function per table: BCC rewrites map methods
 * in place, so a map cannot be passed as an argument or used inside a macro. A server call starts a new
 * local trace (stitched to its caller later, in the agent). */
static __always_inline struct gev *srv_begin(struct gotel_go_key *k, u32 type) {
    u32 z = 0;
    struct gev *zero = zero_gev.lookup(&z);
    if (!zero)
        return 0;
    if (srv_ongoing.update(k, zero)) {
        gotel_count_lost(GOTEL_LOST_FULL);
        return 0;
    }
    struct gev *e = srv_ongoing.lookup(k);
    if (!e)
        return 0;
    call_init(e, type);
    u64 seed = id_seed(e->start_ns);
    e->trace_hi = mix64(seed);
    e->trace_lo = mix64(seed + GOLDEN);
    e->span_id = mix64(seed + 2 * GOLDEN);
    return e;
}

static __always_inline struct gev *cli_begin(struct gotel_go_key *k, u32 type) {
    u32 z = 0;
    struct gev *zero = zero_gev.lookup(&z);
    if (!zero)
        return 0;
    if (cli_start.update(k, zero)) {
        gotel_count_lost(GOTEL_LOST_FULL);
        return 0;
    }
    struct gev *e = cli_start.lookup(k);
    if (e)
        call_init(e, type);
    return e;
}

/* The span serving this goroutine, or the one its creator chain started under while it still runs:
 * resolved when each goroutine is created (set_creator), so no chain is walked here and intermediate
 * goroutines may have exited (and had their g reused) long before the call. */
static __always_inline struct gev *find_active(u32 tgid, u64 g) {
    struct gotel_go_key k = {};
    k.tgid = tgid;
    k.goroutine = g;
    struct gev *a = srv_ongoing.lookup(&k);
    if (a)
        return a;
    struct go_anc *pa = go_parent.lookup(&k);
    if (!pa)
        return 0;
    u64 sid = pa->span_id;
    k.goroutine = pa->g;
    a = srv_ongoing.lookup(&k);
    return a && a->span_id == sid ? a : 0;
}

static __always_inline void set_parent(struct gev *e, u32 tgid, u64 g) {
    struct gev *a = find_active(tgid, g);
    u64 seed = id_seed(e->start_ns);
    if (a) {
        e->trace_hi = a->trace_hi;
        e->trace_lo = a->trace_lo;
        e->parent_span_id = a->span_id;
        e->flags |= E_PARENT | (a->flags & E_SAMPLED_TP);
    } else {
        e->trace_hi = mix64(seed + GOLDEN);
        e->trace_lo = mix64(seed + 2 * GOLDEN);
    }
    e->span_id = mix64(seed);
}

#include "go_ebpf_red.h"

/* The ring record of a finished call: a gRPC call's first GEV_GRPC_SIZE bytes, an HTTP call's whole record and
 * then its tracestate, if it had one (plain loads and stores: no helper call). */
static __always_inline void emit(struct gev *st, u64 end) {
    st->end_ns = end;
    struct gotel_go_key tk = {};
    struct ts_val *ts = 0;
    if (st->flags & E_HTTP_TS) {
        tk.tgid = st->pid;
        tk.goroutine = st->span_id;
        ts = http_ts.lookup(&tk);
        if (!ts)
            st->flags &= ~E_HTTP_TS;  /* evicted (4,096 calls with one in progress): the span goes without it */
    }
    if (!call_done(st)) {
        /* not sampled: counted in go_red and go_sampling_counts only */
    } else if (st->type <= T_GRPC_CLIENT) {
        char *e = gotel_reserved(go_events.ringbuf_reserve(GEV_GRPC_SIZE));
        if (e) {
            __builtin_memcpy(e, st, GEV_GRPC_SIZE);
            go_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
        }
    } else if (ts) {
        char *e = gotel_reserved(go_events.ringbuf_reserve(sizeof(struct gev) + TS_LEN));
        if (e) {
            __builtin_memcpy(e, st, sizeof(struct gev));
            __builtin_memcpy(e + sizeof(struct gev), ts->ts, TS_LEN);
            go_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
        }
    } else {
        struct gev *e = gotel_reserved(go_events.ringbuf_reserve(sizeof(struct gev)));
        if (e) {
            __builtin_memcpy(e, st, sizeof(*e));
            go_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
        }
    }
    if (ts)
        http_ts.delete(&tk);
}

/* Reads code and message of a *status.Status (st) or *status.Error (err, through Error.e or Error.s). */
static __always_inline void read_spb(struct gotel_go_proc *p, struct gev *e, u64 spb) {
    u64 o_code = gotel_go_offset(p, O_SPB_CODE);
    if (!spb || !KNOWN(o_code))
        return;
    u64 o_msg = gotel_go_offset(p, O_SPB_MSG);
    if (o_msg == o_code + 8) {
        /* Code int32 then Message string, as protoc-gen-go lays them out: one read for both */
        u64 v[3] = {};
        if (bpf_probe_read_user(v, sizeof(v), (void *)(spb + o_code)) < 0) {
            gotel_count_lost(GOTEL_LOST_READ);
            return;
        }
        e->code = (s32)v[0];
        e->flags |= E_STATUS;
        gotel_go_read_str(e->msg, STR_LEN, v[1], v[2]);
        return;
    }
    s32 code = 0;
    if (bpf_probe_read_user(&code, sizeof(code), (void *)(spb + o_code)) < 0) {
        gotel_count_lost(GOTEL_LOST_READ);
        return;
    }
    e->code = code;
    e->flags |= E_STATUS;
    read_str_at(e->msg, STR_LEN, spb, o_msg);
}

static __always_inline void read_error(struct gotel_go_proc *p, struct gev *e, u64 tab, u64 data) {
    e->flags &= ~(E_STATUS | E_NONSTATUS_ERR);
    e->code = 0;
    if (!tab)
        return;  /* nil error: OK */
    if (!KNOWN(gotel_go_offset(p, O_ERROR_E)) || !KNOWN(gotel_go_offset(p, O_SPB_CODE))) {
        e->flags |= E_NO_OFFSETS;  /* no DWARF: the code cannot be read, and is not guessed */
        return;
    }
    u64 eof = gotel_go_offset(p, A_IOEOF);
    if (KNOWN(eof)) {
        u64 v[2] = {};
        bpf_probe_read_user(v, sizeof(v), (void *)eof);
        if (v[0] == tab && v[1] == data)
            return;  /* io.EOF ends a stream successfully */
    }
    u64 a_err = gotel_go_offset(p, A_STATUSERR_ERROR);
    u64 o_e = gotel_go_offset(p, O_ERROR_E);
    if (KNOWN(a_err) && KNOWN(o_e) && rd64(tab + 24) == a_err) {
        u64 x = rd64(data + o_e);
        if (p->flags & F_ERROR_VIA_STATUS)
            x = x ? rd64(x + gotel_go_offset(p, O_STATUS_S)) : 0;
        read_spb(p, e, x);
        if (e->flags & E_STATUS)
            return;
    }
    e->code = 2;  /* UNKNOWN, as grpc-go's status.Convert does for a non-status error */
    e->flags |= E_NONSTATUS_ERR;
}

/* ---- runtime: goroutine creation tree -------------------------------------------------------------- */

int go_newproc1(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    u64 tid = bpf_get_current_pid_tgid();
    u64 a2 = GO_PARAM2(ctx), a4 = GO_PARAM4(ctx);
    barrier_var(a2);
    barrier_var(a4);
    u64 caller = (p->flags & F_NEWPROC1_GO117) ? a4 : a2;
    newproc_caller.update(&tid, &caller);
    return 0;
}

static __always_inline void set_creator(u32 tgid, u64 newg, u64 parent) {
    struct gotel_go_key k = {};
    k.tgid = tgid;
    k.goroutine = newg;
    /* A g is reused after its goroutine exits: whatever is still keyed by it belonged to a goroutine
     * that ended mid-call (a server call without a status, a client call that failed before its stream
     * existed). It must not parent the new goroutine's calls; it is counted, not silently kept. */
    /* (a lookup first: deleting takes the bucket's lock even when the key is absent, the usual case) */
    if (srv_ongoing.lookup(&k) && srv_ongoing.delete(&k) == 0)
        unmatched_inc(1);
    if (cli_start.lookup(&k) && cli_start.delete(&k) == 0)
        unmatched_inc(1);
    /* Only a goroutine started under a served call needs an entry; it names the serving goroutine and
     * its call directly (inherited from the creator's entry), so any depth of `go` statements works.
     * Most goroutines (a transport's per-stream handler, started by its reader) are under none, and two
     * lookups are far cheaper than an LRU insert (~0.4 us here). A reused g's old entry goes. */
    struct gotel_go_key pk = {};
    pk.tgid = tgid;
    pk.goroutine = parent;
    struct go_anc a = {};
    struct gev *s = srv_ongoing.lookup(&pk);
    if (s) {
        a.g = parent;
        a.span_id = s->span_id;
        go_parent.update(&k, &a);
        return;
    }
    struct go_anc *pa = go_parent.lookup(&pk);
    if (pa) {
        a.g = pa->g;
        a.span_id = pa->span_id;
        go_parent.update(&k, &a);
        return;
    }
    if (go_parent.lookup(&k))
        go_parent.delete(&k);
}

/* the creator newproc1's entry saved for this thread */
static __always_inline void record_parent(u64 tid, u64 newg) {
    u64 *caller = newproc_caller.lookup(&tid);
    if (!caller)
        return;
    u64 parent = *caller;
    newproc_caller.delete(&tid);
    set_creator(tid >> 32, newg, parent);
}

/* newproc1's RETs (single-stepped; only where the enqueue call below is not found): the new g in ax */
int go_newproc1_ret(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    record_parent(bpf_get_current_pid_tgid(), GO_PARAM1(ctx));
    return 0;
}

/* The `call runtime.runqput(pp, newg, true)` that follows newproc1 in newproc's closure: a call is
 * emulated by uprobes (no single-step), and newg is its second argument. The closure runs on g0 through
 * systemstack, so the goroutine that executed `go` is g0.m.curg: with those two offsets from DWARF
 * newproc1's entry is not probed at all (one hit per goroutine instead of two). */
int go_newproc_enqueue(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    u64 tid = bpf_get_current_pid_tgid();
    u64 o_m = gotel_go_offset(p, O_G_M), o_curg = gotel_go_offset(p, O_M_CURG);
    if (KNOWN(o_m) && KNOWN(o_curg)) {
        u64 m = rd64(GO_GOROUTINE(ctx) + o_m);
        u64 creator = m ? rd64(m + o_curg) : 0;
        if (creator)
            set_creator(tid >> 32, GO_PARAM2(ctx), creator);
        return 0;
    }
    record_parent(tid, GO_PARAM2(ctx));
    return 0;
}

/* ---- gRPC server ----------------------------------------------------------------------------------- */

static __always_inline bool is_traceparent(u64 name_ptr) {
    char nb[12] = {};
    bpf_probe_read_user(nb, 11, (void *)name_ptr);
    return nb[0] == 't' && nb[5] == 'p' && nb[10] == 't' && nb[1] == 'r' && nb[6] == 'a';
}

#define HF_STD 40  /* hpack.HeaderField{Name, Value string; Sensitive bool} on amd64 */
#define HF_BATCH 8

/* The address of the `traceparent` field among the first 16 header fields, or 0. With the usual field
 * layout, 8 fields are read in one copy (one helper call instead of one per field). */
static __always_inline u64 find_traceparent(u64 base, u64 n, u64 hf_size, u64 o_val) {
    if (hf_size == HF_STD && o_val == 16) {
        u64 buf[HF_BATCH * HF_STD / 8];
#pragma unroll
        for (int b = 0; b < 2; b++) {
            u64 first = b * HF_BATCH;
            if (first >= n)
                return 0;
            u64 cnt = n - first;
            if (cnt > HF_BATCH)
                cnt = HF_BATCH;
            u64 size = cnt * HF_STD;
            if (size > sizeof(buf))
                return 0;
            if (bpf_probe_read_user(buf, size, (void *)(base + first * HF_STD)) < 0)
                return 0;
#pragma unroll
            for (int j = 0; j < HF_BATCH; j++) {
                if (j >= cnt)
                    break;
                if (buf[j * 5 + 1] == 11 && is_traceparent(buf[j * 5]))
                    return base + (first + j) * HF_STD;
            }
        }
        return 0;
    }
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (i >= n)
            break;
        u64 f = base + i * hf_size;
        u64 name[2] = {};
        bpf_probe_read_user(name, sizeof(name), (void *)f);
        if (name[1] == 11 && is_traceparent(name[0]))
            return f;
    }
    return 0;
}

/* operateHeaders: the incoming HEADERS frame; remember a traceparent for the stream it opens. */
int grpc_operate_headers(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    u64 o_fields = gotel_go_offset(p, O_MHF_FIELDS), o_sid = gotel_go_offset(p, O_FH_STREAMID);
    u64 hf_size = gotel_go_offset(p, O_HF_SIZE), o_val = gotel_go_offset(p, O_HF_VALUE);
    if (!KNOWN(o_fields) || !KNOWN(o_sid) || !KNOWN(hf_size) || !KNOWN(o_val) || hf_size > 128)
        return 0;
    u64 t = GO_PARAM1(ctx);
    u64 a2 = GO_PARAM2(ctx), a4 = GO_PARAM4(ctx);
    barrier_var(a2);
    barrier_var(a4);
    u64 frame = (p->flags & F_OPHDR_CTX) ? a4 : a2;
    u64 fields[2] = {};
    if (bpf_probe_read_user(fields, sizeof(fields), (void *)(frame + o_fields)) < 0)
        return 0;
    u64 f = find_traceparent(fields[0], fields[1], hf_size, o_val);
    if (!f)
        return 0;
    u64 val[2] = {};
    bpf_probe_read_user(val, sizeof(val), (void *)(f + o_val));
    if (val[1] != 55)
        return 0;
    u32 z = 0;
    struct tp_val *tv = tp_scratch.lookup(&z);
    if (!tv)
        return 0;
    __builtin_memset(tv->tp, 0, TP_LEN);
    bpf_probe_read_user(tv->tp, 55, (void *)val[0]);
    u64 hf = rd64(frame);  /* *HeadersFrame, embedded pointer at offset 0 */
    u32 sid = 0;
    bpf_probe_read_user(&sid, sizeof(sid), (void *)(hf + o_sid));
    struct tp_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.stream_id = sid;
    k.transport = t;
    incoming_tp.update(&k, tv);
    return 0;
}

/* Stream.id, .ctx and .method lie within 128 bytes of each other in every grpc-go so far: one read of
 * that window instead of three (~80 ns each here). False (nothing read) when the layout does not fit. */
#define SWIN 16
static __always_inline bool stream_window(u64 stream, u64 o_id, u64 o_ctx, u64 o_method, u32 *id, u64 *c,
                                          char *method) {
    if (!KNOWN(o_id) || !KNOWN(o_ctx) || !KNOWN(o_method) || ((o_id | o_ctx | o_method) & 7))
        return false;
    u64 lo = o_id < o_ctx ? o_id : o_ctx;
    lo = lo < o_method ? lo : o_method;
    if (o_id - lo > (SWIN - 1) * 8 || o_ctx - lo > (SWIN - 2) * 8 || o_method - lo > (SWIN - 2) * 8)
        return false;
    u64 w[SWIN];
    if (bpf_probe_read_user(w, sizeof(w), (void *)(stream + lo)) < 0)
        return false;  /* the window runs past a mapping: field by field */
    u32 i = (o_id - lo) >> 3, j = (o_ctx - lo) >> 3, m = (o_method - lo) >> 3;
    if (i > SWIN - 1 || j > SWIN - 2 || m > SWIN - 2)  /* checked above; said again for the verifier */
        return false;
    *id = (u32)w[i];
    c[0] = w[j];
    c[1] = w[j + 1];
    gotel_go_read_str(method, STR_LEN, w[m], w[m + 1]);
    return true;
}

/* The transport.Stream inside what grpc passes around: the object itself before grpc 1.69, the Stream
 * embedded in a ServerStream/ClientStream after (through a pointer in 1.69-1.76). */
static __always_inline u64 stream_base(struct gotel_go_proc *p, u64 obj, int slot, u32 ptr_flag) {
    u64 off = gotel_go_offset(p, slot);
    if (!obj || !KNOWN(off))
        return obj;
    return (p->flags & ptr_flag) ? rd64(obj + off) : obj + off;
}

/* A transport's (http2Server's or http2Client's) remote and local addresses into e: a connection's addresses
 * do not change, so they are read once per transport and then copied (srv_conn_addr, by (tgid, transport);
 * client and server transports are distinct objects). */
static __always_inline void transport_addrs(struct gotel_go_proc *p, struct gev *e, u32 tgid, u64 t, u64 o_r,
                                            u64 o_l) {
    if (!KNOWN(o_r) || !KNOWN(o_l) || !t)
        return;
    struct gotel_go_key tk = {};
    tk.tgid = tgid;
    tk.goroutine = t;
    u64 ident[2] = {};  /* the interfaces' data words */
    if (o_l == o_r + 16) {  /* remoteAddr, localAddr: adjacent fields, one read */
        u64 both[4] = {};
        bpf_probe_read_user(both, sizeof(both), (void *)(t + o_r));
        ident[0] = both[1];
        ident[1] = both[3];
    } else {
        ident[0] = rd64(t + o_r + 8);
        ident[1] = rd64(t + o_l + 8);
    }
    struct conn_addr *ca = srv_conn_addr.lookup(&tk);
    if (ca && ca->ident[0] == ident[0] && ca->ident[1] == ident[1] && ident[0]) {
        __builtin_memcpy(e->lip, ca->lip, sizeof(e->lip));
        __builtin_memcpy(e->rip, ca->rip, sizeof(e->rip));
        e->liplen = ca->liplen;
        e->riplen = ca->riplen;
        e->lport = ca->lport;
        e->rport = ca->rport;
    } else {
        read_tcpaddr(p, t + o_r, e->rip, &e->riplen, &e->rport);
        read_tcpaddr(p, t + o_l, e->lip, &e->liplen, &e->lport);
        struct conn_addr n = {};
        n.ident[0] = ident[0];
        n.ident[1] = ident[1];
        __builtin_memcpy(n.lip, e->lip, sizeof(n.lip));
        __builtin_memcpy(n.rip, e->rip, sizeof(n.rip));
        n.liplen = e->liplen;
        n.riplen = e->riplen;
        n.lport = e->lport;
        n.rport = e->rport;
        srv_conn_addr.update(&tk, &n);
    }
    e->flags |= E_ADDR;
}

/* (*Server).handleStream(t ServerTransport, stream *Stream | *ServerStream, ...): a server call starts. */
int grpc_server_start(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    u64 t = GO_PARAM3(ctx), stream = GO_PARAM4(ctx);
    struct gev *prev = srv_ongoing.lookup(&k);
    if (prev && prev->type == T_GRPC_SERVER && prev->obj == stream)
        return 0;  /* the entry probe again, after morestack restarted the function */
    struct gev *e = srv_begin(&k, T_GRPC_SERVER);
    if (!e)
        return 0;
    u32 tgid = e->pid;
    e->obj = stream;  /* what WriteStatus/writeStatus receives */
    e->aux = t;
    stream = stream_base(p, stream, O_SS_STREAM, F_SS_STREAM_PTR);
    u64 o_method = gotel_go_offset(p, O_STREAM_METHOD);
    u64 o_id = gotel_go_offset(p, O_STREAM_ID);
    u64 o_ctx = gotel_go_offset(p, O_STREAM_CTX);
    u64 c[2] = {};
    if (!KNOWN(o_method))
        e->flags |= E_NO_OFFSETS;
    if (!stream_window(stream, o_id, o_ctx, o_method, &e->stream_id, c, e->method)) {
        read_str_at(e->method, STR_LEN, stream, o_method);
        if (KNOWN(o_id))
            bpf_probe_read_user(&e->stream_id, sizeof(u32), (void *)(stream + o_id));
        if (KNOWN(o_ctx))
            bpf_probe_read_user(c, sizeof(c), (void *)(stream + o_ctx));
    }
    if (KNOWN(o_id)) {
        e->flags |= E_STREAM_ID;
        struct tp_key k = {};
        k.tgid = tgid;
        k.stream_id = e->stream_id;
        k.transport = t;
        struct tp_val *tv = incoming_tp.lookup(&k);
        if (tv) {
            bpf_probe_read_kernel(e->tp, TP_LEN, tv->tp);
            e->flags |= E_TRACEPARENT | tp_sampled(e->tp[54]);
            incoming_tp.delete(&k);
        }
    }
    if (KNOWN(o_ctx))
        server_ctx_deadline(p, e, c[0], c[1]);
    transport_addrs(p, e, tgid, t, gotel_go_offset(p, O_H2S_REMOTE), gotel_go_offset(p, O_H2S_LOCAL));
    return 0;
}

/* (*http2Server).WriteStatus(s *Stream, st *status.Status), on the handler goroutine: the status goes to
 * the caller now, which ends the server span. (handleStream's RETs would say so ~1 us later, but a RET is
 * single-stepped: 10+ us a call in a VM.) */
static __always_inline void server_end(struct gotel_go_key *k, struct gev *e) {
    emit(e, bpf_ktime_get_ns());
    srv_ongoing.delete(k);
}

int grpc_server_status(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = srv_ongoing.lookup(&k);
    if (!e || e->type != T_GRPC_SERVER || e->obj != GO_PARAM2(ctx))
        return 0;
    u64 st = GO_PARAM3(ctx);
    u64 o_s = gotel_go_offset(p, O_STATUS_S);
    if (st && KNOWN(o_s))
        read_spb(p, e, rd64(st + o_s));
    server_end(&k, e);
    return 0;
}

/* ---- gRPC client: newClientStream (unary Invoke goes through it too) ... clientStream.finish ------- */

/* flow control and stream limits (issue 19): defined in their own block at the end of this file */
static __always_inline void flow_client_desc(struct gotel_go_proc *p, struct gev *e, u64 desc);
static __always_inline void flow_client_goroutine(struct gotel_go_proc *p, u32 tgid, u64 g, u64 cs);

int grpc_client_start(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = cli_begin(&k, T_GRPC_CLIENT);
    if (!e)
        return 0;
    u32 tgid = e->pid;
    /* newClientStream(ctx Context, desc *StreamDesc, cc *ClientConn, method string, opts ...CallOption) */
    gotel_go_read_str(e->method, STR_LEN, GO_PARAM5(ctx), GO_PARAM6(ctx));
    ctx_deadline(p, e, GO_PARAM1(ctx), GO_PARAM2(ctx));
    set_parent(e, tgid, GO_GOROUTINE(ctx));
    flow_client_desc(p, e, GO_PARAM3(ctx));  /* issue 19: a streaming call? */
    return 0;
}

/* at newClientStream's RETs: (ClientStream, error) in ax/bx and cx/di */
int grpc_client_started(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = cli_start.lookup(&k);
    if (!e)
        return 0;
    u64 cs = GO_PARAM2(ctx);
    struct gotel_go_key ck = {};
    ck.tgid = k.tgid;
    ck.goroutine = cs;
    if (cs && !GO_PARAM3(ctx)) {
        e->obj = cs;
        if (cli_streams.update(&ck, e))
            gotel_count_lost(GOTEL_LOST_FULL);  /* table full (streams never finished): counted, not silent */
        if (cli_done.lookup(&ck))
            cli_done.delete(&ck);  /* a reused clientStream address */
    } else if (GO_PARAM3(ctx)) {
        /* failed before a stream existed (e.g. the deadline expired while waiting for the resolver) */
        read_error(p, e, GO_PARAM3(ctx), GO_PARAM4(ctx));
        emit(e, bpf_ktime_get_ns());
    }
    cli_start.delete(&k);
    return 0;
}

/* (*clientStream).newAttemptLocked(cs, ...) runs inside newClientStream once the clientStream exists: the
 * call is re-keyed from its goroutine to the clientStream, which finish receives wherever it runs. (An
 * entry probe is emulated; newClientStream's RETs, the alternative, are single-stepped.) */
int grpc_client_attempt(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = cli_start.lookup(&k);
    if (!e)
        return 0;  /* a retry's attempt: the stream is registered already */
    u64 cs = GO_PARAM1(ctx);
    struct gotel_go_key ck = {};
    ck.tgid = k.tgid;
    ck.goroutine = cs;
    e->obj = cs;
    flow_client_goroutine(p, k.tgid, k.goroutine, cs);  /* issue 19: the goroutine's call, for its waits */
    if (cli_streams.update(&ck, e))
        gotel_count_lost(GOTEL_LOST_FULL);  /* table full (streams never finished): counted, not silent */
    if (cli_done.lookup(&ck))
        cli_done.delete(&ck);  /* a reused clientStream address */
    cli_start.delete(&k);
    return 0;
}

static __always_inline void client_addr(struct gotel_go_proc *p, struct gev *e, u64 cs) {
    u64 o_att = gotel_go_offset(p, O_CS_ATTEMPT), o_t = gotel_go_offset(p, O_ATT_T), o_s = gotel_go_offset(p, O_ATT_S);
    u64 o_r = gotel_go_offset(p, O_H2C_REMOTE), o_l = gotel_go_offset(p, O_H2C_LOCAL);
    u64 o_id = gotel_go_offset(p, O_STREAM_ID);
    if (!KNOWN(o_att) || !KNOWN(o_t) || !KNOWN(o_s))
        return;
    u64 att = rd64(cs + o_att);
    if (!att)
        return;
    u64 s = stream_base(p, rd64(att + o_s), O_CLS_STREAM, F_CLS_STREAM_PTR);
    if (s && KNOWN(o_id)) {
        bpf_probe_read_user(&e->stream_id, sizeof(u32), (void *)(s + o_id));
        e->flags |= E_STREAM_ID;
    }
    u64 t = rd64(att + o_t + 8);  /* ClientTransport interface: data word */
    transport_addrs(p, e, e->pid, t, o_r, o_l);
}

/* (*clientStream).finish(err error): the first call ends the client span (later calls are no-ops in grpc). */
int grpc_client_finish(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    struct gotel_go_key ck = {};
    ck.tgid = bpf_get_current_pid_tgid() >> 32;
    ck.goroutine = GO_PARAM1(ctx);
    struct gev *e = cli_streams.lookup(&ck);
    if (!e) {
        /* finish inside newClientStream (the attempt failed): the stream is not registered yet */
        struct gotel_go_key k = gotel_go_key_of(ctx);
        e = cli_start.lookup(&k);
        if (!e) {
            /* the call started before this process was traced: rebuild it from the clientStream */
            u64 cs = GO_PARAM1(ctx);
            u64 o_bt = gotel_go_offset(p, O_CS_BEGINTIME), o_hdr = gotel_go_offset(p, O_CS_CALLHDR);
            u64 bt_at = cs + o_bt;
            if (!KNOWN(o_bt)) {
                /* grpc >= 1.58 keeps it in the attempt */
                u64 o_abt = gotel_go_offset(p, O_ATT_BEGINTIME), o_att = gotel_go_offset(p, O_CS_ATTEMPT);
                if (!KNOWN(o_abt) || !KNOWN(o_att))
                    return 0;
                u64 att = rd64(cs + o_att);
                if (!att)
                    return 0;
                bt_at = att + o_abt;
            }
            if (!KNOWN(o_hdr))
                return 0;
            if (cli_done.lookup(&ck))
                return 0;  /* grpc calls finish more than once; the first call counted */
            u64 bt[2] = {};
            bpf_probe_read_user(bt, sizeof(bt), (void *)bt_at);
            if (!bt[0] && !bt[1]) {
                unmatched_inc(0);  /* no start time anywhere (grpc sets beginTime only with a stats handler) */
                return 0;
            }
            u8 one = 1;
            cli_done.update(&ck, &one);
            u32 z = 0;
            struct gev *zero = zero_gev.lookup(&z);
            if (!zero)
                return 0;
            if (cli_streams.update(&ck, zero)) {
                gotel_count_lost(GOTEL_LOST_FULL);
                return 0;
            }
            e = cli_streams.lookup(&ck);
            if (!e)
                return 0;
            e->pid = ck.tgid;
            e->type = T_GRPC_CLIENT;
            e->aux = bt[0];
            e->obj = bt[1];
            e->flags |= E_BEGIN_WALL;
            read_str_at(e->method, STR_LEN, rd64(cs + o_hdr), gotel_go_offset(p, O_CALLHDR_METHOD));
            u64 o_ctx = gotel_go_offset(p, O_CS_CTX);
            if (KNOWN(o_ctx)) {
                u64 c[2] = {};
                bpf_probe_read_user(c, sizeof(c), (void *)(cs + o_ctx));
                ctx_deadline(p, e, c[0], c[1]);
            }
            set_parent(e, ck.tgid, GO_GOROUTINE(ctx));
            e->flags &= ~E_PARENT;  /* finish may run on another goroutine: no parent claimed */
            e->parent_span_id = 0;
            read_error(p, e, GO_PARAM2(ctx), GO_PARAM3(ctx));
            client_addr(p, e, cs);
            emit(e, bpf_ktime_get_ns());
            cli_streams.delete(&ck);
            return 0;
        }
        read_error(p, e, GO_PARAM2(ctx), GO_PARAM3(ctx));
        client_addr(p, e, GO_PARAM1(ctx));
        e->obj = GO_PARAM1(ctx);
        emit(e, bpf_ktime_get_ns());
        cli_start.delete(&k);  /* grpc_client_started then finds nothing to do */
        u8 one = 1;
        cli_done.update(&ck, &one);
        return 0;
    }
    /* finish can run on two goroutines at once (a stream's context watcher and its reader when the
     * deadline passes; grpc takes its lock after this entry): the record is built in its reservation and
     * only the one whose delete removes the entry submits it, or the call would be two spans */
    struct gev *r = gotel_reserved(go_events.ringbuf_reserve(GEV_GRPC_SIZE));  /* a gRPC record: no HTTP part */
    if (!r) {
        cli_streams.delete(&ck);
        return 0;
    }
    __builtin_memcpy(r, e, GEV_GRPC_SIZE);
    read_error(p, r, GO_PARAM2(ctx), GO_PARAM3(ctx));
    client_addr(p, r, GO_PARAM1(ctx));
    r->end_ns = bpf_ktime_get_ns();
    if (cli_streams.delete(&ck) != 0 || !call_done(r)) {
        go_events.ringbuf_discard(r, 0);  /* the other finisher's, or not sampled (never read) */
        return 0;
    }
    go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    u8 one = 1;
    cli_done.update(&ck, &one);
    return 0;
}

static __always_inline void http_server_pattern(struct gotel_go_proc *p, struct gev *e);

/* ---- HTTP hops (issue 22): connections, HTTP/2 streams and incoming trace context of net/http ------ */

/* A connection's addresses, read once (HTTP/1 server: at (*conn).serve; client: at its first request;
 * HTTP/2: at its first stream), and the number of HTTP/1 requests seen on it so far. */
struct hconn {
    u64 ident;  /* the net.Conn's data pointer: tells a reused object address apart */
    u64 count;
    u16 lport;
    u16 rport;
    u8 lip[16];
    u8 rip[16];
    u8 liplen;
    u8 riplen;
};
BPF_TABLE("lru_hash", struct gotel_go_key, struct hconn, http_conns, 16384);

/* The addresses of a net.Conn interface stored at `iface`: a *net.TCPConn, or a *tls.Conn over one. An
 * implementation is recognised by its itab's LocalAddr method (fun[1]), so other conns are never misread. */
static __always_inline bool netconn_addrs(struct gotel_go_proc *p, struct gotel_go_offsets *o, u64 iface,
                                          struct hconn *h) {
    u64 c[2] = {};
    if (bpf_probe_read_user(c, sizeof(c), (void *)iface) < 0 || !c[0] || !c[1])
        return false;
    h->ident = c[1];
    u64 fn = rd64(c[0] + 32);
    u64 o_tls = o->off[H_TLS_CONN];
    if (fn == o->off[HA_H2C_BUFCONN] && KNOWN(fn)) {  /* h2c's {net.Conn; *bufio.Reader} */
        if (bpf_probe_read_user(c, sizeof(c), (void *)c[1]) < 0 || !c[0] || !c[1])
            return false;
        fn = rd64(c[0] + 32);
    }
    if (fn == o->off[HA_TLS_LOCALADDR] && KNOWN(o_tls)) {
        if (bpf_probe_read_user(c, sizeof(c), (void *)(c[1] + o_tls)) < 0 || !c[0] || !c[1])
            return false;
        fn = rd64(c[0] + 32);
    }
    u64 o_fd = o->off[H_TCPCONN_FD], o_l = o->off[H_NETFD_LADDR], o_r = o->off[H_NETFD_RADDR];
    if (fn != o->off[HA_TCP_LOCALADDR] || !KNOWN(o_fd) || !KNOWN(o_l) || !KNOWN(o_r))
        return false;
    u64 fd = rd64(c[1] + o_fd);
    if (!fd)
        return false;
    read_tcpaddr(p, fd + o_l, h->lip, &h->liplen, &h->lport);
    read_tcpaddr(p, fd + o_r, h->rip, &h->riplen, &h->rport);
    return h->lport && h->rport;
}

static __always_inline void hconn_copy(struct gev *e, struct hconn *h, u32 id, u32 flags) {
    __builtin_memcpy(e->lip, h->lip, sizeof(e->lip));
    __builtin_memcpy(e->rip, h->rip, sizeof(e->rip));
    e->liplen = h->liplen;
    e->riplen = h->riplen;
    e->lport = h->lport;
    e->rport = h->rport;
    e->stream_id = id;
    e->flags |= E_HTTP_CONN | flags;
}

/* An HTTP/2 connection's addresses by its object (serverConn or ClientConn), cached; false when unknown. */
static __always_inline struct hconn *h2_conn(struct gotel_go_proc *p, struct gotel_go_offsets *o, u32 tgid,
                                             u64 obj, u64 o_conn) {
    if (!obj || !KNOWN(o_conn))
        return 0;
    struct gotel_go_key k = {};
    k.tgid = tgid;
    k.goroutine = obj;
    u64 ident = rd64(obj + o_conn + 8);
    struct hconn *h = http_conns.lookup(&k);
    if (h && h->ident == ident && ident)
        return h;
    struct hconn n = {};
    if (!netconn_addrs(p, o, obj + o_conn, &n))
        return 0;
    http_conns.update(&k, &n);
    return http_conns.lookup(&k);
}

/* (*http2serverConn).serve(sc) / (*http2ClientConn).readLoop(cc): a new HTTP/2 connection, before any stream
 * on it: whatever is cached under its object's address belonged to an earlier connection. */
int http2_conn_new(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    struct gotel_go_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.goroutine = GO_PARAM1(ctx);
    http_conns.delete(&k);
    return 0;
}

/* (*conn).serve(c, ctx): an accepted HTTP/1 connection (every request on it is served by this goroutine):
 * its addresses, and a request count from zero (a reused *conn address starts over here). */
int http_conn_serve(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return 0;
    u64 c = GO_PARAM1(ctx), o_rwc = o->off[H_CONN_RWC];
    struct gotel_go_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.goroutine = c;
    struct hconn n = {};
    if (!c || !KNOWN(o_rwc) || !netconn_addrs(p, o, c + o_rwc, &n)) {
        http_conns.delete(&k);
        return 0;
    }
    http_conns.update(&k, &n);
    return 0;
}

/* Server start, HTTP/1 (the ResponseWriter's itab tells): the request's order on its connection, counted
 * whether or not its span can be recorded (a missed count would shift every later request). Only for
 * connections seen from their start: the order on one accepted before the process was traced is unknown,
 * and not guessed. NULL otherwise. */
static __always_inline struct hconn *http1_server_count(struct gotel_go_proc *p, u64 rw_tab, u64 rw, u32 *seq) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o || !rw_tab || !rw)
        return 0;
    u64 o_c = o->off[H_RESP_CONN];
    if (!KNOWN(o_c) || rd64(rw_tab + 24) != o->off[HA_RESP_HEADER])
        return 0;
    struct gotel_go_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.goroutine = rd64(rw + o_c);
    struct hconn *h = http_conns.lookup(&k);
    if (!h)
        return 0;
    h->count++;  /* one goroutine serves the connection: requests are counted in order */
    *seq = (u32)h->count;
    return h;
}

/* Server start, HTTP/2: the stream id and the connection's addresses. */
static __always_inline void http2_server_conn(struct gotel_go_proc *p, struct gev *e, u64 rw_tab, u64 rw) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o || !rw_tab || !rw || rd64(rw_tab + 24) != o->off[HA_H2RW_HEADER])
        return;
    u64 o_rws = o->off[H_H2RW_RWS], o_st = o->off[H_H2RWS_STREAM], o_id = o->off[H_H2ST_ID], o_sc = o->off[H_H2ST_SC];
    if (!KNOWN(o_rws) || !KNOWN(o_st) || !KNOWN(o_id) || !KNOWN(o_sc))
        return;
    u64 st = rd64(rd64(rw + o_rws) + o_st);
    if (!st)
        return;
    u32 id = 0;
    bpf_probe_read_user(&id, sizeof(id), (void *)(st + o_id));
    struct hconn *h = h2_conn(p, o, e->pid, rd64(st + o_sc), o->off[H_H2SC_CONN]);
    if (h && id)
        hconn_copy(e, h, id, E_HTTP2);
}

/* Server start, x/net HTTP/2 ((*serverConn).runHandler(sc, rw, req, handler)): the stream id and addresses. */
static __always_inline void http2x_server_conn(struct gotel_go_proc *p, struct gev *e, u64 sc, u64 rw) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o || !sc || !rw)
        return;
    u64 o_st = o->off[HX_RWS_STREAM], o_id = o->off[HX_ST_ID];
    if (!KNOWN(o_st) || !KNOWN(o_id))
        return;
    u64 st = rd64(rd64(rw) + o_st);  /* responseWriter{rws}: rws at 0 */
    if (!st)
        return;
    u32 id = 0;
    bpf_probe_read_user(&id, sizeof(id), (void *)(st + o_id));
    struct hconn *h = h2_conn(p, o, e->pid, sc, o->off[HX_SC_CONN]);
    if (h && id)
        hconn_copy(e, h, id, E_HTTP2);
}

/* One http.Header slot: is it Traceparent or Tracestate (canonical keys), and then its first value. */
static __always_inline void hdr_slot(struct gev *e, u64 key, u64 elem) {
    u64 k[2] = {};
    if (bpf_probe_read_user(k, sizeof(k), (void *)key) < 0 || (k[1] != 11 && k[1] != 10))
        return;
    char nb[12] = {};
    if (bpf_probe_read_user(nb, 10, (void *)k[0]) < 0)
        return;
    bool tp = k[1] == 11 && nb[0] == 'T' && nb[1] == 'r' && nb[2] == 'a' && nb[3] == 'c' && nb[4] == 'e' &&
              nb[5] == 'p' && nb[6] == 'a' && nb[7] == 'r' && nb[8] == 'e' && nb[9] == 'n';
    bool ts = k[1] == 10 && nb[0] == 'T' && nb[1] == 'r' && nb[2] == 'a' && nb[3] == 'c' && nb[4] == 'e' &&
              nb[5] == 's' && nb[6] == 't' && nb[7] == 'a' && nb[8] == 't' && nb[9] == 'e';
    if (!tp && !ts)
        return;
    u64 sl[2] = {};  /* []string: the first value */
    if (bpf_probe_read_user(sl, sizeof(sl), (void *)elem) < 0 || !sl[0] || !sl[1])
        return;
    u64 v[2] = {};
    if (bpf_probe_read_user(v, sizeof(v), (void *)sl[0]) < 0 || !v[1])
        return;
    if (tp && !(e->flags & E_HTTP_TP) && v[1] >= 55 && v[1] < TP_LEN) {
        if (e->type == T_HTTP_SERVER)  /* a client's (INJECT_TP) is only a flag: url_path shares in_tp's bytes */
            gotel_go_read_str(e->in_tp, TP_LEN, v[0], v[1]);
        e->flags |= E_HTTP_TP;
    } else if (ts && !(e->flags & E_HTTP_TS) && v[1] < TS_LEN) {  /* a longer one is not cut (it would lie) */
        struct gotel_go_key tk = {};
        tk.tgid = e->pid;
        tk.goroutine = e->span_id;
        u32 z = 0;
        struct gev *zero = zero_gev.lookup(&z);  /* its first TS_LEN bytes: a zero ts_val */
        if (!zero || http_ts.update(&tk, (struct ts_val *)zero))
            return;
        struct ts_val *t = http_ts.lookup(&tk);
        if (!t)
            return;
        gotel_go_read_str(t->ts, TS_LEN, v[0], v[1]);
        e->flags |= E_HTTP_TS;
    }
}

/* The request's traceparent and tracestate, from its http.Header map (map[string][]string), walked with the
 * layout DWARF gave: classic buckets (tophash >= 5: full) or swiss groups (ctrl byte < 0x80: full). Up to
 * 4 buckets/groups (32 slots; headers of up to ~28 fields); a map in the middle of growing, or larger, is
 * not read. */
static __always_inline void http_header_scan(struct gotel_go_proc *p, struct gev *e, u64 req) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return;
    u64 o_h = o->off[H_REQ_HEADER], ma = o->off[H_MAP_A], mb = o->off[H_MAP_B], mc = o->off[H_MAP_C];
    u64 md = o->off[H_MAP_D], me = o->off[H_MAP_E], mf = o->off[H_MAP_F];
    if (!KNOWN(o_h) || !KNOWN(ma) || !KNOWN(mb) || !KNOWN(mc) || !KNOWN(md) || !KNOWN(me) || !KNOWN(mf) || mf > 1024)
        return;
    u64 m = rd64(req + o_h);
    if (!m)
        return;
    bool swiss = p->flags & F_HTTP_SWISS_MAP;
    u64 base = 0, n = 0, kstride, estride, eoff;
    if (swiss) {
        u64 dirlen = rd64(m + ma), dir = rd64(m + mb);
        if (!dir)
            return;
        if (dirlen == 0) {  /* a small map: dirPtr is its one group */
            base = dir;
            n = 1;
        } else if (dirlen == 1) {
            u64 g[2] = {};  /* table.groups: {data, lengthMask} */
            bpf_probe_read_user(g, sizeof(g), (void *)(rd64(dir) + mc));
            base = g[0];
            n = g[1] + 1;
        }
        kstride = me;
        estride = me;
        eoff = md + 16;  /* slot {key string; elem []string} */
    } else {
        u8 B = 0;
        bpf_probe_read_user(&B, 1, (void *)(m + ma));
        if (B > 2 || rd64(m + mc))
            return;
        base = rd64(m + mb);
        n = 1ULL << B;
        kstride = 16;
        estride = 24;
        eoff = me;
    }
    if (!base || n > 4)
        return;
    for (int gi = 0; gi < 4; gi++) {
        if (gi >= n)
            break;
        u64 g = base + gi * mf;
        u64 ctrl = rd64(g);
        for (int i = 0; i < 8; i++) {
            u8 cb = ctrl >> (8 * i);
            if (swiss ? (cb & 0x80) : cb < 5)
                continue;
            hdr_slot(e, g + md + i * kstride, g + eoff + i * estride);
            if ((e->flags & (E_HTTP_TP | E_HTTP_TS)) == (E_HTTP_TP | E_HTTP_TS))
                return;
        }
    }
}

/* ---- traceparent injection (INJECT_TP, off by default; docs/go_ebpf.md "Writing traceparent"): an HTTP/1
 * client request gotel has a span for and that carries no traceparent gets `traceparent: 00-<trace>-<span>-01`
 * appended to its headers in the connection's bufio.Writer (before TLS encrypts it), at the return of
 * the request's own Header.writeSubset: the bytes go into the buffer's unused part and n is bumped. Nothing
 * of the http.Header map is touched; the writer belongs to the writeLoop goroutine the probe runs on. */
#ifdef INJECT_TP  /* maps and programs exist only with the option (the verifier of a locked-down kernel refuses them) */
#define INJ_LEN 70  /* "traceparent: " 13 + 55 + "\r\n" */
struct inj {
    u64 trace_hi;
    u64 trace_lo;
    u64 span_id;
    u64 bw;  /* the connection's *bufio.Writer */
    u64 req;
    char trace_hex[32];  /* the trace id the served call continues (its incoming traceparent's), if any */
    u64 has_hex;
};
BPF_TABLE("lru_hash", struct gotel_go_key, struct inj, inj_reqs, 4096);     /* by (tgid, *Request) */
BPF_TABLE("lru_hash", struct gotel_go_key, struct inj, inj_writing, 4096);  /* by (tgid, writeLoop goroutine) */
/* 0 injected, 1 no_room (the buffer's free part is too small), 2 header_present (the request has one),
 * 3 write_refused (bpf_probe_write_user failed: lockdown, a fault), 4 writer_unknown (not the connection's) */
BPF_PERCPU_ARRAY(inj_counts, u64, 5);
static __always_inline void inj_inc(int i) { u64 *v = inj_counts.lookup(&i); if (v) (*v)++; }
#endif

/* At (*persistConn).roundTrip, on the caller's goroutine: remember the span for the request writeLoop writes. */
static __always_inline void inject_prepare(struct gotel_go_proc *p, struct gotel_go_offsets *o, struct gev *e,
                                           u64 pc, u64 treq, u64 g) {
#ifdef INJECT_TP
    u64 o_bw = o->off[H_PC_BW], o_req = o->off[H_TREQ_REQ];
    if (!KNOWN(o_bw) || !KNOWN(o_req) || !treq)
        return;
    http_header_scan(p, e, rd64(treq + o_req));  /* a client span does not use in_tp: only the flag is read */
    if (e->flags & E_HTTP_TP) {
        inj_inc(2);
        return;
    }
    struct gotel_go_key k = {};
    k.tgid = e->pid;
    k.goroutine = rd64(treq + o_req);
    struct inj v = {};
    v.trace_hi = e->trace_hi;
    v.trace_lo = e->trace_lo;
    v.span_id = e->span_id;
    v.bw = rd64(pc + o_bw);
    /* under a served call that continues an incoming traceparent, user space exports that trace id (the
     * local one is aliased to it): the callee must get the same */
    struct gev *a = (e->flags & E_PARENT) ? find_active(e->pid, g) : 0;
    if (a && a->type == T_HTTP_SERVER && (a->flags & E_HTTP_TP)) {
        __builtin_memcpy(v.trace_hex, a->in_tp + 3, 32);
        v.has_hex = 1;
    } else if (a && a->type == T_GRPC_SERVER && (a->flags & E_TRACEPARENT)) {
        __builtin_memcpy(v.trace_hex, a->tp + 3, 32);
        v.has_hex = 1;
    }
    if (k.goroutine && v.bw)
        inj_reqs.update(&k, &v);
#endif
}

#ifdef INJECT_TP
/* (*Request).write(r, w io.Writer, ...) entry, on writeLoop's goroutine: the request is about to be written
 * into w, which must be the connection's bufio.Writer (else nothing is injected). */
int http_inject_write(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct gotel_go_key rk = {};
    rk.tgid = k.tgid;
    rk.goroutine = GO_PARAM1(ctx);
    struct inj *v = inj_reqs.lookup(&rk);
    if (!v) {
        struct inj *old = inj_writing.lookup(&k);
        if (old && old->req != rk.goroutine)
            inj_writing.delete(&k);  /* left by a write that failed before its headers: not for this request */
        return 0;  /* (the entry probe again after morestack finds its own entry there) */
    }
    struct inj w = *v;
    w.req = rk.goroutine;
    inj_reqs.delete(&rk);
    if (GO_PARAM3(ctx) != w.bw) {
        inj_inc(4);
        return 0;
    }
    inj_writing.update(&k, &w);
    return 0;
}

/* a hex digit, branch-free (with a select clang vectorises the unrolled loop and overruns the stack) */
static __always_inline u64 hexd(u64 x) { return x + '0' + (((9 - x) >> 8) & ('a' - '0' - 10)); }

/* v's 8 bytes (in the byte order the records carry ids) as 16 hex digits, in two words */
static __always_inline void hex_u64(u64 *out, u64 v) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        u64 b = (v >> (8 * i)) & 0xff;
        u64 two = (u64)hexd(b >> 4) | ((u64)hexd(b & 15) << 8);
        out[i / 4] |= two << (16 * (i % 4));
    }
}

/* The line appended into the buffer's free part, in three writes (n is bumped only after all three). */
static __always_inline void inject_now(struct gotel_go_proc *p, u64 bw, u64 *trace, u64 sid) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return;
    u64 o_buf = o->off[H_BW_BUF], o_n = o->off[H_BW_N];
    if (!KNOWN(o_buf) || !KNOWN(o_n))
        return;
    u64 buf[2] = {};  /* []byte data, len: the writer's size is len(buf) */
    bpf_probe_read_user(buf, sizeof(buf), (void *)(bw + o_buf));
    u64 n = rd64(bw + o_n);
    if (!buf[0] || n > buf[1] || buf[1] - n < INJ_LEN) {
        inj_inc(1);
        return;
    }
    char head[16] = {'t', 'r', 'a', 'c', 'e', 'p', 'a', 'r', 'e', 'n', 't', ':', ' ', '0', '0', '-'};
    u64 tail[3] = {};  /* "-" span "-01\r\n" (22 bytes) */
    u64 span[2] = {};
    hex_u64(span, sid);
    char *t = (char *)tail;
    t[0] = '-';
    __builtin_memcpy(t + 1, span, 16);
    t[17] = '-'; t[18] = '0'; t[19] = '1'; t[20] = '\r'; t[21] = '\n';
    char *at = (char *)buf[0] + n;
    if (bpf_probe_write_user(at, head, 16) < 0 || bpf_probe_write_user(at + 16, trace, 32) < 0 ||
        bpf_probe_write_user(at + 48, tail, 22) < 0) {
        inj_inc(3);
        return;
    }
    n += INJ_LEN;
    if (bpf_probe_write_user((void *)(bw + o_n), &n, sizeof(n)) < 0) {
        inj_inc(3);  /* the bytes are past n: unused, as if never written */
        return;
    }
    inj_inc(0);
}

/* Header.writeSubset's RETs: the first on this goroutine after (*Request).write's entry wrote r.Header (the
 * request line, Host and the transfer headers come before it; the transport's extra headers and the blank
 * line after). */
int http_inject_ret(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct inj *w = inj_writing.lookup(&k);
    if (!w)
        return 0;
    u64 bw = w->bw, sid = w->span_id;
    u64 trace[4] = {};
    if (w->has_hex) {
        __builtin_memcpy(trace, w->trace_hex, 32);
    } else {
        hex_u64(trace, w->trace_hi);
        hex_u64(trace + 2, w->trace_lo);
    }
    inj_writing.delete(&k);
    if (!GO_PARAM1(ctx))  /* else writeSubset failed: the request fails anyway */
        inject_now(p, bw, trace, sid);
    return 0;
}
#endif  /* INJECT_TP */

/* (*persistConn).roundTrip(pc, treq): the HTTP/1 connection a client request goes out on, on the goroutine
 * of (*Transport).roundTrip. Nothing was written on a new connection (nwrite 0): its count starts there;
 * a connection first seen later (dialled before the process was traced) gets no order. The last attempt
 * wins when the transport retries on another connection. */
int http_pconn_roundtrip(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return 0;
    struct gotel_go_key gk = gotel_go_key_of(ctx);
    u64 pc = GO_PARAM1(ctx), o_conn = o->off[H_PC_CONN], o_nw = o->off[H_PC_NWRITE];
    struct gev *e = cli_start.lookup(&gk);
    if (e && e->type != T_HTTP_CLIENT)
        e = 0;
    if (e && e->obj == pc && (e->flags & E_HTTP_CONN))
        return 0;  /* the entry probe again, after morestack restarted the function (Go <= 1.20) */
    if (e)
        e->flags &= ~(E_HTTP_CONN | E_HTTP2);
    if (!pc || !KNOWN(o_conn) || !KNOWN(o_nw))
        return 0;
    struct gotel_go_key k = {};
    k.tgid = gk.tgid;
    k.goroutine = pc;
    u64 ident = rd64(pc + o_conn + 8);
    struct hconn *h = http_conns.lookup(&k);
    if (rd64(pc + o_nw) == 0) {
        struct hconn n = {};
        if (!netconn_addrs(p, o, pc + o_conn, &n)) {
            http_conns.delete(&k);
            return 0;
        }
        http_conns.update(&k, &n);
        h = http_conns.lookup(&k);
    } else if (h && h->ident != ident) {
        http_conns.delete(&k);  /* the address of a connection that began before tracing */
        return 0;
    }
    if (!h)
        return 0;
    h->count++;  /* counted even without a span to put it in: a missed count would shift later requests */
    if (e) {
        e->obj = pc;
        hconn_copy(e, h, (u32)h->count, 0);
        inject_prepare(p, o, e, pc, GO_PARAM2(ctx), GO_GOROUTINE(ctx));
    }
    return 0;
}

/* An HTTP/2 request's stream, by (tgid, the request's header map), from encodeAndWriteHeaders (on the
 * goroutine that writes the request) to (*Transport).roundTrip's RETs (on the caller's). */
struct h2req {
    u64 cc;
    u32 id;
    u32 xnet;  /* cc is an x/net *ClientConn */
};
BPF_TABLE("lru_hash", struct gotel_go_key, struct h2req, h2_reqs, 16384);

/* (*http2clientStream).encodeAndWriteHeaders(cs, req): the stream id is assigned (addStreamLocked). */
static __always_inline int http2_headers(struct pt_regs *ctx, u32 xnet) {
    GOTEL_GO_PROC(p);
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return 0;
    u64 o_h = o->off[H_H2REQ_HEADER], o_id = o->off[xnet ? HX_CS_ID : H_H2CS_ID], o_cc = o->off[xnet ? HX_CS_CC : H_H2CS_CC];
    if (!KNOWN(o_h) || !KNOWN(o_id) || !KNOWN(o_cc))
        return 0;
    u64 cs = GO_PARAM1(ctx), req = GO_PARAM2(ctx);
    struct gotel_go_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.goroutine = rd64(req + o_h);
    if (!cs || !k.goroutine)
        return 0;
    struct h2req v = {};
    bpf_probe_read_user(&v.id, sizeof(v.id), (void *)(cs + o_id));
    v.cc = rd64(cs + o_cc);
    v.xnet = xnet;
    h2_reqs.update(&k, &v);
    return 0;
}
int http2_client_headers(struct pt_regs *ctx) { return http2_headers(ctx, 0); }
int http2x_client_headers(struct pt_regs *ctx) { return http2_headers(ctx, 1); }

/* At (*Transport).roundTrip's RETs: the HTTP/2 stream the request went out on (aux: its header map). */
static __always_inline void http2_client_stream(struct gotel_go_proc *p, struct gev *e) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o || !e->aux)
        return;
    struct gotel_go_key k = {};
    k.tgid = e->pid;
    k.goroutine = e->aux;
    struct h2req *v = h2_reqs.lookup(&k);
    if (!v)
        return;
    struct hconn *h = h2_conn(p, o, e->pid, v->cc, o->off[v->xnet ? HX_CC_TCONN : H_H2CC_TCONN]);
    if (h && v->id)
        hconn_copy(e, h, v->id, E_HTTP2);
    h2_reqs.delete(&k);
}

/* (*http2responseWriter).handlerDone(rw): the HTTP/2 handler returned (on its goroutine): the span ends
 * with the status it wrote (0: nothing written, net/http answers 200). */
static __always_inline int http2_done(struct pt_regs *ctx, bool xnet) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = srv_ongoing.lookup(&k);
    if (!e || e->type != T_HTTP_SERVER || e->obj != GO_PARAM1(ctx))
        return 0;
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    u64 o_rws = xnet ? 0 : (o ? o->off[H_H2RW_RWS] : GOTEL_GO_OFFSET_UNKNOWN);
    u64 o_status = o ? o->off[xnet ? HX_RWS_STATUS : H_H2RWS_STATUS] : GOTEL_GO_OFFSET_UNKNOWN;
    if (KNOWN(o_rws) && KNOWN(o_status)) {
        e->code = (s32)rd64(rd64(e->obj + o_rws) + o_status);
        e->flags |= E_STATUS;
    }
    http_server_pattern(p, e);
    server_end(&k, e);
    return 0;
}
int http2_server_done(struct pt_regs *ctx) { return http2_done(ctx, false); }
int http2x_server_done(struct pt_regs *ctx) { return http2_done(ctx, true); }
/* ---- end of the HTTP hops block */

/* ---- net/http server: serverHandler.ServeHTTP(rw ResponseWriter, req *Request) ------------------ */

/* rw_tab: the ResponseWriter's itab (0: an x/net *responseWriter, xsc its serverConn) */
static __always_inline int http_server_begin(struct pt_regs *ctx, u64 rw_tab, u64 rw, u64 req, u64 xsc) {
    GOTEL_GO_ENTER(p, k);
    struct gev *prev = srv_ongoing.lookup(&k);
    if (prev && prev->type == T_HTTP_SERVER && prev->obj == rw)
        return 0;  /* the entry probe again (morestack), or ServeHTTP under x/net's runHandler */
    u32 seq = 0;
    struct hconn *h1 = http1_server_count(p, rw_tab, rw, &seq);  /* HTTP hops */
    struct gev *e = srv_begin(&k, T_HTTP_SERVER);
    if (!e)
        return 0;
    e->obj = rw;
    e->aux = req;
    u64 o_m = gotel_go_offset(p, O_REQ_METHOD);
    if (!KNOWN(o_m))
        e->flags |= E_NO_OFFSETS;
    read_str_at(e->method, STR_LEN, req, o_m);
    u64 o_url = gotel_go_offset(p, O_REQ_URL);
    if (KNOWN(o_url))
        read_str_at(e->path, STR_LEN, rd64(req + o_url), gotel_go_offset(p, O_URL_PATH));
    read_str_at(e->peer, PEER_LEN, req, gotel_go_offset(p, O_REQ_REMOTEADDR));  /* "ip:port" of the peer */
    read_str_at(e->req_host, TP_LEN, req, gotel_go_offset(p, O_REQ_HOST));
    if (h1)  /* HTTP hops */
        hconn_copy(e, h1, seq, 0);
    else if (xsc)
        http2x_server_conn(p, e, xsc, rw);
    else
        http2_server_conn(p, e, rw_tab, rw);
    http_header_scan(p, e, req);
    if (e->flags & E_HTTP_TP)
        e->flags |= tp_sampled(e->in_tp[54]);
    return 0;
}
int http_server_start(struct pt_regs *ctx) {
    return http_server_begin(ctx, GO_PARAM2(ctx), GO_PARAM3(ctx), GO_PARAM4(ctx), 0);
}
/* golang.org/x/net/http2.(*serverConn).runHandler(sc, rw, req, handler): every stream x/net serves (h2c's
 * do not pass through serverHandler.ServeHTTP) */
int http2x_server_start(struct pt_regs *ctx) {
    return http_server_begin(ctx, 0, GO_PARAM2(ctx), GO_PARAM3(ctx), GO_PARAM1(ctx));
}

static __always_inline void http_server_done(struct gotel_go_proc *p, struct gotel_go_key *k, struct gev *e) {
    u64 o_st = gotel_go_offset(p, O_RESP_STATUS);
    if (KNOWN(o_st)) {
        /* rw is a *response for HTTP/1.x (the status field is only read through its offset) */
        u64 st = rd64(e->obj + o_st);
        e->code = (s32)st;
        e->flags |= E_STATUS;
    }
    http_server_pattern(p, e);
    server_end(k, e);
}

static __always_inline void http_server_pattern(struct gotel_go_proc *p, struct gev *e) {
    u64 o_pat = gotel_go_offset(p, O_REQ_PATTERN);
    if (KNOWN(o_pat)) {
        u64 s[2] = {};
        bpf_probe_read_user(s, sizeof(s), (void *)(e->aux + o_pat));
        if (s[1]) {
            char *dst = e->path;
            gotel_go_read_str(dst, STR_LEN, s[0], s[1]);
            e->flags |= E_STREAM_ID;  /* path holds the route pattern */
        }
    }
}

/* (*response).finishRequest(w): (*conn).serve calls it right after the handler returned (an entry probe is
 * emulated, ServeHTTP's RETs would be single-stepped). The status is final unless nothing was written,
 * in which case finishRequest answers 200 (the decoder reads 0 so). */
int http_server_finish(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = srv_ongoing.lookup(&k);
    if (!e || e->type != T_HTTP_SERVER || e->obj != GO_PARAM1(ctx))
        return 0;
    http_server_done(p, &k, e);
    return 0;
}

/* ServeHTTP's RETs: only for binaries without finishRequest */
int http_server_end(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = srv_ongoing.lookup(&k);
    if (!e || e->type != T_HTTP_SERVER)
        return 0;
    http_server_done(p, &k, e);
    return 0;
}

/* ---- net/http client: (*Transport).roundTrip(req *Request) (*Response, error) -------------------- */

static __always_inline int http_client_begin(struct pt_regs *ctx, bool xnet) {
    GOTEL_GO_ENTER(p, k);
    struct gev *prev = cli_start.lookup(&k);
    if (prev && prev->type == T_HTTP_CLIENT && (xnet || prev->obj == XNET_CLIENT))
        return 0;  /* x/net's Transport under net/http's (ConfigureTransports) or over it (Go 1.27): one span */
    struct gev *e = cli_begin(&k, T_HTTP_CLIENT);
    if (!e)
        return 0;
    u32 tgid = e->pid;
    u64 req = GO_PARAM2(ctx);
    u64 o_m = gotel_go_offset(p, O_REQ_METHOD);
    if (!KNOWN(o_m))
        e->flags |= E_NO_OFFSETS;
    read_str_at(e->method, STR_LEN, req, o_m);
    u64 o_url = gotel_go_offset(p, O_REQ_URL);
    if (KNOWN(o_url)) {
        u64 u = rd64(req + o_url);
        read_str_at(e->url_path, STR_LEN, u, gotel_go_offset(p, O_URL_PATH));
        read_str_at(e->host, STR_LEN, u, gotel_go_offset(p, O_URL_HOST));  /* host[:port], never userinfo */
        read_str_at(e->scheme, TP_LEN, u, gotel_go_offset(p, O_URL_SCHEME));
    }
    u64 o_hdr = gotel_go_offset(p, H_REQ_HEADER);
    if (KNOWN(o_hdr))
        e->aux = rd64(req + o_hdr);  /* HTTP hops: finds an HTTP/2 request's stream */
    if (xnet)
        e->obj = XNET_CLIENT;
    set_parent(e, tgid, GO_GOROUTINE(ctx));
    return 0;
}
int http_client_start(struct pt_regs *ctx) { return http_client_begin(ctx, false); }
int http2x_client_start(struct pt_regs *ctx) { return http_client_begin(ctx, true); }

static __always_inline int http_client_ret(struct pt_regs *ctx, bool xnet) {
    GOTEL_GO_ENTER(p, k);
    struct gev *e = cli_start.lookup(&k);
    if (!e || e->type != T_HTTP_CLIENT || (xnet && e->obj != XNET_CLIENT))
        return 0;
    u64 resp = GO_PARAM1(ctx);
    u64 o_sc = gotel_go_offset(p, O_RESPONSE_STATUSCODE);
    if (resp && KNOWN(o_sc)) {
        e->code = (s32)rd64(resp + o_sc);
        e->flags |= E_STATUS;
    }
    if (GO_PARAM2(ctx))
        e->flags |= E_NONSTATUS_ERR;
    if (!(e->flags & E_HTTP_CONN))
        http2_client_stream(p, e);  /* HTTP hops */
    emit(e, bpf_ktime_get_ns());
    cli_start.delete(&k);
    return 0;
}
int http_client_end(struct pt_regs *ctx) { return http_client_ret(ctx, false); }
int http2x_client_end(struct pt_regs *ctx) { return http_client_ret(ctx, true); }

/* ---- flow control and stream limits (issue 19): an appended block (receivers/go_ebpf/flowcontrol.py) ----
 * Only rare paths are probed: the `select` where a new client stream waits for the connection's stream quota
 * (in (*http2Client).NewStream) and the one where a write waits for its stream's write quota (the inlined
 * (*writeQuota).get in (*http2Client|Server).Write/write) -- the call of runtime.selectgo (emulated) and the
 * instruction it returns to (single-stepped, but only after a real wait) -- and the frame writers and
 * handlers of RST_STREAM and GOAWAY. The only per-call additions are two fields read at newClientStream
 * (is the call streaming) and one LRU update at newAttemptLocked (which goroutine runs the call). */
#define FLOW_BASE 100
#define FL_H2C_LOOPY (FLOW_BASE + 0)      /* http2Client.loopy */
#define FL_H2S_LOOPY (FLOW_BASE + 1)      /* http2Server.loopy */
#define FL_LW_SENDQUOTA (FLOW_BASE + 2)   /* loopyWriter.sendQuota (connection window left, uint32) */
#define FL_LW_OIWS (FLOW_BASE + 3)        /* loopyWriter.oiws (the peer's initial stream window, uint32) */
#define FL_LW_ESTD (FLOW_BASE + 4)        /* loopyWriter.estdStreams (map[uint32]*outStream) */
#define FL_OS_BOS (FLOW_BASE + 5)         /* outStream.bytesOutStanding (int) */
#define FL_H2C_QUOTACH (FLOW_BASE + 6)    /* http2Client.streamsQuotaAvailable (chan) */
#define FL_H2C_GOAWAY (FLOW_BASE + 7)     /* http2Client.goAway (chan) */
#define FL_GA_LAST (FLOW_BASE + 8)        /* http2.GoAwayFrame.LastStreamID */
#define FL_GA_CODE (FLOW_BASE + 9)        /* http2.GoAwayFrame.ErrCode */
#define FL_GA_DEBUG (FLOW_BASE + 10)      /* http2.GoAwayFrame.debugData ([]byte) */
#define FL_RST_CODE (FLOW_BASE + 11)      /* http2.RSTStreamFrame.ErrCode */
#define FL_SD_SSTREAMS (FLOW_BASE + 12)   /* grpc.StreamDesc.ServerStreams (bool) */
#define FL_SD_CSTREAMS (FLOW_BASE + 13)   /* grpc.StreamDesc.ClientStreams (bool) */
#define FL_MAP_A (FLOW_BASE + 14)         /* estdStreams' layout: classic hmap.B | swiss Map.dirLen */
#define FL_MAP_B (FLOW_BASE + 15)         /* hmap.buckets | Map.dirPtr */
#define FL_MAP_C (FLOW_BASE + 16)         /* hmap.oldbuckets | table.groups */
#define FL_MAP_D (FLOW_BASE + 17)         /* bucket.keys | group.slots */
#define FL_MAP_E (FLOW_BASE + 18)         /* bucket.elems | slot size */
#define FL_MAP_F (FLOW_BASE + 19)         /* bucket size | group size */
#define FL_EAS_RST (FLOW_BASE + 20)       /* transport.earlyAbortStream.rst (bool) */
#define FL_EAS_SID (FLOW_BASE + 21)       /* transport.earlyAbortStream.streamID (uint32) */
#define FL_OS_WQ 127                      /* outStream.wq (*writeQuota), after the HTTP hops block */
#define FL_WQ_QUOTA 128                   /* writeQuota.quota (int32) */
#define GRPC_MAX_FRAME 16384                /* grpc-go's data frames (http2MaxFrameLen) */
#define F_FLOW_SWISS (1 << 24)            /* gotel_go_proc.flags: estdStreams is a swiss map (Go >= 1.24) */
#define F_FLOW_ON (1 << 25)               /* gotel_go_proc.flags: the per-call additions below are on */
#define E_STREAMING (1 << 26)             /* gev.flags: a streaming RPC (client: its StreamDesc; server: processStreamingRPC) */

#define T_FLOW_QUOTA 16   /* a new client stream waited for stream quota (MaxConcurrentStreams) */
#define T_FLOW_WRITE 17   /* a write waited for its write quota */
#define T_FLOW_GOAWAY 18
#define T_FLOW_RST 19
#define T_FLOW_EARLY 20   /* the server answered a stream before any handler saw it (code: 1 reset, 0 not, 2 unknown) */
#define FL_SENT 1         /* fev.flags: direction */
#define FL_RECEIVED 2
#define FL_SERVER 4       /* the server side of the connection (else client; 0 for frames written: unknown) */
#define FL_SPAN 8         /* span_id/method: the call that waited */
/* T_FLOW_QUOTA code: how the wait ended; T_FLOW_WRITE code: what the write waited for */
#define Q_QUOTA 0
#define Q_GOAWAY 1
#define Q_DONE 2          /* the call's context or the connection ended */
#define Q_UNKNOWN 3
#define W_UNKNOWN 0
#define W_STREAM 1
#define W_CONNECTION 2
#define W_WRITE_QUOTA 3
#define DEBUG_LEN 64

struct fev {
    u64 start_ns;
    u64 end_ns;
    u32 pid;
    u32 type;
    u64 g;
    u64 span_id;
    u32 code;
    u32 flags;
    u32 stream_id;
    u32 last_stream_id;
    char method[STR_LEN];
    char debug[DEBUG_LEN];
};

/* a wait in progress, by goroutine: the select's cases (to tell which one ended it) and the record so far */
struct fwait {
    u64 cases;
    u64 transport;
    u64 last_ret;  /* quota waits: when the last select returned (a retry within 5 ms continues the wait) */
    struct fev ev;
};
BPF_TABLE("lru_hash", struct gotel_go_key, struct fwait, flow_waits, 4096);
BPF_ARRAY(zero_fwait, struct fwait, 1);
/* goroutine -> the clientStream of the call it started (set at newAttemptLocked): a direct-mapped cache (an
 * array slot by the goroutine's address, checked on read), as an LRU update on every call cost ~0.4 us */
struct g2cs {
    u64 g;
    u64 cs;
    u32 tgid;
};
#define G2CS_SLOTS 16384
BPF_ARRAY(cli_g2cs, struct g2cs, G2CS_SLOTS);
static __always_inline u32 g2cs_slot(u64 g) { return (u32)((g >> 4) ^ (g >> 18)) & (G2CS_SLOTS - 1); }

static __always_inline void flow_client_desc(struct gotel_go_proc *p, struct gev *e, u64 desc) {
    if (!(p->flags & F_FLOW_ON))
        return;
    u64 o_s = gotel_go_offset(p, FL_SD_SSTREAMS), o_c = gotel_go_offset(p, FL_SD_CSTREAMS);
    if (!desc || !KNOWN(o_s) || !KNOWN(o_c) || o_c != o_s + 1)
        return;
    u16 both = 0;
    bpf_probe_read_user(&both, sizeof(both), (void *)(desc + o_s));
    if (both)
        e->flags |= E_STREAMING;
}

static __always_inline void flow_client_goroutine(struct gotel_go_proc *p, u32 tgid, u64 g, u64 cs) {
    if (!(p->flags & F_FLOW_ON))
        return;
    u32 i = g2cs_slot(g);
    struct g2cs *v = cli_g2cs.lookup(&i);
    if (v) {
        v->g = g;
        v->cs = cs;
        v->tgid = tgid;
    }
}

/* (*Server).processStreamingRPC entry, on the goroutine of the call handleStream started */
int flow_server_streaming(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    struct gotel_go_key k = gotel_go_key_of(ctx);
    struct gev *e = srv_ongoing.lookup(&k);
    if (e && e->type == T_GRPC_SERVER)
        e->flags |= E_STREAMING;
    return 0;
}

/* The call running on this goroutine: a served one (its transport and stream id come with it), or one this
 * goroutine started as a client (through newAttemptLocked: its transport and stream from the attempt). */
static __always_inline u64 flow_call(struct gotel_go_proc *p, struct gotel_go_key *k, struct fev *f, u32 *sid,
                                     bool server) {
    struct gev *a = server ? find_active(k->tgid, k->goroutine) : 0;
    if (server) {
        if (!a || a->type != T_GRPC_SERVER)
            return 0;
        f->span_id = a->span_id;
        f->flags |= FL_SPAN | FL_SERVER;
        __builtin_memcpy(f->method, a->method, STR_LEN);
        *sid = a->stream_id;
        return a->aux;
    }
    u32 i = g2cs_slot(k->goroutine);
    struct g2cs *v = cli_g2cs.lookup(&i);
    if (!v || v->g != k->goroutine || v->tgid != k->tgid || !v->cs)
        return 0;
    u64 cs = v->cs;
    struct gotel_go_key ck = {};
    ck.tgid = k->tgid;
    ck.goroutine = cs;
    struct gev *e = cli_streams.lookup(&ck);
    if (!e)
        return 0;
    f->span_id = e->span_id;
    f->flags |= FL_SPAN;
    __builtin_memcpy(f->method, e->method, STR_LEN);
    u64 o_att = gotel_go_offset(p, O_CS_ATTEMPT), o_t = gotel_go_offset(p, O_ATT_T), o_s = gotel_go_offset(p, O_ATT_S);
    u64 o_id = gotel_go_offset(p, O_STREAM_ID);
    if (!KNOWN(o_att) || !KNOWN(o_t))
        return 0;
    u64 att = rd64(cs + o_att);
    if (!att)
        return 0;
    if (KNOWN(o_s) && KNOWN(o_id)) {
        u64 s = stream_base(p, rd64(att + o_s), O_CLS_STREAM, F_CLS_STREAM_PTR);
        if (s)
            bpf_probe_read_user(sid, sizeof(*sid), (void *)(s + o_id));
    }
    return rd64(att + o_t + 8);  /* ClientTransport interface: its data word, the *http2Client */
}

/* the span id of the client call this goroutine started, 0 when none is found */
static __always_inline u64 flow_client_span(struct gotel_go_key *k) {
    u32 i = g2cs_slot(k->goroutine);
    struct g2cs *v = cli_g2cs.lookup(&i);
    if (!v || v->g != k->goroutine || v->tgid != k->tgid || !v->cs)
        return 0;
    struct gotel_go_key ck = {};
    ck.tgid = k->tgid;
    ck.goroutine = v->cs;
    struct gev *e = cli_streams.lookup(&ck);
    return e ? e->span_id : 0;
}

static __always_inline struct fwait *flow_wait_begin(struct gotel_go_key *k) {
    u32 z = 0;
    struct fwait *zero = zero_fwait.lookup(&z);
    if (!zero || flow_waits.update(k, zero))
        return 0;
    return flow_waits.lookup(k);
}

/* The outStream of stream `id` in loopyWriter.estdStreams (map[uint32]*outStream), walked with the layout
 * DWARF gave (as http_header_scan does): up to 4 buckets or groups; 0 when not found or not readable. */
static __always_inline u64 estd_find(struct gotel_go_proc *p, struct gotel_go_offsets *o, u64 m, u32 id) {
    u64 ma = o->off[FL_MAP_A], mb = o->off[FL_MAP_B], mc = o->off[FL_MAP_C];
    u64 md = o->off[FL_MAP_D], me = o->off[FL_MAP_E], mf = o->off[FL_MAP_F];
    if (!m || !KNOWN(ma) || !KNOWN(mb) || !KNOWN(mc) || !KNOWN(md) || !KNOWN(me) || !KNOWN(mf) || mf > 1024)
        return 0;
    bool swiss = p->flags & F_FLOW_SWISS;
    u64 base = 0, n = 0;
    if (swiss) {
        u64 dirlen = rd64(m + ma), dir = rd64(m + mb);
        if (!dir)
            return 0;
        if (dirlen == 0) {
            base = dir;
            n = 1;
        } else if (dirlen == 1) {
            u64 g[2] = {};
            bpf_probe_read_user(g, sizeof(g), (void *)(rd64(dir) + mc));
            base = g[0];
            n = g[1] + 1;
        }
    } else {
        u8 B = 0;
        bpf_probe_read_user(&B, 1, (void *)(m + ma));
        if (B > 2 || rd64(m + mc))
            return 0;
        base = rd64(m + mb);
        n = 1ULL << B;
    }
    if (!base || n > 4)
        return 0;
    for (int gi = 0; gi < 4; gi++) {
        if (gi >= n)
            break;
        u64 g = base + gi * mf;
        u64 ctrl = rd64(g);
        for (int i = 0; i < 8; i++) {
            u8 cb = ctrl >> (8 * i);
            if (swiss ? (cb & 0x80) : cb < 5)
                continue;
            u64 kaddr = swiss ? g + md + i * me : g + md + i * 4;
            u64 eaddr = swiss ? kaddr + 8 : g + me + i * 8;
            u32 key = 0;
            bpf_probe_read_user(&key, sizeof(key), (void *)kaddr);
            if (key == id)
                return rd64(eaddr);
        }
    }
    return 0;
}

/* What a blocked write waits for, from its transport's loopy writer. The writer is blocked until loopy has
 * sent `need` more of its queued bytes (1 - writeQuota.quota). A window that cannot cover them binds: the
 * connection's (sendQuota) or the stream's (the peer's initial window less its outStream's bytes in flight),
 * the smaller. Otherwise loopy has not written the data yet (the socket is slow): the write quota. loopy gives
 * the quota back before it counts a frame against the windows, so one frame may be missing from what is read:
 * a window is short when it is less than need plus one frame. Without the quota's offsets, need is 1. */
static __always_inline u32 flow_window(struct gotel_go_proc *p, u64 t, u32 sid, bool server) {
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o || !t)
        return W_UNKNOWN;
    u64 o_l = o->off[server ? FL_H2S_LOOPY : FL_H2C_LOOPY], o_sq = o->off[FL_LW_SENDQUOTA];
    u64 o_oiws = o->off[FL_LW_OIWS], o_estd = o->off[FL_LW_ESTD], o_bos = o->off[FL_OS_BOS];
    u64 o_wq = o->off[FL_OS_WQ], o_q = o->off[FL_WQ_QUOTA];
    if (!KNOWN(o_l) || !KNOWN(o_sq) || !KNOWN(o_oiws) || !KNOWN(o_estd) || !KNOWN(o_bos))
        return W_UNKNOWN;
    u64 lw = rd64(t + o_l);
    if (!lw)
        return W_UNKNOWN;
    u32 sq = 0, oiws = 0;
    bpf_probe_read_user(&sq, sizeof(sq), (void *)(lw + o_sq));
    u64 os = estd_find(p, o, rd64(lw + o_estd), sid);
    if (!os)
        return sq == 0 ? W_CONNECTION : W_UNKNOWN;
    s64 need = 1, slack = 0;
    if (KNOWN(o_wq) && KNOWN(o_q)) {
        u64 wq = rd64(os + o_wq);
        s32 quota = 1;
        if (wq && bpf_probe_read_user(&quota, sizeof(quota), (void *)(wq + o_q)) == 0 && quota <= 0) {
            need = 1 - (s64)quota;
            slack = GRPC_MAX_FRAME;
        }
    }
    bpf_probe_read_user(&oiws, sizeof(oiws), (void *)(lw + o_oiws));
    s64 swl = (s64)oiws - (s64)rd64(os + o_bos);
    if ((s64)sq < need + slack && (s64)sq <= swl)
        return W_CONNECTION;
    return swl < need + slack ? W_STREAM : W_WRITE_QUOTA;
}

/* the `call runtime.selectgo` in NewStream: the stream quota is spent, the call waits (cases in ax) */
int flow_quota_wait(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    u64 now = bpf_ktime_get_ns();
    struct fwait *w = flow_waits.lookup(&k);
    /* the same call (a later call of this goroutine is a new wait, however soon it comes) */
    if (w && w->ev.type == T_FLOW_QUOTA && w->last_ret && now - w->last_ret < 5000000ULL &&
        w->ev.span_id == flow_client_span(&k)) {
        w->cases = GO_PARAM1(ctx);  /* woken but the quota was taken again: the same wait goes on */
        w->last_ret = 0;
        return 0;
    }
    w = flow_wait_begin(&k);
    if (!w)
        return 0;
    w->cases = GO_PARAM1(ctx);
    w->ev.start_ns = now;
    w->ev.pid = k.tgid;
    w->ev.type = T_FLOW_QUOTA;
    w->ev.g = k.goroutine;
    u32 sid = 0;
    w->transport = flow_call(p, &k, &w->ev, &sid, false);
    return 0;
}

/* the instruction selectgo returns to in NewStream: the chosen case in ax. Each return is submitted (the
 * same start: user space keeps the last); a retry within 5 ms goes on with the same record. */
int flow_quota_woken(struct pt_regs *ctx) {
    GOTEL_GO_ENTER(p, k);
    struct fwait *w = flow_waits.lookup(&k);
    if (!w || w->ev.type != T_FLOW_QUOTA || w->last_ret)
        return 0;
    u64 now = bpf_ktime_get_ns();
    w->last_ret = now;
    u32 code = Q_UNKNOWN;
    u64 chosen = GO_PARAM1(ctx);
    u64 o_q = gotel_go_offset(p, FL_H2C_QUOTACH), o_ga = gotel_go_offset(p, FL_H2C_GOAWAY);
    if (w->cases && chosen < 8 && w->transport && KNOWN(o_q) && KNOWN(o_ga)) {
        u64 c = rd64(w->cases + chosen * 16);  /* scase{c *hchan, elem unsafe.Pointer} */
        code = c == rd64(w->transport + o_q) ? Q_QUOTA : c == rd64(w->transport + o_ga) ? Q_GOAWAY : Q_DONE;
    }
    struct fev *r = gotel_reserved(go_events.ringbuf_reserve(sizeof(struct fev)));
    if (!r)
        return 0;
    __builtin_memcpy(r, &w->ev, sizeof(*r));
    r->end_ns = now;
    r->code = code;
    go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    return 0;
}

/* the `call runtime.selectgo` of the write quota in (*http2Client|Server).Write/write: the stream's quota
 * is spent, the writer waits. Which limit made it wait is read now. */
static __always_inline int flow_write_wait(struct pt_regs *ctx, bool server) {
    GOTEL_GO_ENTER(p, k);
    struct fwait *w = flow_wait_begin(&k);
    if (!w)
        return 0;
    w->ev.start_ns = bpf_ktime_get_ns();
    w->ev.pid = k.tgid;
    w->ev.type = T_FLOW_WRITE;
    w->ev.g = k.goroutine;
    u32 sid = 0;
    u64 t = flow_call(p, &k, &w->ev, &sid, server);
    if (server)
        w->ev.flags |= FL_SERVER;
    w->ev.stream_id = sid;
    w->ev.code = (w->ev.flags & FL_SPAN) && sid ? flow_window(p, t, sid, server) : W_UNKNOWN;
    return 0;
}

int flow_write_wait_client(struct pt_regs *ctx) { return flow_write_wait(ctx, false); }
int flow_write_wait_server(struct pt_regs *ctx) { return flow_write_wait(ctx, true); }

int flow_write_woken(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    struct gotel_go_key k = gotel_go_key_of(ctx);
    struct fwait *w = flow_waits.lookup(&k);
    if (!w || w->ev.type != T_FLOW_WRITE)
        return 0;
    struct fev *r = gotel_reserved(go_events.ringbuf_reserve(sizeof(struct fev)));
    if (r) {
        __builtin_memcpy(r, &w->ev, sizeof(*r));
        r->end_ns = bpf_ktime_get_ns();
        go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    }
    flow_waits.delete(&k);
    return 0;
}

static __always_inline struct fev *flow_frame(u32 type, u32 flags) {
    struct fev *r = gotel_reserved(go_events.ringbuf_reserve(sizeof(struct fev)));
    if (!r)
        return 0;
    __builtin_memset(r, 0, sizeof(*r));
    r->start_ns = r->end_ns = bpf_ktime_get_ns();
    r->pid = bpf_get_current_pid_tgid() >> 32;
    r->type = type;
    r->flags = flags;
    return r;
}

/* http2.(*Framer).WriteGoAway(f, maxStreamID uint32, code ErrCode, debugData []byte) */
int flow_goaway_sent(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    struct fev *r = flow_frame(T_FLOW_GOAWAY, FL_SENT);
    if (!r)
        return 0;
    r->last_stream_id = (u32)GO_PARAM2(ctx);
    r->code = (u32)GO_PARAM3(ctx);
    u64 len = GO_PARAM5(ctx);
    gotel_go_read_str(r->debug, DEBUG_LEN, GO_PARAM4(ctx), len);
    go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    return 0;
}

/* http2.(*Framer).WriteRSTStream(f, streamID uint32, code ErrCode) */
int flow_rst_sent(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    struct fev *r = flow_frame(T_FLOW_RST, FL_SENT);
    if (!r)
        return 0;
    r->stream_id = (u32)GO_PARAM2(ctx);
    r->code = (u32)GO_PARAM3(ctx);
    go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    return 0;
}

/* (*http2Client).handleGoAway(f *http2.GoAwayFrame) */
int flow_goaway_received(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    u64 f = GO_PARAM2(ctx);
    u64 o_last = gotel_go_offset(p, FL_GA_LAST), o_code = gotel_go_offset(p, FL_GA_CODE);
    u64 o_dbg = gotel_go_offset(p, FL_GA_DEBUG);
    if (!f || !KNOWN(o_last) || !KNOWN(o_code))
        return 0;
    struct fev *r = flow_frame(T_FLOW_GOAWAY, FL_RECEIVED);
    if (!r)
        return 0;
    bpf_probe_read_user(&r->last_stream_id, sizeof(u32), (void *)(f + o_last));
    bpf_probe_read_user(&r->code, sizeof(u32), (void *)(f + o_code));
    if (KNOWN(o_dbg)) {
        u64 d[2] = {};
        bpf_probe_read_user(d, sizeof(d), (void *)(f + o_dbg));
        gotel_go_read_str(r->debug, DEBUG_LEN, d[0], d[1]);
    }
    go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    return 0;
}

/* (*http2Client|Server).handleRSTStream(f *http2.RSTStreamFrame) */
static __always_inline int flow_rst_received(struct pt_regs *ctx, u32 side) {
    GOTEL_GO_PROC(p);
    u64 f = GO_PARAM2(ctx);
    u64 o_sid = gotel_go_offset(p, O_FH_STREAMID), o_code = gotel_go_offset(p, FL_RST_CODE);
    if (!f || !KNOWN(o_sid) || !KNOWN(o_code))
        return 0;
    struct fev *r = flow_frame(T_FLOW_RST, FL_RECEIVED | side);
    if (!r)
        return 0;
    bpf_probe_read_user(&r->stream_id, sizeof(u32), (void *)(f + o_sid));  /* FrameHeader embedded at 0 */
    bpf_probe_read_user(&r->code, sizeof(u32), (void *)(f + o_code));
    go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    return 0;
}

int flow_rst_received_client(struct pt_regs *ctx) { return flow_rst_received(ctx, 0); }
int flow_rst_received_server(struct pt_regs *ctx) { return flow_rst_received(ctx, FL_SERVER); }

/* (*loopyWriter).earlyAbortStreamHandler(eas *earlyAbortStream), grpc >= 1.5x: the server answers a stream
 * with a status before any handler saw it (InTapHandle refused it, a bad content-type or timeout, headers too
 * large), and resets it when the client had not ended it. Rare: only such streams come here. */
int flow_early_abort(struct pt_regs *ctx) {
    GOTEL_GO_PROC(p);
    u64 eas = GO_PARAM2(ctx);
    u64 o_rst = gotel_go_offset(p, FL_EAS_RST), o_sid = gotel_go_offset(p, FL_EAS_SID);
    if (!eas)
        return 0;
    struct fev *r = flow_frame(T_FLOW_EARLY, FL_SENT | FL_SERVER);
    if (!r)
        return 0;
    r->code = 2;
    if (KNOWN(o_rst)) {
        u8 rst = 0;
        bpf_probe_read_user(&rst, 1, (void *)(eas + o_rst));
        r->code = rst ? 1 : 0;
    }
    if (KNOWN(o_sid))
        bpf_probe_read_user(&r->stream_id, sizeof(u32), (void *)(eas + o_sid));
    go_events.ringbuf_submit(r, GOTEL_RB_FLAGS);
    return 0;
}
/* ---- end of the flow control block */
