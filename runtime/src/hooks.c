/* The exported CUDA driver entry points. Each one falls back to the plain driver call whenever the runtime
 * is inactive (not a gpupool container) or the device has no limit; none of them can fail for a reason of
 * the runtime's own other than a cap (CUDA_ERROR_OUT_OF_MEMORY). */
#include "runtime.h"

#define NEED(fn)                                                                                                   \
    do {                                                                                                           \
        if (gp_resolve() != 0 || !gp_real.fn)                                                                      \
            return CUDA_ERROR_NOT_INITIALIZED;                                                                     \
    } while (0)

/* limit index for an allocation on the current device, -1 = pass through */
static int mem_index(void) {
    if (!gp_enabled())
        return -1;
    int idx = gp_current_limit_index();
    if (idx >= 0)
        gp_tick();
    return idx;
}

GP_EXPORT CUresult cuInit(unsigned int flags) {
    NEED(cuInit);
    CUresult r = gp_real.cuInit(flags);
    if (r == CUDA_SUCCESS)
        gp_enabled();
    return r;
}

/* ---- allocations */
static CUresult charged(int idx, uint64_t bytes, CUresult r, uint64_t key, int table) {
    if (r != CUDA_SUCCESS)
        gp_mem_release(idx, bytes);
    else
        gp_track_add(table, key, idx, bytes);
    return r;
}

GP_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes) {
    NEED(cuMemAlloc_v2);
    int idx = mem_index();
    if (idx < 0)
        return gp_real.cuMemAlloc_v2(dptr, bytes);
    if (gp_mem_reserve(idx, bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = gp_real.cuMemAlloc_v2(dptr, bytes);
    return charged(idx, bytes, r, r == CUDA_SUCCESS ? *dptr : 0, GP_TRACK_PTR);
}

GP_EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytes) {
    NEED(cuMemAlloc);
    int idx = mem_index();
    if (idx < 0)
        return gp_real.cuMemAlloc(dptr, bytes);
    if (gp_mem_reserve(idx, bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = gp_real.cuMemAlloc(dptr, bytes);
    return charged(idx, bytes, r, r == CUDA_SUCCESS ? *dptr : 0, GP_TRACK_PTR);
}

GP_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytes, unsigned int flags) {
    NEED(cuMemAllocManaged);
    int idx = mem_index();
    if (idx < 0)
        return gp_real.cuMemAllocManaged(dptr, bytes, flags);
    if (gp_mem_reserve(idx, bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = gp_real.cuMemAllocManaged(dptr, bytes, flags);
    return charged(idx, bytes, r, r == CUDA_SUCCESS ? *dptr : 0, GP_TRACK_PTR);
}

/* Pitch: the driver picks the pitch, so charge pitch x height after the fact and undo past the cap. */
GP_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                      unsigned int elem) {
    NEED(cuMemAllocPitch_v2);
    int idx = mem_index();
    CUresult r = gp_real.cuMemAllocPitch_v2(dptr, pitch, width, height, elem);
    if (idx < 0 || r != CUDA_SUCCESS)
        return r;
    uint64_t bytes = (uint64_t)*pitch * height;
    if (gp_mem_reserve(idx, bytes) != 0) {
        if (gp_real.cuMemFree_v2)
            gp_real.cuMemFree_v2(*dptr);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    gp_track_add(GP_TRACK_PTR, *dptr, idx, bytes);
    return r;
}

GP_EXPORT CUresult cuMemAllocPitch(CUdeviceptr_v1 *dptr, unsigned int *pitch, unsigned int width,
                                   unsigned int height, unsigned int elem) {
    NEED(cuMemAllocPitch);
    int idx = mem_index();
    CUresult r = gp_real.cuMemAllocPitch(dptr, pitch, width, height, elem);
    if (idx < 0 || r != CUDA_SUCCESS)
        return r;
    uint64_t bytes = (uint64_t)*pitch * height;
    if (gp_mem_reserve(idx, bytes) != 0) {
        if (gp_real.cuMemFree)
            gp_real.cuMemFree(*dptr);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    gp_track_add(GP_TRACK_PTR, *dptr, idx, bytes);
    return r;
}

static CUresult alloc_async(CUresult (*fn)(CUdeviceptr *, size_t, CUstream), CUdeviceptr *dptr, size_t bytes,
                            CUstream s) {
    int idx = mem_index();
    if (idx < 0)
        return fn(dptr, bytes, s);
    if (gp_mem_reserve(idx, bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = fn(dptr, bytes, s);
    return charged(idx, bytes, r, r == CUDA_SUCCESS ? *dptr : 0, GP_TRACK_PTR);
}

GP_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytes, CUstream s) {
    NEED(cuMemAllocAsync);
    return alloc_async(gp_real.cuMemAllocAsync, dptr, bytes, s);
}

GP_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUstream s) {
    NEED(cuMemAllocAsync_ptsz);
    return alloc_async(gp_real.cuMemAllocAsync_ptsz, dptr, bytes, s);
}

static CUresult alloc_pool(CUresult (*fn)(CUdeviceptr *, size_t, CUmemoryPool, CUstream), CUdeviceptr *dptr,
                           size_t bytes, CUmemoryPool pool, CUstream s) {
    int idx = mem_index();
    if (idx < 0)
        return fn(dptr, bytes, pool, s);
    if (gp_mem_reserve(idx, bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = fn(dptr, bytes, pool, s);
    return charged(idx, bytes, r, r == CUDA_SUCCESS ? *dptr : 0, GP_TRACK_PTR);
}

GP_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool, CUstream s) {
    NEED(cuMemAllocFromPoolAsync);
    return alloc_pool(gp_real.cuMemAllocFromPoolAsync, dptr, bytes, pool, s);
}

GP_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytes, CUmemoryPool pool, CUstream s) {
    NEED(cuMemAllocFromPoolAsync_ptsz);
    return alloc_pool(gp_real.cuMemAllocFromPoolAsync_ptsz, dptr, bytes, pool, s);
}

GP_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t bytes, const CUmemAllocationProp *prop,
                               unsigned long long flags) {
    NEED(cuMemCreate);
    int idx = -1;
    if (prop && prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE && gp_enabled()) {
        idx = gp_limit_index(prop->location.id);
        if (idx >= 0)
            gp_tick();
    }
    if (idx < 0)
        return gp_real.cuMemCreate(handle, bytes, prop, flags);
    if (gp_mem_reserve(idx, bytes) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = gp_real.cuMemCreate(handle, bytes, prop, flags);
    return charged(idx, bytes, r, r == CUDA_SUCCESS ? *handle : 0, GP_TRACK_HANDLE);
}

/* ---- frees: forget first (a reused address must not be released twice), re-remember on failure */
static CUresult release(int table, uint64_t key, CUresult (*call)(uint64_t, void *), void *arg) {
    int idx = -1;
    uint64_t bytes = 0;
    int known = gp_enabled() && gp_track_take(table, key, &idx, &bytes);
    CUresult r = call(key, arg);
    if (known) {
        if (r == CUDA_SUCCESS)
            gp_mem_release(idx, bytes);
        else
            gp_track_add(table, key, idx, bytes);
    }
    return r;
}

static CUresult call_free_v2(uint64_t p, void *arg) { (void)arg; return gp_real.cuMemFree_v2(p); }
static CUresult call_free_v1(uint64_t p, void *arg) { (void)arg; return gp_real.cuMemFree((CUdeviceptr_v1)p); }
static CUresult call_free_async(uint64_t p, void *arg) { return gp_real.cuMemFreeAsync(p, (CUstream)arg); }
static CUresult call_free_async_ptsz(uint64_t p, void *arg) { return gp_real.cuMemFreeAsync_ptsz(p, (CUstream)arg); }
static CUresult call_release(uint64_t h, void *arg) { (void)arg; return gp_real.cuMemRelease(h); }

GP_EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
    NEED(cuMemFree_v2);
    return release(GP_TRACK_PTR, p, call_free_v2, NULL);
}

GP_EXPORT CUresult cuMemFree(CUdeviceptr_v1 p) {
    NEED(cuMemFree);
    return release(GP_TRACK_PTR, p, call_free_v1, NULL);
}

GP_EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    NEED(cuMemFreeAsync);
    return release(GP_TRACK_PTR, p, call_free_async, s);
}

GP_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) {
    NEED(cuMemFreeAsync_ptsz);
    return release(GP_TRACK_PTR, p, call_free_async_ptsz, s);
}

GP_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
    NEED(cuMemRelease);
    return release(GP_TRACK_HANDLE, h, call_release, NULL);
}

/* ---- cuMemGetInfo: the slice's total, and what the container has left of it (never more than the GPU has) */
static int slice_info(uint64_t *free_b, uint64_t *total_b) {
    int idx = mem_index();
    if (idx < 0)
        return -1;
    gp_lock();
    gp_reap_locked();
    struct gp_acc_dev *d = &gp.acc->dev[idx];
    uint64_t limit = d->memory_limit, used = d->memory_used;
    gp_unlock();
    *total_b = limit < *total_b ? limit : *total_b;
    uint64_t left = used < limit ? limit - used : 0;
    *free_b = left < *free_b ? left : *free_b;
    return 0;
}

GP_EXPORT CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b) {
    NEED(cuMemGetInfo_v2);
    size_t f = 0, t = 0;
    CUresult r = gp_real.cuMemGetInfo_v2(&f, &t);
    if (r != CUDA_SUCCESS)
        return r;
    uint64_t f64 = f, t64 = t;
    slice_info(&f64, &t64);
    if (free_b)
        *free_b = (size_t)f64;
    if (total_b)
        *total_b = (size_t)t64;
    return r;
}

GP_EXPORT CUresult cuMemGetInfo(unsigned int *free_b, unsigned int *total_b) {
    NEED(cuMemGetInfo);
    unsigned int f = 0, t = 0;
    CUresult r = gp_real.cuMemGetInfo(&f, &t);
    if (r != CUDA_SUCCESS)
        return r;
    uint64_t f64 = f, t64 = t;
    slice_info(&f64, &t64);
    if (free_b)
        *free_b = f64 > 0xffffffffu ? 0xffffffffu : (unsigned int)f64;
    if (total_b)
        *total_b = t64 > 0xffffffffu ? 0xffffffffu : (unsigned int)t64;
    return r;
}

/* ---- kernel launches */
GP_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                  unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,
                                  void **extra) {
    NEED(cuLaunchKernel);
    struct gp_launch l;
    gp_launch_begin(&l, s, 0);
    CUresult r = gp_real.cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
    gp_launch_end(&l, r);
    return r;
}

GP_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                       unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                       CUstream s, void **params, void **extra) {
    NEED(cuLaunchKernel_ptsz);
    struct gp_launch l;
    gp_launch_begin(&l, s, 1);
    CUresult r = gp_real.cuLaunchKernel_ptsz(f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
    gp_launch_end(&l, r);
    return r;
}

GP_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra) {
    NEED(cuLaunchKernelEx);
    struct gp_launch l;
    gp_launch_begin(&l, cfg ? cfg->hStream : NULL, 0);
    CUresult r = gp_real.cuLaunchKernelEx(cfg, f, params, extra);
    gp_launch_end(&l, r);
    return r;
}

GP_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra) {
    NEED(cuLaunchKernelEx_ptsz);
    struct gp_launch l;
    gp_launch_begin(&l, cfg ? cfg->hStream : NULL, 1);
    CUresult r = gp_real.cuLaunchKernelEx_ptsz(cfg, f, params, extra);
    gp_launch_end(&l, r);
    return r;
}

/* Cooperative launches and CUDA graphs go through the same token bucket: the events around a graph launch
 * measure the device time of the whole graph, so a graph is charged what all its kernels ran. (The deprecated
 * cuLaunchCooperativeKernelMultiDevice passes through: it spans devices, one bucket each; docs/runtime.md.) */
GP_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                             unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                             CUstream s, void **params) {
    NEED(cuLaunchCooperativeKernel);
    struct gp_launch l;
    gp_launch_begin(&l, s, 0);
    CUresult r = gp_real.cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params);
    gp_launch_end(&l, r);
    return r;
}

GP_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                  unsigned int bx, unsigned int by, unsigned int bz,
                                                  unsigned int shmem, CUstream s, void **params) {
    NEED(cuLaunchCooperativeKernel_ptsz);
    struct gp_launch l;
    gp_launch_begin(&l, s, 1);
    CUresult r = gp_real.cuLaunchCooperativeKernel_ptsz(f, gx, gy, gz, bx, by, bz, shmem, s, params);
    gp_launch_end(&l, r);
    return r;
}

GP_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s) {
    NEED(cuGraphLaunch);
    struct gp_launch l;
    gp_launch_begin(&l, s, 0);
    CUresult r = gp_real.cuGraphLaunch(g, s);
    gp_launch_end(&l, r);
    return r;
}

GP_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s) {
    NEED(cuGraphLaunch_ptsz);
    struct gp_launch l;
    gp_launch_begin(&l, s, 1);
    CUresult r = gp_real.cuGraphLaunch_ptsz(g, s);
    gp_launch_end(&l, r);
    return r;
}
