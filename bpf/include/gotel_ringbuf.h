/* Ring-buffer output without per-event wake-ups (DESIGN.md section 6).
 *
 * A wake-up per event costs ~1.4 us in the producer and a context switch in the agent. Records are
 * submitted with the kernel's adaptive wake-up (flags 0): only a record that lands in a buffer its reader
 * had emptied wakes the reader, so at most one wake-up per drain; user space drains in batches, at most
 * every poll interval, and sleeps on the buffer's fd while it stays empty instead of polling it on a
 * timer (a timer wake-up costs ~0.2 ms of CPU in this VM: gotel.ebpf.wakeup). Reservations that fail
 * because the buffer is full, and user memory that could not be read, are counted in the per-CPU array
 * `gotel_lost`, which user space reads as deltas and exports as gotel_ebpf_lost_events_total.
 *
 * BCC rewrites map method calls only outside macros, so the calls stay in the program:
 *   GOTEL_RINGBUF(events, 64);                                        // name, pages (power of two)
 *   struct ev *e = gotel_reserved(events.ringbuf_reserve(sizeof(*e)));
 *   if (!e) return 0;                                                 // already counted as lost
 *   ... fill e ...
 *   events.ringbuf_submit(e, GOTEL_RB_FLAGS);
 */
#ifndef GOTEL_RINGBUF_H
#define GOTEL_RINGBUF_H

#ifndef BPF_RB_NO_WAKEUP
#define BPF_RB_NO_WAKEUP 1
#endif
#define GOTEL_RB_FLAGS 0  /* adaptive: see above */

/* index 0: ring buffer full; index 1: a user-memory read failed (event sent, field left empty). */
#define GOTEL_LOST_FULL 0
#define GOTEL_LOST_READ 1
BPF_PERCPU_ARRAY(gotel_lost, u64, 2);

static __always_inline void gotel_count_lost(int idx) {
    u64 *v = gotel_lost.lookup(&idx);
    if (v)
        (*v)++;
}

static __always_inline void *gotel_reserved(void *rec) {
    if (!rec)
        gotel_count_lost(GOTEL_LOST_FULL);
    return rec;
}

#define GOTEL_RINGBUF(name, pages) BPF_RINGBUF_OUTPUT(name, pages)

#endif
