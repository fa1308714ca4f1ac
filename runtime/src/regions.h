/* The three shared regions of gpupool's runtime (docs/runtime.md; Python side: deviceplugin/runtime_regions.py).
 *
 * All integers little-endian (x86_64/aarch64 native), fixed offsets, no padding surprises (checked by
 * static asserts). Keep this file, deviceplugin/runtime_regions.py and docs/runtime.md in agreement. */
#ifndef GP_REGIONS_H
#define GP_REGIONS_H

#include <pthread.h>
#include <stdint.h>

#define GP_MAX_DEV 16
#define GP_MAX_PROCS 128
#define GP_MAX_SHARERS 64

#define GP_MODE_CEILING 0u
#define GP_MODE_SHARE 1u

/* ---- control region: `<runtime dir>/control`, written by the node agent (write + rename), read-only here */
#define GP_CTL_MAGIC 0x4c435047u /* "GPCL" */
#define GP_CTL_VERSION 1u

struct gp_ctl_dev {
    uint64_t memory_mib; /* memory cap of the slice, MiB */
    uint32_t compute;    /* compute share, percent 1..100 */
    uint32_t reserved;
};

struct gp_ctl_head {
    uint32_t magic;
    uint16_t version;
    uint16_t ndev;       /* devices that follow, <= GP_MAX_DEV; index = CUDA ordinal in the container */
    uint64_t generation; /* bumped by the agent on every change; echoed in the accounting region */
    uint32_t mode;       /* GP_MODE_* */
    uint32_t reserved;
    /* struct gp_ctl_dev dev[ndev]; then uint64_t fnv1a64 of every byte before it */
};
_Static_assert(sizeof(struct gp_ctl_head) == 24, "control head");
_Static_assert(sizeof(struct gp_ctl_dev) == 16, "control dev");

/* ---- accounting region: `<runtime dir>/accounting`, shared by every process of the container */
#define GP_ACC_MAGIC 0x43415047u /* "GPAC" */
#define GP_ACC_VERSION 1u

struct gp_acc_dev {              /* 64 bytes */
    uint64_t memory_limit;       /* bytes, in effect */
    uint32_t compute;            /* percent, in effect */
    uint32_t allowance;          /* basis points the throttle currently grants (share mode: may exceed compute) */
    uint64_t memory_used;        /* bytes, live processes of the container */
    uint64_t busy_ns;            /* device time consumed by the container's kernels, cumulative */
    int64_t tokens_ns;           /* token bucket of device time */
    uint64_t refill_ns;          /* CLOCK_MONOTONIC of the last refill */
    uint64_t window_ns;          /* start of the current 100 ms usage window */
    uint64_t window_busy_ns;     /* busy_ns at window start */
};

struct gp_acc_proc {             /* 8 + 8 + 8*GP_MAX_DEV = 144 bytes */
    int32_t pid;                 /* 0 = free entry */
    uint32_t reserved;
    uint64_t start_time;         /* /proc/<pid>/stat starttime, to tell a reused pid */
    uint64_t used[GP_MAX_DEV];   /* bytes this process holds per device */
};

struct gp_acc {
    uint32_t magic;
    uint32_t version;
    uint32_t ndev;
    uint32_t mode;
    uint64_t generation;         /* control generation in effect (0: limits from the Allocate env) */
    uint32_t nprocs;             /* live process entries */
    uint32_t reserved0;
    uint64_t reserved1[4];
    union {
        pthread_mutex_t m;       /* robust, process-shared */
        char pad[64];
    } lock;
    struct gp_acc_dev dev[GP_MAX_DEV];
    struct gp_acc_proc proc[GP_MAX_PROCS];
};
_Static_assert(sizeof(struct gp_acc_dev) == 64, "acc dev");
_Static_assert(sizeof(struct gp_acc_proc) == 144, "acc proc");
_Static_assert(__builtin_offsetof(struct gp_acc, lock) == 64, "acc lock");
_Static_assert(__builtin_offsetof(struct gp_acc, dev) == 128, "acc dev offset");
_Static_assert(__builtin_offsetof(struct gp_acc, proc) == 128 + 64 * GP_MAX_DEV, "acc proc offset");

/* ---- sharing region: `<gpu dir>/<ordinal>/shares`, one per physical GPU, shared by its containers */
struct gp_shr_slot {             /* 32 bytes */
    uint64_t owner;              /* container identity (device+inode of its accounting file); 0 = free */
    uint64_t stamp_ns;           /* CLOCK_MONOTONIC of the last publication */
    uint32_t usage_bp;           /* device time used in the last window, basis points */
    uint32_t compute;            /* the container's share, percent */
    uint64_t reserved;
};

struct gp_shr {
    uint32_t magic;              /* written once, 0x48535047 "GPSH"; a zero file is valid too */
    uint32_t version;
    uint64_t reserved;
    struct gp_shr_slot slot[GP_MAX_SHARERS];
};
_Static_assert(sizeof(struct gp_shr_slot) == 32, "shr slot");

#endif
