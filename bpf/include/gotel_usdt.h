/* USDT argument reading for a program compiled once and attached to many binaries.
 *
 * BCC's own USDT support generates argument-reading code per probe and per process at compile time;
 * gotel instead keeps each probe's argument locations in a map keyed by (pid, instruction pointer),
 * filled by user space from the .note.stapsdt argument specs (as libbpf's usdt.bpf.h does), so one
 * loaded program serves every traced process. Only pt_regs and user memory are read. */
#ifndef GOTEL_USDT_H
#define GOTEL_USDT_H

#define GOTEL_USDT_MAX_ARGS 6
#define GOTEL_USDT_STR_SLOTS 2
#ifndef GOTEL_USDT_STR_LEN
#define GOTEL_USDT_STR_LEN 128
#endif

enum gotel_arg_kind { GOTEL_ARG_NONE = 0, GOTEL_ARG_CONST = 1, GOTEL_ARG_REG = 2, GOTEL_ARG_REG_DEREF = 3 };

struct gotel_usdt_arg {
    s64 val_off;     /* constant, or displacement for REG_DEREF */
    u16 reg_off;     /* byte offset of the register in struct pt_regs */
    u8 kind;
    u8 size;         /* 1, 2, 4 or 8 bytes */
    u8 is_signed;
    u8 str_slot;     /* 0xff: integer; else read a NUL-terminated string at the value into str[slot] */
    u8 pad[2];
};

struct gotel_usdt_spec {
    u32 probe_id;
    u32 nargs;
    struct gotel_usdt_arg args[GOTEL_USDT_MAX_ARGS];
};

struct gotel_usdt_key {
    u32 tgid;
    u32 pad;
    u64 ip;
};

/* Returns 0 on success; the value is sign- or zero-extended to 64 bits. */
static __always_inline int gotel_usdt_arg_value(struct pt_regs *ctx, struct gotel_usdt_arg *a, u64 *out) {
    u64 v = 0;
    switch (a->kind) {
    case GOTEL_ARG_CONST:
        *out = a->val_off;
        return 0;
    case GOTEL_ARG_REG:
        if (bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx + (a->reg_off & 0xff)))
            return -1;
        break;
    case GOTEL_ARG_REG_DEREF:
        if (bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx + (a->reg_off & 0xff)))
            return -1;
        if (bpf_probe_read_user(&v, sizeof(v), (void *)(v + a->val_off)))
            return -1;
        break;
    default:
        return -1;
    }
    switch (a->size) {
    case 1:
        v = a->is_signed ? (u64)(s64)(s8)v : (u64)(u8)v;
        break;
    case 2:
        v = a->is_signed ? (u64)(s64)(s16)v : (u64)(u16)v;
        break;
    case 4:
        v = a->is_signed ? (u64)(s64)(s32)v : (u64)(u32)v;
        break;
    }
    *out = v;
    return 0;
}

#endif
