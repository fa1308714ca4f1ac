/* A fake CUDA driver (libcuda.so.1) for gpupool's runtime tests: no GPU, deterministic timing.
 *
 * Device memory is simulated per process (FAKECUDA_MEMORY_MIB per device, default 81920). The device clock is
 * CLOCK_MONOTONIC and each device is one in-order engine shared by every process that names the same
 * FAKECUDA_STATE file: a kernel starts when the engine is free and runs gridDimX*gridDimY*gridDimZ times
 * FAKECUDA_NS_PER_BLOCK ns (default 1000); an event is a zero-length item in the same queue, so the time
 * between two events around a kernel is exactly that kernel's run. Synchronisation sleeps until the device
 * time of the awaited work. docs/runtime.md describes it. */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../include/gp_cuda.h"

#define EXPORT __attribute__((visibility("default")))
#define MAXDEV 16

struct shared {
    uint64_t free_at[MAXDEV]; /* device time when the engine is free */
    uint64_t busy_ns[MAXDEV]; /* kernel time executed, all processes */
};

struct CUstream_st {
    struct CUctx_st *ctx;
    uint64_t last_end;
};

struct CUctx_st {
    int dev;
    uint64_t last_end;
    struct CUstream_st null_stream;
};

struct CUevent_st {
    uint64_t ts;
    int recorded;
};

static struct shared local_shared, *sh = &local_shared;
static struct CUctx_st ctxs[MAXDEV];
static __thread struct CUctx_st *current;
static int ndev = 1, initialised;
static uint64_t mem_total, mem_used[MAXDEV], ns_per_block = 1000;
static uint64_t next_ptr = 0x10000000000ull, next_ptr32 = 0x100000ull, next_handle = 1;
static pthread_mutex_t memlock = PTHREAD_MUTEX_INITIALIZER;

struct block {
    uint64_t key;
    uint64_t size;
    int dev;
    int kind; /* 0 pointer, 1 handle */
};
static struct block *blocks;
static size_t nblocks, capblocks;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t) {
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0)
        ;
}

static uint64_t env_u64(const char *name, uint64_t dflt) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : dflt;
}

EXPORT CUresult cuInit(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&memlock);
    if (!initialised) {
        ndev = (int)env_u64("FAKECUDA_DEVICES", 1);
        if (ndev < 1 || ndev > MAXDEV)
            ndev = 1;
        mem_total = env_u64("FAKECUDA_MEMORY_MIB", 81920) << 20;
        ns_per_block = env_u64("FAKECUDA_NS_PER_BLOCK", 1000);
        const char *path = getenv("FAKECUDA_STATE");
        if (path && *path) {
            int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
            if (fd >= 0) {
                if (ftruncate(fd, sizeof(struct shared)) == 0) {
                    void *p = mmap(NULL, sizeof(struct shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                    if (p != MAP_FAILED)
                        sh = p;
                }
                close(fd);
            }
        }
        for (int i = 0; i < MAXDEV; i++) {
            ctxs[i].dev = i;
            ctxs[i].null_stream.ctx = &ctxs[i];
        }
        initialised = 1;
    }
    pthread_mutex_unlock(&memlock);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorName(CUresult r, const char **name) {
    switch (r) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return CUDA_SUCCESS;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_INITIALIZED: *name = "CUDA_ERROR_NOT_INITIALIZED"; return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_CONTEXT: *name = "CUDA_ERROR_INVALID_CONTEXT"; return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_READY: *name = "CUDA_ERROR_NOT_READY"; return CUDA_SUCCESS;
    default: *name = NULL; return CUDA_ERROR_INVALID_VALUE;
    }
}

EXPORT CUresult cuDriverGetVersion(int *v) { *v = 12040; return CUDA_SUCCESS; }
EXPORT CUresult cuDeviceGetCount(int *n) { *n = ndev; return initialised ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED; }

EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    if (!initialised)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= ndev)
        return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    (void)d;
    strncpy(name, "gpupool fake GPU", (size_t)len);
    if (len > 0)
        name[len - 1] = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) { (void)d; *bytes = mem_total; return CUDA_SUCCESS; }

static CUresult make_current(CUcontext *c, CUdevice d) {
    if (!initialised)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (d < 0 || d >= ndev)
        return CUDA_ERROR_INVALID_DEVICE;
    *c = &ctxs[d];
    current = &ctxs[d];
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxCreate_v2(CUcontext *c, unsigned int flags, CUdevice d) { (void)flags; return make_current(c, d); }
EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice d) {
    CUcontext keep = current;
    CUresult r = make_current(c, d);
    current = keep;
    return r;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { (void)d; return CUDA_SUCCESS; }
EXPORT CUresult cuCtxDestroy_v2(CUcontext c) { if (current == c) current = NULL; return CUDA_SUCCESS; }
EXPORT CUresult cuCtxSetCurrent(CUcontext c) { current = c; return CUDA_SUCCESS; }
EXPORT CUresult cuCtxGetCurrent(CUcontext *c) { *c = current; return CUDA_SUCCESS; }

EXPORT CUresult cuCtxGetDevice(CUdevice *d) {
    if (!current)
        return CUDA_ERROR_INVALID_CONTEXT;
    *d = current->dev;
    return CUDA_SUCCESS;
}

static struct CUstream_st *stream_of(CUstream s) {
    if (s)
        return s;
    return current ? &current->null_stream : NULL;
}

EXPORT CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
    (void)flags;
    if (!current)
        return CUDA_ERROR_INVALID_CONTEXT;
    *s = calloc(1, sizeof **s);
    if (!*s)
        return CUDA_ERROR_OUT_OF_MEMORY;
    (*s)->ctx = current;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamDestroy_v2(CUstream s) { free(s); return CUDA_SUCCESS; }

EXPORT CUresult cuStreamSynchronize(CUstream s) {
    struct CUstream_st *st = stream_of(s);
    if (!st)
        return CUDA_ERROR_INVALID_CONTEXT;
    sleep_until(st->last_end);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { return cuStreamSynchronize(s); }

EXPORT CUresult cuCtxSynchronize(void) {
    if (!current)
        return CUDA_ERROR_INVALID_CONTEXT;
    sleep_until(__atomic_load_n(&current->last_end, __ATOMIC_ACQUIRE));
    return CUDA_SUCCESS;
}

/* Queue `dur` ns of work on the stream's device engine; returns its end (device time). */
static uint64_t enqueue(struct CUstream_st *st, uint64_t dur) {
    int dev = st->ctx->dev;
    uint64_t now = now_ns(), old = __atomic_load_n(&sh->free_at[dev], __ATOMIC_ACQUIRE), end;
    do {
        end = (old > now ? old : now) + dur;
    } while (!__atomic_compare_exchange_n(&sh->free_at[dev], &old, end, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    __atomic_add_fetch(&sh->busy_ns[dev], dur, __ATOMIC_RELAXED);
    st->last_end = end;
    uint64_t c = __atomic_load_n(&st->ctx->last_end, __ATOMIC_RELAXED);
    while (c < end && !__atomic_compare_exchange_n(&st->ctx->last_end, &c, end, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        ;
    return end;
}

EXPORT CUresult cuModuleLoadData(CUmodule *m, const void *image) { (void)image; *m = (CUmodule)(uintptr_t)0x1000; return CUDA_SUCCESS; }
EXPORT CUresult cuModuleGetFunction(CUfunction *f, CUmodule m, const char *name) {
    (void)m; (void)name;
    *f = (CUfunction)(uintptr_t)0x2000;
    return CUDA_SUCCESS;
}

static CUresult launch(unsigned int gx, unsigned int gy, unsigned int gz, CUstream s) {
    struct CUstream_st *st = stream_of(s);
    if (!st)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (gx == 0 || gy == 0 || gz == 0)
        return CUDA_ERROR_INVALID_VALUE;
    enqueue(st, (uint64_t)gx * gy * gz * ns_per_block);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **p, void **e) {
    (void)f; (void)bx; (void)by; (void)bz; (void)shmem; (void)p; (void)e;
    return launch(gx, gy, gz, s);
}
EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **p,
                                    void **e) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, p, e);
}
EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **p, void **e) {
    (void)f; (void)p; (void)e;
    return c ? launch(c->gridDimX, c->gridDimY, c->gridDimZ, c->hStream) : CUDA_ERROR_INVALID_VALUE;
}
EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **p, void **e) {
    return cuLaunchKernelEx(c, f, p, e);
}

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                          unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                          CUstream s, void **p) {
    (void)f; (void)bx; (void)by; (void)bz; (void)shmem; (void)p;
    return launch(gx, gy, gz, s);
}
EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz,
                                               unsigned int shmem, CUstream s, void **p) {
    return cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shmem, s, p);
}

/* ---- graphs: a list of kernel nodes run back to back on the launching stream */
#define GRAPH_NODES 64
struct CUgraph_st {
    unsigned n;
    uint64_t blocks[GRAPH_NODES];
};
struct CUgraphExec_st {
    struct CUgraph_st g;
};
EXPORT CUresult cuGraphCreate(CUgraph *g, unsigned int flags) {
    (void)flags;
    *g = calloc(1, sizeof **g);
    return *g ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuGraphDestroy(CUgraph g) { free(g); return CUDA_SUCCESS; }
EXPORT CUresult cuGraphAddKernelNode(CUgraphNode *node, CUgraph g, const CUgraphNode *deps, size_t ndeps,
                                     const CUDA_KERNEL_NODE_PARAMS *p) {
    (void)deps; (void)ndeps;
    if (!g || !p || g->n >= GRAPH_NODES || !p->gridDimX || !p->gridDimY || !p->gridDimZ)
        return CUDA_ERROR_INVALID_VALUE;
    g->blocks[g->n++] = (uint64_t)p->gridDimX * p->gridDimY * p->gridDimZ;
    if (node)
        *node = (CUgraphNode)(uintptr_t)g->n;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags) {
    (void)flags;
    if (!g)
        return CUDA_ERROR_INVALID_VALUE;
    *e = malloc(sizeof **e);
    if (!*e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    (*e)->g = *g;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphExecDestroy(CUgraphExec e) { free(e); return CUDA_SUCCESS; }
EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
    struct CUstream_st *st = stream_of(s);
    if (!st)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (!e)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t blocks = 0;
    for (unsigned i = 0; i < e->g.n; i++)
        blocks += e->g.blocks[i];
    enqueue(st, blocks * ns_per_block);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) { return cuGraphLaunch(e, s); }

EXPORT CUresult cuEventCreate(CUevent *e, unsigned int flags) {
    (void)flags;
    *e = calloc(1, sizeof **e);
    return *e ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT CUresult cuEventDestroy_v2(CUevent e) { free(e); return CUDA_SUCCESS; }
EXPORT CUresult cuEventRecord(CUevent e, CUstream s) {
    struct CUstream_st *st = stream_of(s);
    if (!st || !e)
        return st ? CUDA_ERROR_INVALID_HANDLE : CUDA_ERROR_INVALID_CONTEXT;
    e->ts = enqueue(st, 0);
    e->recorded = 1;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return cuEventRecord(e, s); }
EXPORT CUresult cuEventQuery(CUevent e) { return now_ns() >= e->ts ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY; }
EXPORT CUresult cuEventSynchronize(CUevent e) { sleep_until(e->ts); return CUDA_SUCCESS; }
EXPORT CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b) {
    if (!a->recorded || !b->recorded)
        return CUDA_ERROR_INVALID_HANDLE;
    if (now_ns() < b->ts || now_ns() < a->ts)
        return CUDA_ERROR_NOT_READY;
    *ms = (float)((double)((int64_t)(b->ts - a->ts)) / 1e6);
    return CUDA_SUCCESS;
}

/* ---- memory */
static CUresult take(uint64_t size, int kind, unsigned long long *key, int small) {
    if (!current && kind == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    int dev = current ? current->dev : 0;
    pthread_mutex_lock(&memlock);
    if (mem_used[dev] + size > mem_total) {
        pthread_mutex_unlock(&memlock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (nblocks == capblocks) {
        size_t cap = capblocks ? capblocks * 2 : 256;
        struct block *b = realloc(blocks, cap * sizeof *b);
        if (!b) {
            pthread_mutex_unlock(&memlock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        blocks = b;
        capblocks = cap;
    }
    uint64_t rounded = (size + 511) & ~511ull;
    if (kind == 1)
        *key = next_handle++;
    else if (small)
        *key = next_ptr32, next_ptr32 += rounded;
    else
        *key = next_ptr, next_ptr += rounded;
    blocks[nblocks++] = (struct block){*key, size, dev, kind};
    mem_used[dev] += size;
    pthread_mutex_unlock(&memlock);
    return CUDA_SUCCESS;
}

static CUresult give(uint64_t key, int kind) {
    pthread_mutex_lock(&memlock);
    for (size_t i = nblocks; i-- > 0;) {
        if (blocks[i].key == key && blocks[i].kind == kind) {
            mem_used[blocks[i].dev] -= blocks[i].size;
            blocks[i] = blocks[--nblocks];
            pthread_mutex_unlock(&memlock);
            return CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&memlock);
    return CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { return take(n, 0, p, 0); }
EXPORT CUresult cuMemAlloc(CUdeviceptr_v1 *p, unsigned int n) {
    unsigned long long k = 0;
    CUresult r = take(n, 0, &k, 1);
    *p = (CUdeviceptr_v1)k;
    return r;
}
EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned int flags) { (void)flags; return take(n, 0, p, 0); }
EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int elem) {
    (void)elem;
    *pitch = (w + 511) & ~(size_t)511;
    return take(*pitch * h, 0, p, 0);
}
EXPORT CUresult cuMemAllocPitch(CUdeviceptr_v1 *p, unsigned int *pitch, unsigned int w, unsigned int h,
                                unsigned int elem) {
    (void)elem;
    *pitch = (w + 511) & ~511u;
    unsigned long long k = 0;
    CUresult r = take((uint64_t)*pitch * h, 0, &k, 1);
    *p = (CUdeviceptr_v1)k;
    return r;
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, CUstream s) { (void)s; return take(n, 0, p, 0); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t n, CUstream s) { return cuMemAllocAsync(p, n, s); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s) {
    (void)pool; (void)s;
    return take(n, 0, p, 0);
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t n, CUmemoryPool pool, CUstream s) {
    return cuMemAllocFromPoolAsync(p, n, pool, s);
}
EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice d) {
    *pool = (CUmemoryPool)(uintptr_t)(0x3000 + d);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t n, const CUmemAllocationProp *prop,
                            unsigned long long flags) {
    (void)flags;
    if (!prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop->location.id >= ndev)
        return CUDA_ERROR_INVALID_VALUE;
    struct CUctx_st *keep = current;
    current = &ctxs[prop->location.id];
    CUresult r = take(n, 1, h, 0);
    current = keep;
    return r;
}
EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) { return give(h, 1); }
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { return give(p, 0); }
EXPORT CUresult cuMemFree(CUdeviceptr_v1 p) { return give(p, 0); }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { (void)s; return give(p, 0); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { return cuMemFreeAsync(p, s); }
EXPORT CUresult cuMemGetInfo_v2(size_t *f, size_t *t) {
    if (!current)
        return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&memlock);
    *f = mem_total - mem_used[current->dev];
    pthread_mutex_unlock(&memlock);
    *t = mem_total;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemGetInfo(unsigned int *f, unsigned int *t) {
    size_t f2, t2;
    CUresult r = cuMemGetInfo_v2(&f2, &t2);
    *f = f2 > 0xffffffffu ? 0xffffffffu : (unsigned int)f2;
    *t = t2 > 0xffffffffu ? 0xffffffffu : (unsigned int)t2;
    return r;
}

/* ---- IPC: a handle names the exporter's pid and pointer; opening it maps that memory (nothing is allocated,
 * so the importer's simulated memory does not change) at a fresh address; closing unmaps it. */
static uint64_t imported[256];
static size_t nimported;
EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p) {
    if (!h)
        return CUDA_ERROR_INVALID_VALUE;
    memset(h, 0, sizeof *h);
    uint64_t pid = (uint64_t)getpid();
    memcpy(h->reserved, &pid, sizeof pid);
    memcpy(h->reserved + 8, &p, sizeof p);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned int flags) {
    (void)flags;
    uint64_t pid = 0;
    memcpy(&pid, h.reserved, sizeof pid);
    if (!p || pid == 0 || pid == (uint64_t)getpid())
        return CUDA_ERROR_INVALID_VALUE; /* as the driver: not within the exporting process */
    pthread_mutex_lock(&memlock);
    if (nimported == sizeof imported / sizeof imported[0]) {
        pthread_mutex_unlock(&memlock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *p = imported[nimported++] = next_ptr;
    next_ptr += 1ull << 21;
    pthread_mutex_unlock(&memlock);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuIpcOpenMemHandle(CUdeviceptr *p, CUipcMemHandle h, unsigned int flags) {
    return cuIpcOpenMemHandle_v2(p, h, flags);
}
EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr p) {
    pthread_mutex_lock(&memlock);
    for (size_t i = 0; i < nimported; i++) {
        if (imported[i] == p) {
            imported[i] = imported[--nimported];
            pthread_mutex_unlock(&memlock);
            return CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&memlock);
    return CUDA_ERROR_INVALID_VALUE;
}

/* ---- cuGetProcAddress: the driver's own entry points by base name, version and stream flag */
EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags);
EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status);

struct proc {
    const char *base;
    void *fn;
    int version;
    int ptsz;
};
#define P(base, fn, ver, ptsz) {base, (void *)fn, ver, ptsz}
static const struct proc procs[] = {
    P("cuInit", cuInit, 2000, 0),
    P("cuDriverGetVersion", cuDriverGetVersion, 2020, 0),
    P("cuDeviceGet", cuDeviceGet, 2000, 0),
    P("cuDeviceGetCount", cuDeviceGetCount, 2000, 0),
    P("cuCtxCreate", cuCtxCreate_v2, 3020, 0),
    P("cuCtxSetCurrent", cuCtxSetCurrent, 4000, 0),
    P("cuCtxGetCurrent", cuCtxGetCurrent, 4000, 0),
    P("cuCtxGetDevice", cuCtxGetDevice, 2000, 0),
    P("cuCtxSynchronize", cuCtxSynchronize, 2000, 0),
    P("cuStreamSynchronize", cuStreamSynchronize, 2000, 0),
    P("cuStreamSynchronize", cuStreamSynchronize_ptsz, 7000, 1),
    P("cuMemAlloc", cuMemAlloc, 2000, 0),
    P("cuMemAlloc", cuMemAlloc_v2, 3020, 0),
    P("cuMemAllocPitch", cuMemAllocPitch, 2000, 0),
    P("cuMemAllocPitch", cuMemAllocPitch_v2, 3020, 0),
    P("cuMemAllocManaged", cuMemAllocManaged, 6000, 0),
    P("cuMemAllocAsync", cuMemAllocAsync, 11020, 0),
    P("cuMemAllocAsync", cuMemAllocAsync_ptsz, 11020, 1),
    P("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync, 11020, 0),
    P("cuMemAllocFromPoolAsync", cuMemAllocFromPoolAsync_ptsz, 11020, 1),
    P("cuMemCreate", cuMemCreate, 10020, 0),
    P("cuMemRelease", cuMemRelease, 10020, 0),
    P("cuMemFree", cuMemFree, 2000, 0),
    P("cuMemFree", cuMemFree_v2, 3020, 0),
    P("cuMemFreeAsync", cuMemFreeAsync, 11020, 0),
    P("cuMemFreeAsync", cuMemFreeAsync_ptsz, 11020, 1),
    P("cuMemGetInfo", cuMemGetInfo, 2000, 0),
    P("cuMemGetInfo", cuMemGetInfo_v2, 3020, 0),
    P("cuLaunchKernel", cuLaunchKernel, 4000, 0),
    P("cuLaunchKernel", cuLaunchKernel_ptsz, 7000, 1),
    P("cuLaunchKernelEx", cuLaunchKernelEx, 11060, 0),
    P("cuLaunchKernelEx", cuLaunchKernelEx_ptsz, 11060, 1),
    P("cuLaunchCooperativeKernel", cuLaunchCooperativeKernel, 9000, 0),
    P("cuLaunchCooperativeKernel", cuLaunchCooperativeKernel_ptsz, 9000, 1),
    P("cuGraphLaunch", cuGraphLaunch, 10000, 0),
    P("cuGraphLaunch", cuGraphLaunch_ptsz, 10000, 1),
    P("cuIpcOpenMemHandle", cuIpcOpenMemHandle, 4010, 0),
    P("cuIpcOpenMemHandle", cuIpcOpenMemHandle_v2, 11000, 0),
    P("cuEventCreate", cuEventCreate, 2000, 0),
    P("cuEventRecord", cuEventRecord, 2000, 0),
    P("cuEventRecord", cuEventRecord_ptsz, 7000, 1),
    P("cuEventQuery", cuEventQuery, 2000, 0),
    P("cuEventSynchronize", cuEventSynchronize, 2000, 0),
    P("cuEventElapsedTime", cuEventElapsedTime, 2000, 0),
    P("cuGetProcAddress", cuGetProcAddress, 11030, 0),
    P("cuGetProcAddress", cuGetProcAddress_v2, 12000, 0),
};

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
    int ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    const struct proc *best = NULL;
    int best_score = -1;
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        const struct proc *p = &procs[i];
        if (strcmp(p->base, symbol) != 0 || p->version > version)
            continue;
        int score = (p->ptsz == ptsz ? 1000000 : 0) + p->version;
        if (score > best_score) {
            best = p;
            best_score = score;
        }
    }
    *pfn = best ? best->fn : NULL;
    return best ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status) {
    CUresult r = cuGetProcAddress(symbol, pfn, version, flags);
    if (status)
        *status = r == CUDA_SUCCESS ? 0 : 1;
    return r;
}
