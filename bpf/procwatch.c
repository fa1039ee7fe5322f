/* Process discovery: exec and exit of thread-group leaders, so gotel notices a new Go process (or a
 * gone one) within one ring-buffer drain instead of waiting for the next /proc rescan.
 * Header-light: tracepoint arguments and helpers only. */
#include "gotel_ringbuf.h"

struct gotel_proc_event {
    u32 kind;   /* 1 = exec, 2 = exit */
    u32 pid;
};

GOTEL_RINGBUF(proc_events, 16);

TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct gotel_proc_event *e = gotel_reserved(proc_events.ringbuf_reserve(sizeof(*e)));
    if (!e)
        return 0;
    e->kind = 1;
    e->pid = args->pid;
    proc_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid)  /* a thread, not the process */
        return 0;
    struct gotel_proc_event *e = gotel_reserved(proc_events.ringbuf_reserve(sizeof(*e)));
    if (!e)
        return 0;
    e->kind = 2;
    e->pid = tgid;
    proc_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}
