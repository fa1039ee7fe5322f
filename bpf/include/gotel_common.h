/* What every gotel program may use from the kernel: struct pt_regs, and nothing else (DESIGN.md 6). */
#ifndef GOTEL_COMMON_H
#define GOTEL_COMMON_H
#include <uapi/linux/ptrace.h>
#endif
