/* sched receiver: run-queue latency, off-CPU time and slow syscalls of selected processes.
 *
 * Everything is aggregated in kernel maps (per-CPU, so no atomics) and read as cumulative values at
 * the collection interval: the cost per event is a few hash lookups, user space cost does not grow
 * with the event rate. Only slow syscalls (>= SLOW_NS, rare by definition) are sent as events.
 *
 * Header-light (DESIGN.md section 6): tracepoint arguments and helpers only, no kernel struct.
 * A thread's process (tgid) and cgroup are learned when the thread itself is current (switching out,
 * or creating a thread), because at wake-up time the current task is the waker, not the wakee.
 *
 * Defines: SLOW_NS (slow-syscall threshold), BLOCKED_MASK (prev_state bits that mean "blocked", read
 * from the sched_switch format at run time; anything else, including the preempt bit, is runnable).
 */
#include "gotel_ringbuf.h"

#define SLOTS 40

struct thread_info {
    u32 tgid;
    u32 pad;
    u64 cgid;
};

struct rq_key {
    u32 tgid;
    u32 slot;
    u64 cgid;
};

struct total {
    u64 ns;
    u64 count;
};

struct off_key {
    u32 tgid;
    u32 voluntary;
};

struct off_start {
    u64 ts;
    u64 voluntary;
};

struct sc_key {
    u32 tgid;
    u32 nr;
};

struct sc_start {
    u64 ts;
    u64 nr;
};

struct slow_event {
    u64 ts;
    u64 dur;
    u32 tgid;
    u32 tid;
    u32 nr;
    s32 stackid;
    u64 cgid;
};

/* Code ranges where a process parks on purpose (Go: runtime.usleep in sysmon, runtime.futex ...):
 * a slow syscall whose user IP is inside one is not reported. */
#define PARK_RANGES 4
struct park {
    u64 lo[PARK_RANGES];
    u64 hi[PARK_RANGES];
};

BPF_HASH(targets, u32, u8, 4096);
BPF_HASH(park_ranges, u32, struct park, 4096);                 /* selected tgids, from discovery */
BPF_ARRAY(ignored_syscalls, u8, 512);             /* syscall numbers never reported as slow */
BPF_HASH(threads, u32, struct thread_info, 65536); /* tid -> process and cgroup */
BPF_HASH(runnable, u32, u64, 65536);               /* tid -> when it became runnable */
BPF_HASH(offstart, u32, struct off_start, 65536);  /* tid -> when it left the CPU */
BPF_PERCPU_HASH(rq_hist, struct rq_key, u64, 16384);
BPF_PERCPU_HASH(rq_total, struct rq_key, struct total, 4096); /* slot = 0 */
BPF_PERCPU_HASH(offcpu, struct off_key, struct total, 8192);
BPF_HASH(sc_inflight, u32, struct sc_start, 65536);
BPF_PERCPU_HASH(sc_slow, struct sc_key, struct total, 16384);
BPF_STACK_TRACE(stacks, 4096);
GOTEL_RINGBUF(slow_events, 64);

static __always_inline u32 log2l(u64 v) {
    u32 r = 0;
#pragma unroll
    for (int i = 0; i < 6; i++) {
        u32 shift = 32 >> i;
        if (v >= (1ULL << shift)) {
            v >>= shift;
            r += shift;
        }
    }
    return r;
}

static __always_inline struct thread_info *learn_current(u32 tid, u32 tgid) {
    struct thread_info *ti = threads.lookup(&tid);
    if (ti) {
        u64 cg = bpf_get_current_cgroup_id();
        if (ti->cgid != cg)
            ti->cgid = cg;
        if (ti->tgid != tgid)
            ti->tgid = tgid; /* a forked child first taken for a thread of its parent */
        return ti;
    }
    if (!targets.lookup(&tgid))
        return 0;
    struct thread_info n = {.tgid = tgid, .cgid = bpf_get_current_cgroup_id()};
    threads.update(&tid, &n);
    return threads.lookup(&tid);
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 tid = args->pid;
    if (!threads.lookup(&tid))
        return 0;
    u64 ts = bpf_ktime_get_ns();
    runnable.update(&tid, &ts);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new) {
    u32 tid = args->pid;
    if (!threads.lookup(&tid)) {
        /* a new thread of a selected process: the creator is current and shares tgid and cgroup
         * (a forked child process is corrected when it first switches out) */
        u32 tgid = bpf_get_current_pid_tgid() >> 32;
        if (!targets.lookup(&tgid))
            return 0;
        struct thread_info n = {.tgid = tgid, .cgid = bpf_get_current_cgroup_id()};
        threads.update(&tid, &n);
    }
    u64 ts = bpf_ktime_get_ns();
    runnable.update(&tid, &ts);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;
    if (prev != 0) {
        struct thread_info *ti = learn_current(prev, bpf_get_current_pid_tgid() >> 32);
        if (ti) {
            u64 blocked = (args->prev_state & BLOCKED_MASK) ? 1 : 0;
            struct off_start os = {.ts = now, .voluntary = blocked};
            offstart.update(&prev, &os);
            /* switches are counted when they happen (as the kernel's nvcsw/nivcsw), time when they end */
            struct off_key ok = {.tgid = ti->tgid, .voluntary = (u32)blocked};
            struct total tz = {};
            struct total *t = offcpu.lookup_or_try_init(&ok, &tz);
            if (t)
                t->count++;
            if (blocked)
                runnable.delete(&prev); /* a stale wake-up stamp must not count the sleep */
            else
                runnable.update(&prev, &now); /* preempted or yielded: waits for a CPU from now */
        }
    }
    if (next == 0)
        return 0;
    struct thread_info *ti = threads.lookup(&next);
    if (!ti)
        return 0;
    u64 *ts = runnable.lookup(&next);
    if (ts) {
        u64 d = now - *ts;
        runnable.delete(&next);
        struct rq_key k = {.tgid = ti->tgid, .slot = log2l(d), .cgid = ti->cgid};
        if (k.slot >= SLOTS)
            k.slot = SLOTS - 1;
        u64 zero = 0;
        u64 *c = rq_hist.lookup_or_try_init(&k, &zero);
        if (c)
            (*c)++;
        k.slot = 0;
        struct total tz = {};
        struct total *t = rq_total.lookup_or_try_init(&k, &tz);
        if (t) {
            t->ns += d;
            t->count++;
        }
    }
    struct off_start *os = offstart.lookup(&next);
    if (os) {
        struct off_key ok = {.tgid = ti->tgid, .voluntary = (u32)os->voluntary};
        u64 d = now - os->ts;
        offstart.delete(&next);
        struct total tz = {};
        struct total *t = offcpu.lookup_or_try_init(&ok, &tz);
        if (t)
            t->ns += d;
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u32 tid = bpf_get_current_pid_tgid();
    threads.delete(&tid);
    runnable.delete(&tid);
    offstart.delete(&tid);
    sc_inflight.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tgid = pt >> 32;
    if (!targets.lookup(&tgid))
        return 0;
    int nr = args->id;
    if (nr < 0)
        return 0;
    u8 *ign = ignored_syscalls.lookup(&nr);
    if (ign && *ign)
        return 0;
    u32 tid = (u32)pt;
    struct sc_start s = {.ts = bpf_ktime_get_ns(), .nr = (u64)nr};
    sc_inflight.update(&tid, &s);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    struct sc_start *s = sc_inflight.lookup(&tid);
    if (!s)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 dur = now - s->ts;
    u32 nr = (u32)s->nr;
    sc_inflight.delete(&tid);
    if (dur < SLOW_NS)
        return 0;
    u32 tgid = pt >> 32;
    struct park *pr = park_ranges.lookup(&tgid);
    if (pr) {
        u64 ip[1] = {};
        if (bpf_get_stack(args, ip, sizeof(ip), BPF_F_USER_STACK) > 0) {
#pragma unroll
            for (int i = 0; i < PARK_RANGES; i++)
                if (ip[0] >= pr->lo[i] && ip[0] < pr->hi[i])
                    return 0;
        }
    }
    struct sc_key k = {.tgid = tgid, .nr = nr};
    struct total tz = {};
    struct total *t = sc_slow.lookup_or_try_init(&k, &tz);
    if (t) {
        t->ns += dur;
        t->count++;
    }
    struct slow_event *e = gotel_reserved(slow_events.ringbuf_reserve(sizeof(*e)));
    if (!e)
        return 0;
    e->ts = now;
    e->dur = dur;
    e->tgid = pt >> 32;
    e->tid = tid;
    e->nr = nr;
    e->stackid = stacks.get_stackid(args, BPF_F_USER_STACK);
    e->cgid = bpf_get_current_cgroup_id();
    slow_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}
