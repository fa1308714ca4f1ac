/* Internal interface of libgpupool.so (docs/runtime.md). Everything here is hidden; only the CUDA driver
 * entry points in hooks.c, cuGetProcAddress in procaddr.c and dlsym in real.c are exported. */
#ifndef GP_RUNTIME_H
#define GP_RUNTIME_H

#include <stdint.h>

#include "../include/gp_cuda.h"
#include "regions.h"

#define GP_EXPORT __attribute__((visibility("default")))

/* ---- real.c: the real driver */
struct gp_real {
    CUresult (*cuInit)(unsigned int);
    CUresult (*cuCtxGetDevice)(CUdevice *);
    CUresult (*cuCtxGetCurrent)(CUcontext *);
    CUresult (*cuMemAlloc)(CUdeviceptr_v1 *, unsigned int);
    CUresult (*cuMemAlloc_v2)(CUdeviceptr *, size_t);
    CUresult (*cuMemAllocPitch)(CUdeviceptr_v1 *, unsigned int *, unsigned int, unsigned int, unsigned int);
    CUresult (*cuMemAllocPitch_v2)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
    CUresult (*cuMemAllocManaged)(CUdeviceptr *, size_t, unsigned int);
    CUresult (*cuMemAllocAsync)(CUdeviceptr *, size_t, CUstream);
    CUresult (*cuMemAllocAsync_ptsz)(CUdeviceptr *, size_t, CUstream);
    CUresult (*cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
    CUresult (*cuMemAllocFromPoolAsync_ptsz)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
    CUresult (*cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
    CUresult (*cuMemRelease)(CUmemGenericAllocationHandle);
    CUresult (*cuMemFree)(CUdeviceptr_v1);
    CUresult (*cuMemFree_v2)(CUdeviceptr);
    CUresult (*cuMemFreeAsync)(CUdeviceptr, CUstream);
    CUresult (*cuMemFreeAsync_ptsz)(CUdeviceptr, CUstream);
    CUresult (*cuMemGetInfo)(unsigned int *, unsigned int *);
    CUresult (*cuMemGetInfo_v2)(size_t *, size_t *);
    CUresult (*cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                               unsigned int, unsigned int, CUstream, void **, void **);
    CUresult (*cuLaunchKernel_ptsz)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                                    unsigned int, unsigned int, unsigned int, CUstream, void **, void **);
    CUresult (*cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
    CUresult (*cuLaunchKernelEx_ptsz)(const CUlaunchConfig *, CUfunction, void **, void **);
    CUresult (*cuLaunchCooperativeKernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                                          unsigned int, unsigned int, unsigned int, CUstream, void **);
    CUresult (*cuLaunchCooperativeKernel_ptsz)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                                               unsigned int, unsigned int, unsigned int, CUstream, void **);
    CUresult (*cuGraphLaunch)(CUgraphExec, CUstream);
    CUresult (*cuGraphLaunch_ptsz)(CUgraphExec, CUstream);
    CUresult (*cuGetProcAddress)(const char *, void **, int, cuuint64_t);
    CUresult (*cuGetProcAddress_v2)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
    CUresult (*cuEventCreate)(CUevent *, unsigned int);
    CUresult (*cuEventDestroy_v2)(CUevent);
    CUresult (*cuEventRecord)(CUevent, CUstream);
    CUresult (*cuEventRecord_ptsz)(CUevent, CUstream);
    CUresult (*cuEventQuery)(CUevent);
    CUresult (*cuEventSynchronize)(CUevent);
    CUresult (*cuEventElapsedTime)(float *, CUevent, CUevent);
};
extern struct gp_real gp_real;

/* Resolve the real driver once (dlopen libcuda.so.1); 0 when found. */
int gp_resolve(void);
void *gp_real_sym(const char *name);
void gp_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t gp_now_ns(void);

/* ---- state.c: limits, control region, accounting region */
struct gp_state {
    int active;          /* 1: enforcing */
    int ndev;            /* devices with limits (CUDA ordinals 0..ndev-1 after CUDA_VISIBLE_DEVICES mapping) */
    struct gp_acc *acc;  /* shared (or private on failure) */
    int my_proc;         /* entry of this process in acc->proc, -1 before the first allocation */
    uint64_t owner;      /* identity of this container in the sharing regions */
    struct gp_shr *shr[GP_MAX_DEV];
    int shr_slot[GP_MAX_DEV];
    int vis_map[GP_MAX_DEV]; /* CUDA ordinal seen by the app -> limit index, -1 = none */
    int nvis;
};
extern struct gp_state gp;

/* Initialise once (thread-safe); 1 when enforcing. */
int gp_enabled(void);
/* The limit index of the current context's device, -1 when it has no limit (or no context). */
int gp_current_limit_index(void);
int gp_limit_index(CUdevice dev);
/* Called on every intercepted call: re-reads the control region (at most every 100 ms), reaps dead
 * processes (every second), closes usage windows. Cheap when nothing is due. */
void gp_tick(void);
void gp_lock(void);
void gp_unlock(void);
/* Reap entries of dead processes; call with the lock held. */
void gp_reap_locked(void);

/* ---- memory.c */
int gp_mem_reserve(int idx, uint64_t bytes); /* 0 ok, -1 over the cap */
void gp_mem_release(int idx, uint64_t bytes);
void gp_track_add(int table, uint64_t key, int idx, uint64_t bytes);
int gp_track_take(int table, uint64_t key, int *idx, uint64_t *bytes); /* 1 found (and removed) */
void gp_mem_reset_after_fork(void);
#define GP_TRACK_PTR 0
#define GP_TRACK_HANDLE 1

/* ---- compute.c */
struct gp_launch {
    int idx;   /* limit index, -1 = not measured */
    int slot;  /* ring slot */
    int ptsz;
    CUstream stream;
};
void gp_launch_begin(struct gp_launch *l, CUstream stream, int ptsz);
void gp_launch_end(struct gp_launch *l, CUresult launched);
void gp_compute_window(int idx, uint64_t now);
void gp_compute_reset_after_fork(void);

#endif
