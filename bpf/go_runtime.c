/* go_runtime receiver: GC cycles with their stop-the-world pauses, and goroutine creations/exits.
 *
 * Uprobes on runtime functions (entry, and every RET instead of uretprobes: DESIGN.md section 6).
 * Per-process facts (what this Go version passes in registers) come from the `procs` map, keyed by
 * tgid, filled by user space, so one compiled program serves every Go version on the node.
 *
 * A stop-the-world pause is measured as the runtime itself measures it where the registers carry the
 * runtime's own stamps (Go >= 1.22: startTheWorldWithSema(now, worldStop{reason, startedStopping..}),
 * and its return value is the "world started" time on every version); Go's nanotime() and
 * bpf_ktime_get_ns() are the same CLOCK_MONOTONIC.
 */
#include <uapi/linux/ptrace.h>
#include "gotel_log2.h"
#include "gotel_ringbuf.h"

#define F_STW_REASON 1  /* stopTheWorldWithSema(reason stwReason) in AX (Go >= 1.21) */
#define F_WORLDSTOP 2   /* startTheWorldWithSema(now int64 AX, worldStop{reason BX, startedStopping CX}) (>= 1.22) */

#define KIND_OTHER 0
#define KIND_SWEEP 1
#define KIND_MARK 2
#define SLOTS 40

/* Go's stwReason values (runtime/proc.go, stable since 1.21) */
#define STW_GC_MARK_TERM 1
#define STW_GC_SWEEP_TERM 2

struct proc_cfg {
    u32 flags;
    u32 pad;
};

struct gc_state {
    u64 stw_start;
    u64 cycle_start;
    u64 sweep_ns;
    u64 mark_ns;
    u32 kind;        /* kind of the STW in progress */
    u32 pad0;
    u32 in_markterm; /* gcMarkTermination entered: the next mark-term start-the-world ends the cycle */
    u32 stws;        /* STW pauses in this cycle (restarted mark terminations add some) */
    u64 seq;         /* cycle number, so that a late RET does not touch the next cycle */
    /* Go < 1.21 (no stwReason): how many threads are inside runtime.gcStart / runtime.gcMarkDone.
     * Counters, not a flag: a late RET of one must not clear the other's window. */
    s64 in_gcstart;
    s64 in_markdone;
};

/* Taken at startTheWorldWithSema entry, while the world is still stopped (so no other STW can race),
 * finished at its RET on the same thread (it runs on the M's g0): by then the world runs again and
 * the next GC may already be stopping it. */
struct pending {
    u64 start;
    u64 entry;
    u64 cycle_start;
    u64 sweep_ns;
    u64 mark_ns;
    u64 seq;
    u32 kind;
    u32 ends_cycle;
    u32 stws;
    u32 pad;
};

struct pause_key {
    u32 tgid;
    u32 kind;
    u32 slot;
    u32 pad;
};

struct counters {
    u64 gcs;
    u64 created;
    u64 exited;
    u64 stw_ns[3];
    u64 stw_count[3];
    u64 assist_ns;
    u64 assists;
};

struct creator_key {
    u32 tgid;
    u32 pad;
    u64 pc;
};

struct gc_event {
    u64 start;
    u64 end;
    u64 sweep_ns;
    u64 mark_ns;
    u32 tgid;
    u32 stws;
};

struct assist_key {
    u32 tgid;
    u32 pad;
    u64 g;
};

BPF_HASH(procs, u32, struct proc_cfg, 4096);
BPF_HASH(gcstate, u32, struct gc_state, 4096);
BPF_HASH(pending, u32, struct pending, 4096); /* by thread id */
BPF_PERCPU_HASH(counts, u32, struct counters, 4096);
BPF_PERCPU_HASH(pauses, struct pause_key, u64, 16384);
BPF_PERCPU_HASH(creators, struct creator_key, u64, 65536);
BPF_HASH(assist_start, struct assist_key, u64, 65536);
GOTEL_RINGBUF(gc_events, 16);

static __always_inline struct counters *counters_of(u32 tgid) {
    struct counters zero = {};
    return counts.lookup_or_try_init(&tgid, &zero);
}

static __always_inline struct gc_state *state_of(u32 tgid) {
    struct gc_state *s = gcstate.lookup(&tgid);
    if (s)
        return s;
    struct gc_state zero = {};
    gcstate.update(&tgid, &zero);
    return gcstate.lookup(&tgid);
}

int stw_stop(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_cfg *cfg = procs.lookup(&tgid);
    if (!cfg)
        return 0;
    struct gc_state *s = state_of(tgid);
    if (!s)
        return 0;
    s->stw_start = bpf_ktime_get_ns();
    if (cfg->flags & F_STW_REASON) {
        u8 reason = (u8)ctx->ax;
        s->kind = reason == STW_GC_MARK_TERM ? KIND_MARK : reason == STW_GC_SWEEP_TERM ? KIND_SWEEP : KIND_OTHER;
    } else {
        s->kind = s->in_gcstart > 0 ? KIND_SWEEP : s->in_markdone > 0 ? KIND_MARK : KIND_OTHER;
    }
    return 0;
}

int stw_start_entry(struct pt_regs *ctx) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tgid = pt >> 32, tid = (u32)pt;
    struct proc_cfg *cfg = procs.lookup(&tgid);
    if (!cfg)
        return 0;
    struct gc_state *s = gcstate.lookup(&tgid);
    if (!s || !s->stw_start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct pending p = {};
    p.start = s->stw_start;
    if (cfg->flags & F_WORLDSTOP) {
        u64 started = ctx->cx; /* worldStop.startedStopping: the runtime's own start of the pause */
        if (started && started <= now && now - started < 10000000000ULL)
            p.start = started;
    } else {
        /* Go < 1.22 stamps the end of a mark-termination pause before it starts the world again */
        p.entry = now;
    }
    p.kind = s->kind > KIND_MARK ? KIND_OTHER : s->kind;
    if (p.kind == KIND_SWEEP) {
        s->seq++;
        s->cycle_start = p.start;
        s->sweep_ns = 0;
        s->mark_ns = 0;
        s->stws = 1;
        s->in_markterm = 0;
    } else if (p.kind == KIND_MARK) {
        s->stws++;
        if (s->in_markterm) {
            p.ends_cycle = 1;
            p.cycle_start = s->cycle_start;
            p.sweep_ns = s->sweep_ns;
            p.mark_ns = s->mark_ns;
            p.stws = s->stws;
            s->in_markterm = 0;
            s->cycle_start = 0;
            s->sweep_ns = 0;
            s->mark_ns = 0;
            s->stws = 0;
        }
    }
    p.seq = s->seq;
    s->stw_start = 0;
    s->kind = KIND_OTHER;
    pending.update(&tid, &p);
    return 0;
}

int stw_start_ret(struct pt_regs *ctx) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tgid = pt >> 32, tid = (u32)pt;
    struct pending *p = pending.lookup(&tid);
    if (!p)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 end = ctx->ax; /* startTheWorldWithSema returns the runtime's "world started" stamp */
    if (end < p->start || end > now)
        end = now;
    u32 kind = p->kind;
    if (kind > KIND_MARK)
        kind = KIND_OTHER;
    if (kind == KIND_MARK && p->entry && p->entry >= p->start && p->entry < end)
        end = p->entry;
    u64 d = end - p->start;
    struct counters *c = counters_of(tgid);
    if (c) {
        c->stw_ns[kind] += d;
        c->stw_count[kind]++;
    }
    struct pause_key pk = {.tgid = tgid, .kind = kind, .slot = gotel_log2(d)};
    if (pk.slot >= SLOTS)
        pk.slot = SLOTS - 1;
    u64 zero = 0;
    u64 *h = pauses.lookup_or_try_init(&pk, &zero);
    if (h)
        (*h)++;
    struct gc_state *s = gcstate.lookup(&tgid);
    if (kind == KIND_SWEEP) {
        if (s && s->seq == p->seq)
            s->sweep_ns = d;
    } else if (kind == KIND_MARK) {
        if (p->ends_cycle) {
            struct gc_event *e = gotel_reserved(gc_events.ringbuf_reserve(sizeof(*e)));
            if (e) {
                e->start = p->cycle_start;
                e->end = end;
                e->sweep_ns = p->sweep_ns;
                e->mark_ns = p->mark_ns + d;
                e->tgid = tgid;
                e->stws = p->stws;
                gc_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
            }
            if (c) /* after the event is committed: whoever sees the count can read the event */
                c->gcs++;
        } else if (s && s->seq == p->seq) {
            s->mark_ns += d;
        }
    }
    pending.delete(&tid);
    return 0;
}

int mark_termination(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!procs.lookup(&tgid))
        return 0;
    struct gc_state *s = gcstate.lookup(&tgid);
    if (s)
        s->in_markterm = 1;
    return 0;
}

static __always_inline int window(int which, s64 delta) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!procs.lookup(&tgid))
        return 0;
    struct gc_state *s = state_of(tgid);
    if (!s)
        return 0;
    s64 *c = which == KIND_SWEEP ? &s->in_gcstart : &s->in_markdone;
    if (delta < 0 && *c <= 0)
        return 0; /* the entry happened before we attached */
    __sync_fetch_and_add(c, delta);
    return 0;
}

int gcstart_entry(struct pt_regs *ctx) { return window(KIND_SWEEP, 1); }
int gcstart_ret(struct pt_regs *ctx) { return window(KIND_SWEEP, -1); }
int gcmarkdone_entry(struct pt_regs *ctx) { return window(KIND_MARK, 1); }
int gcmarkdone_ret(struct pt_regs *ctx) { return window(KIND_MARK, -1); }

int newproc1(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!procs.lookup(&tgid))
        return 0;
    struct counters *c = counters_of(tgid);
    if (c)
        c->created++;
    /* newproc1(fn *funcval AX, callergp *g BX, callerpc uintptr CX, ...): who spawns goroutines */
    struct creator_key k = {.tgid = tgid, .pc = ctx->cx};
    u64 zero = 0;
    u64 *n = creators.lookup_or_try_init(&k, &zero);
    if (n)
        (*n)++;
    return 0;
}

int goexit1(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!procs.lookup(&tgid))
        return 0;
    struct counters *c = counters_of(tgid);
    if (c)
        c->exited++;
    return 0;
}

/* Mark assist (optional): gcAssistAlloc(gp *g) entry and RETs, keyed by goroutine (r14). */
int assist_entry(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!procs.lookup(&tgid))
        return 0;
    struct assist_key k = {.tgid = tgid, .g = ctx->r14};
    u64 now = bpf_ktime_get_ns();
    assist_start.update(&k, &now);
    return 0;
}

int assist_ret(struct pt_regs *ctx) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct assist_key k = {.tgid = tgid, .g = ctx->r14};
    u64 *t = assist_start.lookup(&k);
    if (!t)
        return 0;
    u64 d = bpf_ktime_get_ns() - *t;
    assist_start.delete(&k);
    struct counters *c = counters_of(tgid);
    if (c) {
        c->assist_ns += d;
        c->assists++;
    }
    return 0;
}
