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

/* Everything the hot paths need about one thread, updated in place: after a thread's first event no
 * map element is inserted or deleted (an update allocates a new element, a lookup does not). */
struct thread_info {
    u32 tgid;
    u32 sc_nr;        /* syscall in flight */
    u64 cgid;
    u64 runnable_ts;  /* when it became runnable (0: not waiting for a CPU) */
    u64 off_ts;       /* when it left the CPU (0: on CPU or unknown) */
    u64 sc_ts;        /* when the syscall in flight started (0: none) */
    u32 off_vol;      /* it left the CPU blocked (1) or preempted/yielding (0) */
    u32 pad;
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

struct sc_key {
    u32 tgid;
    u32 nr;
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
BPF_PERCPU_HASH(rq_hist, struct rq_key, u64, 16384);
BPF_PERCPU_HASH(rq_total, struct rq_key, struct total, 4096); /* slot = 0 */
BPF_PERCPU_HASH(offcpu, struct off_key, struct total, 8192);
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
    struct thread_info *ti = threads.lookup(&tid);
    if (ti)
        ti->runnable_ts = bpf_ktime_get_ns();
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new) {
    u32 tid = args->pid;
    struct thread_info *ti = threads.lookup(&tid);
    if (!ti) {
        /* a new thread of a selected process: the creator is current and shares tgid and cgroup
         * (a forked child process is corrected when it first switches out) */
        u32 tgid = bpf_get_current_pid_tgid() >> 32;
        if (!targets.lookup(&tgid))
            return 0;
        struct thread_info n = {.tgid = tgid, .cgid = bpf_get_current_cgroup_id()};
        threads.update(&tid, &n);
        ti = threads.lookup(&tid);
        if (!ti)
            return 0;
    }
    ti->runnable_ts = bpf_ktime_get_ns();
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;
    struct thread_info *pi = 0;
    if (prev != 0)
        pi = learn_current(prev, bpf_get_current_pid_tgid() >> 32);
    struct thread_info *ni = next != 0 ? threads.lookup(&next) : 0;
    if (!pi && !ni)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (pi) {
        u64 cg = bpf_get_current_cgroup_id();
        if (pi->cgid != cg)
            pi->cgid = cg;
        u32 blocked = (args->prev_state & BLOCKED_MASK) ? 1 : 0;
        pi->off_ts = now;
        pi->off_vol = blocked;
        /* blocked: a stale wake-up stamp must not count the sleep; preempted or yielding: it waits
         * for a CPU from now */
        pi->runnable_ts = blocked ? 0 : now;
        /* switches are counted when they happen (as the kernel's nvcsw/nivcsw), time when they end */
        struct off_key ok = {.tgid = pi->tgid, .voluntary = blocked};
        struct total tz = {};
        struct total *t = offcpu.lookup_or_try_init(&ok, &tz);
        if (t)
            t->count++;
    }
    if (!ni)
        return 0;
    u64 ts = ni->runnable_ts;
    if (ts && ts <= now) {
        u64 d = now - ts;
        ni->runnable_ts = 0;
        struct rq_key k = {.tgid = ni->tgid, .slot = log2l(d), .cgid = ni->cgid};
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
    u64 off = ni->off_ts;
    if (off && off <= now) {
        struct off_key ok = {.tgid = ni->tgid, .voluntary = ni->off_vol};
        ni->off_ts = 0;
        struct total tz = {};
        struct total *t = offcpu.lookup_or_try_init(&ok, &tz);
        if (t)
            t->ns += now - off;
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u32 tid = bpf_get_current_pid_tgid();
    threads.delete(&tid);
    return 0;
}

/* Syscalls through raw tracepoints: their arguments are (struct pt_regs *, long id|ret), plain values,
 * and a raw tracepoint skips formatting the event record: about half the cost on every syscall of
 * every process on the node. */
RAW_TRACEPOINT_PROBE(sys_enter) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct thread_info *ti = threads.lookup(&tid);
    if (!ti)
        return 0;
    int nr = (int)ctx->args[1];
    if (nr < 0)
        return 0;
    u8 *ign = ignored_syscalls.lookup(&nr);
    if (ign && *ign)
        return 0;
    ti->sc_nr = (u32)nr;
    ti->sc_ts = bpf_ktime_get_ns();
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    struct thread_info *ti = threads.lookup(&tid);
    if (!ti || !ti->sc_ts)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 dur = now - ti->sc_ts;
    u32 nr = ti->sc_nr;
    ti->sc_ts = 0;
    if (dur < SLOW_NS)
        return 0;
    u32 tgid = pt >> 32;
    struct park *pr = park_ranges.lookup(&tgid);
    if (pr) {
        u64 ip[1] = {};
        if (bpf_get_stack(ctx, ip, sizeof(ip), BPF_F_USER_STACK) > 0) {
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
    e->stackid = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    e->cgid = bpf_get_current_cgroup_id();
    slow_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}
