/* floor(log2(v)) for log2-slot histograms (go_runtime's GC pauses, sched's run-queue waits): the
 * receivers turn slot k into the bucket [2^k, 2^(k+1)) ns (gotel.pdata.builders.log2_bounds_seconds).
 * Six halving steps, unrolled, so the verifier sees no loop. */
#ifndef GOTEL_LOG2_H
#define GOTEL_LOG2_H

static __always_inline u32 gotel_log2(u64 v) {
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

#endif
