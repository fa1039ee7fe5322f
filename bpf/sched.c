/* sched receiver: run-queue latency, off-CPU time and slow syscalls of selected processes.
 *
 * Cost model: these programs run on every context switch, wake-up and syscall of the whole node, so
 *  - a per-CPU slot remembers whether the task on this CPU is traced: a syscall or switch of an
 *    untraced task costs an array lookup, no hash lookup;
 *  - `maybe`, indexed by tid & MAYBE_MASK, is 1 wherever a traced thread was ever added (by user space
 *    or here); only then is `threads` looked up for a woken or switched-in task. Entries are only ever
 *    set to 1 (no read-modify-write, so no lost update between user space and BPF) and never cleared:
 *    collisions and threads gone since cost a hash lookup that finds nothing, never a missed thread;
 *  - a traced thread's figures (run-queue histogram, off-CPU time and counts) live in its own map
 *    element, updated in place: no element is inserted or deleted on a hot path (a hash update
 *    allocates, a lookup does not); a thread that exits folds its figures into `dead` (rare);
 *  - user space sums the threads of each process at the collection interval: its cost does not grow
 *    with the event rate. Only slow syscalls (>= SLOW_NS, rare by definition) are sent as events.
 *
 * Header-light (DESIGN.md section 6): tracepoint arguments, raw-tracepoint scalar arguments and
 * helpers only, no kernel struct. A thread's process and cgroup are learned when the thread itself is
 * current (switching out, creating a thread): at wake-up time the current task is the waker.
 *
 * Defines: SLOW_NS (slow-syscall threshold), BLOCKED_MASK (prev_state bits that mean "blocked", read
 * from the sched_switch format at run time; anything else, including the preempt bit, is runnable),
 * IGNORED(nr) (syscalls never reported as slow: an expression on nr), SLOW_SYSCALLS (trace syscalls).
 */
#include "gotel_log2.h"
#include "gotel_ringbuf.h"

#define SLOTS 40

struct figures {
    u64 rq_ns;           /* run-queue wait, total */
    u64 rq_count;
    u64 off_ns[2];       /* off-CPU time: [0] preempted/yielding, [1] blocked */
    u64 off_count[2];    /* switches out, as the kernel's nivcsw/nvcsw */
    u64 hist[SLOTS];     /* run-queue wait, log2(ns) slots */
};

struct thread_info {
    u32 tgid;
    u32 sc_nr;        /* syscall in flight */
    u64 cgid;
    u64 runnable_ts;  /* when it became runnable (0: not waiting for a CPU) */
    u64 off_ts;       /* when it left the CPU (0: on CPU or unknown) */
    u64 sc_ts;        /* when the syscall in flight started (0: none) */
    u32 off_vol;      /* it left the CPU blocked (1) or preempted/yielding (0) */
    u32 pad;
    struct figures f;
};

struct dead_key {
    u32 tgid;
    u32 pad;
    u64 cgid;
};

/* The task on this CPU: whether it is traced and, if so, its syscall in flight. A traced thread's
 * syscall state moves between this slot and its map element at context switches, so a syscall costs
 * an array lookup and no hash lookup even for traced threads. */
struct oncpu {
    u32 tid;
    u32 traced;
    u32 tgid;
    u32 sc_nr;
    u64 sc_ts;
};

struct total {
    u64 ns;
    u64 count;
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

BPF_HASH(targets, u32, u8, 4096);                   /* selected tgids, from discovery */
BPF_HASH(park_ranges, u32, struct park, 4096);
BPF_HASH(threads, u32, struct thread_info, 65536);  /* traced threads only */
BPF_HASH(dead, struct dead_key, struct figures, 4096);
BPF_PERCPU_ARRAY(cur, struct oncpu, 1);
#define MAYBE_MASK 0xffff
BPF_ARRAY(maybe, u8, MAYBE_MASK + 1);
BPF_PERCPU_HASH(sc_slow, struct sc_key, struct total, 16384);
BPF_STACK_TRACE(stacks, 4096);
GOTEL_RINGBUF(slow_events, 64);

/* The thread, if traced; an inlined array lookup for (almost all) untraced ones. */
static __always_inline struct thread_info *traced_thread(u32 tid) {
    u32 k = tid & MAYBE_MASK;
    u8 *m = maybe.lookup(&k);
    if (!m || !*m)
        return 0;
    return threads.lookup(&tid);
}

/* This CPU's slot, made to describe `tid` (the current task); a hash lookup only when it did not. */
static __always_inline struct oncpu *current_slot(u32 tid) {
    int zero = 0;
    struct oncpu *c = cur.lookup(&zero);
    if (!c || c->tid == tid)
        return c;
    struct thread_info *ti = traced_thread(tid);
    c->tid = tid;
    c->traced = ti ? 1 : 0;
    c->tgid = ti ? ti->tgid : 0;
    c->sc_ts = 0;
    c->sc_nr = 0;
    return c;
}

static __always_inline struct thread_info *add_thread(u32 tid, u32 tgid) {
    struct thread_info n = {};
    n.tgid = tgid;
    n.cgid = bpf_get_current_cgroup_id();
    u32 k = tid & MAYBE_MASK;
    u8 one = 1;
    maybe.update(&k, &one);
    threads.update(&tid, &n);
    return threads.lookup(&tid);
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    u32 tid = args->pid;
    struct thread_info *ti = traced_thread(tid);
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
        ti = add_thread(tid, tgid);
        if (!ti)
            return 0;
    }
    ti->runnable_ts = bpf_ktime_get_ns();
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;
    int zero = 0;
    struct oncpu *c = cur.lookup(&zero);
    struct thread_info *pi = 0;
    if (prev != 0 && !(c && c->tid == prev && !c->traced)) {
        pi = traced_thread(prev);
        if (pi) {
            u32 tgid = bpf_get_current_pid_tgid() >> 32;
            if (pi->tgid != tgid)
                pi->tgid = tgid; /* a forked child first taken for a thread of its parent */
        }
    }
    struct thread_info *ni = next != 0 ? traced_thread(next) : 0;
    if (c) {
        if (pi && c->tid == prev) {
            pi->sc_ts = c->sc_ts; /* its syscall in flight, if any, goes with it */
            pi->sc_nr = c->sc_nr;
        }
        c->tid = next;
        c->traced = ni ? 1 : 0;
        c->tgid = ni ? ni->tgid : 0;
        c->sc_ts = ni ? ni->sc_ts : 0;
        c->sc_nr = ni ? ni->sc_nr : 0;
    }
    u64 now = 0;
    if (pi) {
        now = bpf_ktime_get_ns();
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
        pi->f.off_count[blocked & 1]++;
    }
    if (!ni)
        return 0;
    if (!now)
        now = bpf_ktime_get_ns();
    u64 ts = ni->runnable_ts;
    if (ts && ts <= now) {
        u64 d = now - ts;
        ni->runnable_ts = 0;
        u32 slot = gotel_log2(d);
        if (slot >= SLOTS)
            slot = SLOTS - 1;
        ni->f.hist[slot]++;
        ni->f.rq_ns += d;
        ni->f.rq_count++;
    }
    u64 off = ni->off_ts;
    if (off && off <= now) {
        ni->f.off_ns[ni->off_vol & 1] += now - off;
        ni->off_ts = 0;
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u32 tid = bpf_get_current_pid_tgid();
    struct thread_info *ti = threads.lookup(&tid);
    if (!ti)
        return 0;
    struct dead_key k = {.tgid = ti->tgid, .cgid = ti->cgid};
    struct figures zero = {};
    struct figures *d = dead.lookup_or_try_init(&k, &zero);
    if (d) {
        __sync_fetch_and_add(&d->rq_ns, ti->f.rq_ns);
        __sync_fetch_and_add(&d->rq_count, ti->f.rq_count);
        __sync_fetch_and_add(&d->off_ns[0], ti->f.off_ns[0]);
        __sync_fetch_and_add(&d->off_ns[1], ti->f.off_ns[1]);
        __sync_fetch_and_add(&d->off_count[0], ti->f.off_count[0]);
        __sync_fetch_and_add(&d->off_count[1], ti->f.off_count[1]);
#pragma unroll
        for (int i = 0; i < SLOTS; i++)
            if (ti->f.hist[i])
                __sync_fetch_and_add(&d->hist[i], ti->f.hist[i]);
    }
    threads.delete(&tid);
    return 0;
}

#ifdef SLOW_SYSCALLS
/* Syscalls through raw tracepoints: their arguments are (struct pt_regs *, long id|ret), plain values,
 * and a raw tracepoint skips formatting an event record. */
RAW_TRACEPOINT_PROBE(sys_enter) {
    struct oncpu *c = current_slot((u32)bpf_get_current_pid_tgid());
    if (!c || !c->traced)
        return 0;
    int nr = (int)ctx->args[1];
    if (nr < 0 || IGNORED(nr)) {
        c->sc_ts = 0;
        return 0;
    }
    c->sc_nr = (u32)nr;
    c->sc_ts = bpf_ktime_get_ns();
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    int zero = 0;
    struct oncpu *c = cur.lookup(&zero);
    if (!c || c->tid != tid || !c->sc_ts)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 dur = now - c->sc_ts;
    u32 nr = c->sc_nr;
    c->sc_ts = 0;
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
    e->tgid = tgid;
    e->tid = tid;
    e->nr = nr;
    e->stackid = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    e->cgid = bpf_get_current_cgroup_id();
    slow_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}
#endif /* SLOW_SYSCALLS */
