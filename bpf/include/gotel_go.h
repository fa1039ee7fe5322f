/* Go specifics for uprobes on Go functions (DESIGN.md section 6), header-light: pt_regs and user memory.
 *
 * Register ABI (Go >= 1.17, amd64): integer arguments in ax, bx, cx, di, si, r8, r9, r10, r11; the
 * current goroutine (g) in r14; a string is {ptr, len}, a slice {ptr, len, cap}, an interface
 * {itab/type, data}. Per-process and per-binary facts live in maps user space fills
 * (gotel.ebpf.goprobes): pid -> binary id, binary id -> struct field offsets, so one compiled program
 * serves every Go binary on the node. */
#ifndef GOTEL_GO_H
#define GOTEL_GO_H
#include "gotel_common.h"

#define GO_PARAM1(x) ((x)->ax)
#define GO_PARAM2(x) ((x)->bx)
#define GO_PARAM3(x) ((x)->cx)
#define GO_PARAM4(x) ((x)->di)
#define GO_PARAM5(x) ((x)->si)
#define GO_PARAM6(x) ((x)->r8)
#define GO_PARAM7(x) ((x)->r9)
#define GO_PARAM8(x) ((x)->r10)
#define GO_PARAM9(x) ((x)->r11)
#define GO_GOROUTINE(x) ((x)->r14)

#define GOTEL_GO_MAX_OFFSETS 136
#define GOTEL_GO_MAX_BINARIES 1024
#define GOTEL_GO_OFFSET_UNKNOWN 0xffffffffffffffffULL

struct gotel_go_proc {
    u32 bin_id;    /* index into gotel_go_offsets */
    u32 flags;     /* feature flags of the binary (library versions that change behaviour) */
};

struct gotel_go_offsets {
    u64 off[GOTEL_GO_MAX_OFFSETS];  /* GOTEL_GO_OFFSET_UNKNOWN when the binary has no DWARF for it */
};

/* key: goroutine of one process; used to pair a function's entry with its RET probes */
struct gotel_go_key {
    u32 tgid;
    u32 pad;
    u64 goroutine;
};

BPF_HASH(gotel_go_procs, u32, struct gotel_go_proc, 16384);
/* An array, not a hash: its lookup is inlined by the verifier into an address computation, and a probe
 * reads several offsets per hit (a hash lookup hashes the key each time: ~0.1 us apiece here). */
BPF_ARRAY(gotel_go_offsets, struct gotel_go_offsets, GOTEL_GO_MAX_BINARIES);

/* NULL when the current process is not traced (the uprobe is on a binary, for all its processes). */
static __always_inline struct gotel_go_proc *gotel_go_current(void) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    return gotel_go_procs.lookup(&tgid);
}

/* A uprobe's opening: `p`, the traced process's record, or return 0 (the probe is on a binary, for all of
 * its processes); GOTEL_GO_ENTER also declares `k`, the (tgid, goroutine) key of the call. */
#define GOTEL_GO_PROC(p)                              \
    struct gotel_go_proc *p = gotel_go_current();     \
    if (!p)                                           \
        return 0
#define GOTEL_GO_ENTER(p, k) \
    GOTEL_GO_PROC(p);        \
    struct gotel_go_key k = gotel_go_key_of(ctx)

static __always_inline struct gotel_go_offsets *gotel_go_offsets_of(struct gotel_go_proc *p) {
    u32 bin = p->bin_id;
    return gotel_go_offsets.lookup(&bin);
}

static __always_inline u64 gotel_go_offset(struct gotel_go_proc *p, u32 idx) {
    if (idx >= GOTEL_GO_MAX_OFFSETS)
        return GOTEL_GO_OFFSET_UNKNOWN;
    struct gotel_go_offsets *o = gotel_go_offsets_of(p);
    if (!o)
        return GOTEL_GO_OFFSET_UNKNOWN;
    return o->off[idx];
}

static __always_inline struct gotel_go_key gotel_go_key_of(struct pt_regs *ctx) {
    struct gotel_go_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.goroutine = GO_GOROUTINE(ctx);
    return k;
}

/* Copies at most size-1 bytes of a Go string {ptr, len} and NUL-terminates; returns bytes copied or <0. */
static __always_inline long gotel_go_read_str(char *dst, u32 size, u64 ptr, u64 len) {
    if (size == 0)
        return -1;
    if (len >= size)
        len = size - 1;
    dst[0] = 0;
    if (len == 0)
        return 0;
    long r = bpf_probe_read_user(dst, len & 0xfff, (void *)ptr);
    if (r < 0)
        return r;
    dst[len & 0xfff] = 0;
    return len;
}

#endif
