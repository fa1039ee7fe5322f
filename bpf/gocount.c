/* Counts entries and returns of Go functions per probe id in kernel maps (no events): the substrate's
 * self-test, and the cheapest way to check that every RET of a function is probed. The probe id is the
 * attach point's index, looked up by (pid, instruction pointer). */
#include "gotel_go.h"

struct gotel_ip_key {
    u32 tgid;
    u32 pad;
    u64 ip;
};

BPF_HASH(gocount_sites, struct gotel_ip_key, u32, 4096);   /* (pid, ip) -> counter index */
BPF_PERCPU_ARRAY(gocount_hits, u64, 256);

int gotel_gocount(struct pt_regs *ctx) {
    if (!gotel_go_current())
        return 0;
    struct gotel_ip_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.ip = PT_REGS_IP(ctx);
    u32 *idx = gocount_sites.lookup(&k);
    if (!idx)
        return 0;
    u32 i = *idx;
    u64 *v = gocount_hits.lookup(&i);
    if (v)
        (*v)++;
    return 0;
}
