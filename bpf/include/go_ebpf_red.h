/* go_ebpf: RED metrics aggregated in the kernel and sampling decided at the source (issue 20).
 *
 * Included by bpf/go_ebpf.c after struct gev and its flags. At a call's end (call_done) its duration,
 * deadline budget, exceeded / propagated deadline are added to go_red under a key holding exactly what the
 * metric labels are made of, and the call is kept or not. User space (receivers/go_ebpf/red.py) reads
 * go_red as deltas each export interval, so the metrics are exact whatever is sampled, and the agent's cost
 * for them is per interval and series, not per call. Layouts: receivers/go_ebpf/red.py RED_KEY / RED_VAL. */
#ifndef GO_EBPF_RED_H
#define GO_EBPF_RED_H

/* Written once by user space. Zero (never written): every call is kept. */
struct go_cfg {
    u64 mono_to_unix;  /* CLOCK_REALTIME - CLOCK_MONOTONIC, ns: deadlines are Go wall times */
    u64 slow_ns;       /* sampling: calls at least this long are kept (0: no such rule) */
    u32 keep_below;    /* sampling: the fraction of the rest kept, as a threshold on a 32-bit hash */
    u32 sampling;      /* 0: keep every call */
};
BPF_ARRAY(go_cfg, struct go_cfg, 1);
/* calls kept (0) and not kept (1) by sampling */
BPF_PERCPU_ARRAY(go_sampling_counts, u64, 2);

#define RED_M 16   /* HTTP method */
struct red_key {
    u32 pid;
    u8 type;
    u8 iplen;
    u16 port;          /* gRPC: the server's port (server.port) */
    s32 code;
    u32 flags;         /* those of RED_KEY_FLAGS */
    u8 ip[16];         /* gRPC: the server's address */
    char m[RED_M];     /* HTTP: the request method */
    char s1[STR_LEN];  /* gRPC: the method; HTTP server: the route (E_STREAM_ID); HTTP client: host[:port] */
    char s2[TP_LEN];   /* HTTP server: the Host header; HTTP client: the URL scheme */
};
#define RED_GRPC_FLAGS (E_STATUS | E_NONSTATUS_ERR | E_NO_OFFSETS | E_ADDR)
#define RED_HTTP_FLAGS (E_STATUS | E_NONSTATUS_ERR | E_NO_OFFSETS | E_STREAM_ID)

#define RED_NB 16  /* events.py DURATION_BOUNDS (15) + 1 */
#define RED_BB 9   /* events.py BUDGET_BOUNDS (8) + 1 */
struct red_val {
    u64 n;
    u64 sum_ns;
    u64 min_ns1;  /* the least duration + 1 (0: none yet) */
    u64 max_ns;
    u64 b[RED_NB];
    u64 bn;       /* calls with a deadline budget */
    u64 bsum;     /* sum of elapsed / budget, in millionths */
    u64 bb[RED_BB];
    u64 exceeded;
    u64 propagated;
};
BPF_HASH(go_red, struct red_key, struct red_val, 16384);
BPF_ARRAY(zero_red, struct red_val, 1);

#define WALL_TO_INTERNAL 59453308800LL  /* events.py _WALL_TO_INTERNAL */
#define UNIX_TO_INTERNAL 62135596800LL

/* a Go time.Time {wall, ext} as Unix ns (events.go_time_unix_ns) */
static __always_inline s64 go_unix_ns(u64 wall, s64 ext) {
    s64 nsec = wall & ((1ULL << 30) - 1);
    s64 sec = (wall >> 63) ? (s64)(WALL_TO_INTERNAL + ((wall << 1) >> 31)) : ext;
    return (sec - UNIX_TO_INTERNAL) * 1000000000LL + nsec;
}

/* the traceparent's flags end in an odd hex digit: sampled */
static __always_inline u32 tp_sampled(char c) {
    return (c == '1' || c == '3' || c == '5' || c == '7' || c == '9' || c == 'b' || c == 'd' || c == 'f')
               ? E_SAMPLED_TP : 0;
}

static __always_inline void red_add(struct gev *e, u64 d, s64 budget, bool dl, bool exceeded) {
    struct red_key k = {};
    k.pid = e->pid;
    k.type = e->type;
    k.code = e->code;
    if (e->type <= T_GRPC_CLIENT) {
        k.flags = e->flags & RED_GRPC_FLAGS;
        __builtin_memcpy(k.s1, e->method, STR_LEN);
        if (e->flags & E_ADDR) {
            bool srv = e->type == T_GRPC_SERVER;
            k.port = srv ? e->lport : e->rport;
            k.iplen = srv ? e->liplen : e->riplen;
            if (srv)
                __builtin_memcpy(k.ip, e->lip, 16);
            else
                __builtin_memcpy(k.ip, e->rip, 16);
        }
    } else {
        k.flags = e->flags & RED_HTTP_FLAGS;
        __builtin_memcpy(k.m, e->method, RED_M - 1);
        if (e->type == T_HTTP_SERVER) {
            if (e->flags & E_STREAM_ID)
                __builtin_memcpy(k.s1, e->path, STR_LEN);
        } else {
            __builtin_memcpy(k.s1, e->host, STR_LEN);
        }
        __builtin_memcpy(k.s2, e->req_host, TP_LEN);  /* HTTP server: the Host header; client: the scheme (one slot) */
    }
    struct red_val *v = go_red.lookup(&k);
    if (!v) {
        u32 z = 0;
        struct red_val *zero = zero_red.lookup(&z);
        if (!zero)
            return;
        go_red.insert(&k, zero);  /* fails when another CPU inserted it first: then found below */
        v = go_red.lookup(&k);
        if (!v) {
            gotel_count_lost(GOTEL_LOST_FULL);
            return;
        }
    }
    /* bucket = the number of bounds below d (bisect_left of events.DURATION_BOUNDS, in ns) */
    u32 i = (d > 0) + (d > 5000000ULL) + (d > 10000000ULL) + (d > 25000000ULL) + (d > 50000000ULL) +
            (d > 75000000ULL) + (d > 100000000ULL) + (d > 250000000ULL) + (d > 500000000ULL) +
            (d > 750000000ULL) + (d > 1000000000ULL) + (d > 2500000000ULL) + (d > 5000000000ULL) +
            (d > 7500000000ULL) + (d > 10000000000ULL);
    if (i < RED_NB)
        __sync_fetch_and_add(&v->b[i], 1);
    __sync_fetch_and_add(&v->sum_ns, d);
    if (!v->min_ns1 || d + 1 < v->min_ns1)
        v->min_ns1 = d + 1;  /* min and max race between CPUs (rarely off); counts are atomic */
    if (d > v->max_ns)
        v->max_ns = d;
    if (dl) {
        if (budget > 0) {
            u64 b = budget, x = d * 100;
            u32 j = (x > b * 10) + (x > b * 25) + (x > b * 50) + (x > b * 75) + (x > b * 90) + (x > b * 100) +
                    (x > b * 150) + (x > b * 200);
            if (j < RED_BB)
                __sync_fetch_and_add(&v->bb[j], 1);
            __sync_fetch_and_add(&v->bsum, d * 1000000 / b);
            __sync_fetch_and_add(&v->bn, 1);
        }
        if (exceeded)
            __sync_fetch_and_add(&v->exceeded, 1);
        else if (e->code == 4)
            __sync_fetch_and_add(&v->propagated, 1);
    }
    __sync_fetch_and_add(&v->n, 1);  /* last: a reader that sees n sees the buckets it counts */
}

/* The sampling key of a call: its connection's client port, server port and HTTP/2 stream id (or HTTP/1
 * request order), which the client and the server of one call both know, so two processes decide alike
 * without talking. Without them (no addresses read): the local trace id. */
static __always_inline u64 sample_key(struct gev *e) {
    bool srv = e->type == T_GRPC_SERVER || e->type == T_HTTP_SERVER;
    bool conn = e->type <= T_GRPC_CLIENT ? (e->flags & (E_ADDR | E_STREAM_ID)) == (E_ADDR | E_STREAM_ID)
                                         : (e->flags & E_HTTP_CONN) != 0;
    if (!conn || !e->lport || !e->rport)
        return e->trace_lo;
    u64 cport = srv ? e->rport : e->lport, sport = srv ? e->lport : e->rport;
    return (cport << 48) | (sport << 32) | e->stream_id;
}

static __always_inline void sampling_count(int i) {
    u64 *v = go_sampling_counts.lookup(&i);
    if (v)
        (*v)++;
}

/* A call ended (e->end_ns set): its metrics counted; true when it is kept (every call without sampling;
 * with it: errors, calls past their own deadline, slow calls, a sampled incoming traceparent, and the
 * configured fraction of the rest by sample_key). */
static __always_inline bool call_done(struct gev *e) {
    u32 z = 0;
    struct go_cfg *c = go_cfg.lookup(&z);
    if (!c)
        return true;
    s64 end_unix = (s64)(e->end_ns + c->mono_to_unix);
    s64 start_unix = (e->flags & E_BEGIN_WALL) ? go_unix_ns(e->aux, (s64)e->obj) : (s64)(e->start_ns + c->mono_to_unix);
    u64 d = end_unix > start_unix ? end_unix - start_unix : 0;
    bool dl = (e->flags & E_DEADLINE) && e->type <= T_GRPC_CLIENT;
    s64 deadline = dl ? go_unix_ns(e->dl_wall, e->dl_ext) : 0;
    bool exceeded = dl && end_unix >= deadline;
    red_add(e, d, deadline - start_unix, dl, exceeded);
    if (!c->sampling)
        return true;
    bool err;
    if (e->type <= T_GRPC_CLIENT)
        err = e->code != 0 && (e->flags & (E_STATUS | E_NONSTATUS_ERR));
    else  /* 4xx on both sides: the client and the server of one request agree */
        err = (e->flags & E_NONSTATUS_ERR) || ((e->flags & E_STATUS) && e->code >= 400);
    bool keep = err || exceeded || (e->flags & E_SAMPLED_TP) || (c->slow_ns && d >= c->slow_ns) ||
                (mix64(sample_key(e)) >> 32) < c->keep_below;
    sampling_count(keep ? 0 : 1);
    return keep;
}

#endif
