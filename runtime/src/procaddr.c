/* cuGetProcAddress: hand out our wrapper for every intercepted entry point, so that libcudart >= 11.3 and the
 * libraries that fetch the driver table this way are caught. The driver's answer is matched to our table by
 * address first (exact for the exported symbols), then by name, per-thread-stream flag and CUDA version. */
#include <string.h>

#include "runtime.h"

CUresult cuMemAlloc(CUdeviceptr_v1 *, unsigned int);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemAllocPitch(CUdeviceptr_v1 *, unsigned int *, unsigned int, unsigned int, unsigned int);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned int);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuMemFree(CUdeviceptr_v1);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemFreeAsync_ptsz(CUdeviceptr, CUstream);
CUresult cuMemGetInfo(unsigned int *, unsigned int *);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuLaunchKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                        unsigned int, unsigned int, CUstream, void **, void **);
CUresult cuLaunchKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                             unsigned int, unsigned int, CUstream, void **, void **);
CUresult cuLaunchKernelEx(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchCooperativeKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                                   unsigned int, unsigned int, CUstream, void **);
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                                        unsigned int, unsigned int, unsigned int, CUstream, void **);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult cuGraphLaunch_ptsz(CUgraphExec, CUstream);
CUresult cuInit(unsigned int);
GP_EXPORT CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
GP_EXPORT CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

struct entry {
    const char *base;   /* name asked of cuGetProcAddress */
    const char *symbol; /* exported symbol */
    int version;        /* first CUDA version (x1000 + y10) this symbol serves the base name */
    int ptsz;           /* per-thread default stream variant */
    void *wrapper;
};

#define E(base, sym, ver, ptsz) {base, #sym, ver, ptsz, (void *)sym}
static const struct entry table[] = {
    E("cuInit", cuInit, 2000, 0),
    E("cuMemAlloc", cuMemAlloc, 2000, 0),
    E("cuMemAlloc", cuMemAlloc_v2, 3020, 0),
    E("cuMemAllocPitch", cuMemAllocPitch, 2000, 0),
    E("cuMemAllocPitch", cuMemAllocPitch_v2, 3020, 0),
    E("cuMemAllocManaged", cuMemAllocManaged, 6000, 0),
    E("cuMemAllocAsync", cuMemAllocAsync, 11020, 0),
    E("cuMemAllocAsync", cuMemAllocAsync_ptsz, 11020, 1),
    E("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync, 11020, 0),
    E("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync_ptsz, 11020, 1),
    E("cuMemCreate", cuMemCreate, 10020, 0),
    E("cuMemRelease", cuMemRelease, 10020, 0),
    E("cuMemFree", cuMemFree, 2000, 0),
    E("cuMemFree", cuMemFree_v2, 3020, 0),
    E("cuMemFreeAsync", cuMemFreeAsync, 11020, 0),
    E("cuMemFreeAsync", cuMemFreeAsync_ptsz, 11020, 1),
    E("cuMemGetInfo", cuMemGetInfo, 2000, 0),
    E("cuMemGetInfo", cuMemGetInfo_v2, 3020, 0),
    E("cuLaunchKernel", cuLaunchKernel, 4000, 0),
    E("cuLaunchKernel", cuLaunchKernel_ptsz, 7000, 1),
    E("cuLaunchKernelEx", cuLaunchKernelEx, 11060, 0),
    E("cuLaunchKernelEx", cuLaunchKernelEx_ptsz, 11060, 1),
    E("cuLaunchCooperativeKernel", cuLaunchCooperativeKernel, 9000, 0),
    E("cuLaunchCooperativeKernel", cuLaunchCooperativeKernel_ptsz, 9000, 1),
    E("cuGraphLaunch", cuGraphLaunch, 10000, 0),
    E("cuGraphLaunch", cuGraphLaunch_ptsz, 10000, 1),
    E("cuGetProcAddress", cuGetProcAddress, 11030, 0),
    E("cuGetProcAddress", cuGetProcAddress_v2, 12000, 0),
};
#define NENTRIES (sizeof table / sizeof table[0])

static void *real_of[NENTRIES];
static int real_known;

static void know_reals(void) {
    if (__atomic_load_n(&real_known, __ATOMIC_ACQUIRE))
        return;
    for (size_t i = 0; i < NENTRIES; i++)
        real_of[i] = gp_real_sym(table[i].symbol);
    __atomic_store_n(&real_known, 1, __ATOMIC_RELEASE);
}

/* the wrapper exported under an exact symbol name (dlsym hook) */
void *gp_wrapper_for(const char *name);
void *gp_wrapper_for(const char *name) {
    for (size_t i = 0; i < NENTRIES; i++)
        if (strcmp(table[i].symbol, name) == 0)
            return table[i].wrapper;
    return NULL;
}

static void *map(const char *symbol, void *got, int version, cuuint64_t flags) {
    know_reals();
    for (size_t i = 0; i < NENTRIES; i++)
        if (real_of[i] && real_of[i] == got)
            return table[i].wrapper;
    int ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    const struct entry *best = NULL;
    int best_score = -1;
    for (size_t i = 0; i < NENTRIES; i++) {
        const struct entry *e = &table[i];
        if (strcmp(e->base, symbol) != 0 || e->version > version || !real_of[i])
            continue;
        int score = (e->ptsz == ptsz ? 1000000 : 0) + e->version;
        if (score > best_score) {
            best = e;
            best_score = score;
        }
    }
    return best ? best->wrapper : got;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
    if (gp_resolve() != 0 || !gp_real.cuGetProcAddress)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult r = gp_real.cuGetProcAddress(symbol, pfn, version, flags);
    if (r == CUDA_SUCCESS && pfn && *pfn && symbol)
        *pfn = map(symbol, *pfn, version, flags);
    return r;
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
    if (gp_resolve() != 0 || !gp_real.cuGetProcAddress_v2)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult r = gp_real.cuGetProcAddress_v2(symbol, pfn, version, flags, status);
    if (r == CUDA_SUCCESS && pfn && *pfn && symbol)
        *pfn = map(symbol, *pfn, version, flags);
    return r;
}
