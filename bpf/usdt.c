/* The usdt receiver's program: one function attached at every configured USDT probe location, in
 * every selected binary. Each firing sends the probe id, the time, pid/tid and up to six arguments
 * (two of them may be strings) to a ring buffer drained in batches. */
#include "gotel_common.h"
#include "gotel_ringbuf.h"
#include "gotel_usdt.h"

struct gotel_usdt_event {
    u64 ts_ns;       /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    u32 pid;
    u32 tid;
    u32 probe_id;
    u32 flags;       /* bit i set: argument i could not be read */
    u64 args[GOTEL_USDT_MAX_ARGS];
    char str[GOTEL_USDT_STR_SLOTS][GOTEL_USDT_STR_LEN];
};

BPF_HASH(usdt_specs, struct gotel_usdt_key, struct gotel_usdt_spec, 16384);
#ifndef USDT_RINGBUF_PAGES
#define USDT_RINGBUF_PAGES 1024
#endif
GOTEL_RINGBUF(usdt_events, USDT_RINGBUF_PAGES);

int gotel_usdt(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct gotel_usdt_key key = {};
    key.tgid = id >> 32;
    key.ip = PT_REGS_IP(ctx);
    struct gotel_usdt_spec *spec = usdt_specs.lookup(&key);
    if (!spec)
        return 0;  /* a process of this binary that is not selected */
    struct gotel_usdt_event *e = gotel_reserved(usdt_events.ringbuf_reserve(sizeof(*e)));
    if (!e)
        return 0;
    e->ts_ns = bpf_ktime_get_ns();
    e->pid = key.tgid;
    e->tid = (u32)id;
    e->probe_id = spec->probe_id;
    e->flags = 0;
    e->str[0][0] = 0;
    e->str[1][0] = 0;
#pragma unroll
    for (int i = 0; i < GOTEL_USDT_MAX_ARGS; i++) {
        e->args[i] = 0;
        if (i >= spec->nargs)
            continue;
        u64 v = 0;
        if (gotel_usdt_arg_value(ctx, &spec->args[i], &v)) {
            e->flags |= 1u << i;
            gotel_count_lost(GOTEL_LOST_READ);
            continue;
        }
        e->args[i] = v;
        u8 slot = spec->args[i].str_slot;
        long n = 0;
        if (slot == 0)
            n = bpf_probe_read_user_str(e->str[0], GOTEL_USDT_STR_LEN, (void *)v);
        else if (slot == 1)
            n = bpf_probe_read_user_str(e->str[1], GOTEL_USDT_STR_LEN, (void *)v);
        if (n < 0) {
            e->flags |= 1u << i;
            gotel_count_lost(GOTEL_LOST_READ);
        }
    }
    usdt_events.ringbuf_submit(e, GOTEL_RB_FLAGS);
    return 0;
}
