/* A small CUDA driver API program for the runtime tests and benchmark, driven by lines on stdin:
 *
 *   alloc KIND BYTES   KIND: v2 v1 pitch managed async pool create procaddr procaddr2 ptsz dlsym
 *                      -> "ok ID" | "err CODE"
 *   free ID            -> "ok" | "err CODE"
 *   info               cuMemGetInfo_v2 -> "info FREE TOTAL"
 *   dev N              make device N's context current -> "ok"
 *   launch N US        N kernels of US microseconds (fake driver), then synchronise -> "ok"
 *   spin US SECONDS WARMUP [VIA]
 *                      launch US-kernels in pairs, two pairs in flight, for SECONDS; report the device time
 *                      that completed after WARMUP -> "spin BUSY_NS WINDOW_NS". VIA: kernel (cuLaunchKernel,
 *                      default), graph (a one-kernel graph, cuGraphLaunch), coop (cuLaunchCooperativeKernel),
 *                      graph-ptsz / coop-ptsz (the per-thread-stream entry from cuGetProcAddress)
 *   export ID          cuIpcGetMemHandle of allocation ID -> "handle HEX"
 *   import HEX         cuIpcOpenMemHandle_v2 -> "ok ID" | "err CODE" (free ID closes it)
 *   fork BYTES         a child process allocates BYTES and exits -> "child ok" | "child err CODE", then "ok"
 *   bench N            N launches of empty kernels and N alloc/free pairs -> "bench LAUNCH_NS... " percentiles
 *   quit
 *
 * Links against libcuda.so.1 (the fake driver in tests; any driver works). */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../include/gp_cuda.h"

CUresult cuInit(unsigned int);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxSynchronize(void);
CUresult cuDeviceGetCount(int *);
CUresult cuModuleLoadData(CUmodule *, const void *);
CUresult cuModuleGetFunction(CUfunction *, CUmodule, const char *);
CUresult cuMemAlloc(CUdeviceptr_v1 *, unsigned int);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned int);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *, CUdevice);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuMemFree(CUdeviceptr_v1);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuLaunchKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                        unsigned int, unsigned int, CUstream, void **, void **);
CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
CUresult cuEventCreate(CUevent *, unsigned int);
CUresult cuEventDestroy_v2(CUevent);
CUresult cuEventRecord(CUevent, CUstream);
CUresult cuEventSynchronize(CUevent);

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*procaddr_fn)(const char *, void **, int, cuuint64_t);
typedef CUresult (*async_fn)(CUdeviceptr *, size_t, CUstream);
CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
CUresult cuLaunchCooperativeKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                                   unsigned int, unsigned int, CUstream, void **);
CUresult cuGraphCreate(CUgraph *, unsigned int);
CUresult cuGraphDestroy(CUgraph);
CUresult cuGraphAddKernelNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, const CUDA_KERNEL_NODE_PARAMS *);
CUresult cuGraphInstantiateWithFlags(CUgraphExec *, CUgraph, unsigned long long);
CUresult cuGraphExecDestroy(CUgraphExec);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult cuIpcGetMemHandle(CUipcMemHandle *, CUdeviceptr);
CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *, CUipcMemHandle, unsigned int);
CUresult cuIpcCloseMemHandle(CUdeviceptr);
typedef CUresult (*graph_launch_fn)(CUgraphExec, CUstream);
typedef CUresult (*coop_fn)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                            unsigned int, unsigned int, CUstream, void **);

enum kind { K_V2, K_V1, K_PITCH, K_MANAGED, K_ASYNC, K_POOL, K_CREATE, K_PROCADDR, K_DLSYM, K_PROCADDR2, K_PTSZ,
            K_IPC /* by import only */ };
static const char *kinds[] = {"v2",     "v1",    "pitch",     "managed", "async", "pool",
                              "create", "procaddr", "dlsym", "procaddr2", "ptsz"};

struct alloc {
    enum kind kind;
    uint64_t key;
    int live;
};
static struct alloc allocs[4096];
static int nallocs;
static CUcontext ctxs[16];
static CUdevice cur_dev;
static CUfunction kernel;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static CUresult do_alloc(enum kind k, size_t n, uint64_t *key) {
    CUdeviceptr p = 0;
    CUresult r;
    switch (k) {
    case K_V2: r = cuMemAlloc_v2(&p, n); break;
    case K_V1: {
        CUdeviceptr_v1 p1 = 0;
        r = cuMemAlloc(&p1, (unsigned int)n);
        p = p1;
        break;
    }
    case K_PITCH: {
        size_t pitch;
        r = cuMemAllocPitch_v2(&p, &pitch, n, 1, 4);
        break;
    }
    case K_MANAGED: r = cuMemAllocManaged(&p, n, 1); break;
    case K_ASYNC: r = cuMemAllocAsync(&p, n, NULL); break;
    case K_POOL: {
        CUmemoryPool pool;
        cuDeviceGetDefaultMemPool(&pool, cur_dev);
        r = cuMemAllocFromPoolAsync(&p, n, pool, NULL);
        break;
    }
    case K_CREATE: {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = 1;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = cur_dev;
        CUmemGenericAllocationHandle h = 0;
        r = cuMemCreate(&h, n, &prop, 0);
        p = h;
        break;
    }
    case K_PROCADDR: {
        void *fn = NULL;
        r = cuGetProcAddress("cuMemAlloc", &fn, 12040, 0);
        if (r == CUDA_SUCCESS)
            r = ((alloc_fn)fn)(&p, n);
        break;
    }
    case K_DLSYM: {
        /* how libcudart reaches the driver: dlopen, dlsym(cuGetProcAddress), then fetch everything through it */
        void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        void *gpa = h ? dlsym(h, "cuGetProcAddress") : NULL;
        void *fn = NULL;
        r = gpa ? ((procaddr_fn)gpa)("cuMemAlloc", &fn, 12040, 0) : CUDA_ERROR_NOT_FOUND;
        if (r == CUDA_SUCCESS)
            r = ((alloc_fn)fn)(&p, n);
        break;
    }
    case K_PROCADDR2: {
        void *fn = NULL;
        CUdriverProcAddressQueryResult status = 0;
        r = cuGetProcAddress_v2("cuMemAlloc", &fn, 12040, 0, &status);
        if (r == CUDA_SUCCESS)
            r = ((alloc_fn)fn)(&p, n);
        break;
    }
    case K_PTSZ: {
        void *fn = NULL;
        r = cuGetProcAddress("cuMemAllocAsync", &fn, 12040, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
        if (r == CUDA_SUCCESS)
            r = ((async_fn)fn)(&p, n, NULL);
        break;
    }
    default: r = CUDA_ERROR_INVALID_VALUE;
    }
    *key = p;
    return r;
}

static CUresult do_free(struct alloc *a) {
    switch (a->kind) {
    case K_V1: return cuMemFree((CUdeviceptr_v1)a->key);
    case K_ASYNC:
    case K_POOL: return cuMemFreeAsync(a->key, NULL);
    case K_CREATE: return cuMemRelease(a->key);
    case K_IPC: return cuIpcCloseMemHandle(a->key);
    default: return cuMemFree_v2(a->key);
    }
}

static CUresult launch(unsigned int us) {
    return cuLaunchKernel(kernel, us, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
}

/* how `spin` launches: VIA (see the header); the graph holds one kernel of `us` blocks */
static const char *via = "kernel";
static CUgraphExec graph_exec;
static graph_launch_fn graph_launch;
static coop_fn coop_launch;

static CUresult prepare_via(const char *name, unsigned int us) {
    via = name;
    int ptsz = strstr(name, "-ptsz") != NULL;
    if (strncmp(name, "graph", 5) == 0) {
        CUgraph g;
        CUDA_KERNEL_NODE_PARAMS p;
        memset(&p, 0, sizeof p);
        p.func = kernel;
        p.gridDimX = us, p.gridDimY = p.gridDimZ = 1, p.blockDimX = 32, p.blockDimY = p.blockDimZ = 1;
        if (graph_exec)
            cuGraphExecDestroy(graph_exec);
        graph_exec = NULL;
        CUresult r = cuGraphCreate(&g, 0);
        if (r != CUDA_SUCCESS)
            return r;
        r = cuGraphAddKernelNode(NULL, g, NULL, 0, &p);
        if (r == CUDA_SUCCESS)
            r = cuGraphInstantiateWithFlags(&graph_exec, g, 0);
        cuGraphDestroy(g);
        if (r != CUDA_SUCCESS)
            return r;
        graph_launch = cuGraphLaunch;
        if (ptsz)
            return cuGetProcAddress("cuGraphLaunch", (void **)&graph_launch, 12040,
                                    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
        return CUDA_SUCCESS;
    }
    if (strncmp(name, "coop", 4) == 0) {
        coop_launch = cuLaunchCooperativeKernel;
        if (ptsz)
            return cuGetProcAddress("cuLaunchCooperativeKernel", (void **)&coop_launch, 12040,
                                    CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
        return CUDA_SUCCESS;
    }
    return strcmp(name, "kernel") == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult launch_via(unsigned int us) {
    if (via[0] == 'g')
        return graph_launch(graph_exec, NULL);
    if (via[0] == 'c')
        return coop_launch(kernel, us, 1, 1, 32, 1, 1, 0, NULL, NULL);
    return launch(us);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void bench(int n) {
    uint64_t *lat = malloc(sizeof(uint64_t) * (size_t)n), *al = malloc(sizeof(uint64_t) * (size_t)n);
    if (!lat || !al)
        return;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        launch(1);
        lat[i] = now_ns() - t0;
    }
    cuCtxSynchronize();
    for (int i = 0; i < n; i++) {
        CUdeviceptr p;
        uint64_t t0 = now_ns();
        CUresult r = cuMemAlloc_v2(&p, 4096);
        al[i] = now_ns() - t0;
        if (r == CUDA_SUCCESS)
            cuMemFree_v2(p);
    }
    qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
    qsort(al, (size_t)n, sizeof *al, cmp_u64);
    printf("bench %llu %llu %llu %llu\n", (unsigned long long)lat[n / 2], (unsigned long long)lat[n * 99 / 100],
           (unsigned long long)al[n / 2], (unsigned long long)al[n * 99 / 100]);
    free(lat);
    free(al);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (cuInit(0) != CUDA_SUCCESS) {
        printf("err init\n");
        return 1;
    }
    int n = 0;
    cuDeviceGetCount(&n);
    for (int i = 0; i < n && i < 16; i++) {
        CUdevice d;
        cuDeviceGet(&d, i);
        cuCtxCreate_v2(&ctxs[i], 0, d);
    }
    cuCtxSetCurrent(ctxs[0]);
    CUmodule mod;
    cuModuleLoadData(&mod, "");
    cuModuleGetFunction(&kernel, mod, "spin");
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[32] = "", a[64] = "";
        unsigned long long x = 0, y = 0;
        double s = 0, w = 0;
        if (sscanf(line, "%31s", cmd) != 1)
            continue;
        if (strcmp(cmd, "alloc") == 0 && sscanf(line, "%*s %63s %llu", a, &x) == 2) {
            int k = -1;
            for (int i = 0; i < (int)(sizeof kinds / sizeof kinds[0]); i++)
                if (strcmp(a, kinds[i]) == 0)
                    k = i;
            uint64_t key = 0;
            CUresult r = k < 0 ? CUDA_ERROR_INVALID_VALUE : do_alloc((enum kind)k, (size_t)x, &key);
            if (r == CUDA_SUCCESS && nallocs < 4096) {
                allocs[nallocs] = (struct alloc){(enum kind)k, key, 1};
                printf("ok %d\n", nallocs++);
            } else {
                printf("err %d\n", r);
            }
        } else if (strcmp(cmd, "free") == 0 && sscanf(line, "%*s %llu", &x) == 1) {
            if (x >= (unsigned long long)nallocs || !allocs[x].live) {
                printf("err bad id\n");
                continue;
            }
            CUresult r = do_free(&allocs[x]);
            allocs[x].live = r != CUDA_SUCCESS;
            printf(r == CUDA_SUCCESS ? "ok\n" : "err %d\n", r);
        } else if (strcmp(cmd, "info") == 0) {
            size_t f = 0, t = 0;
            CUresult r = cuMemGetInfo_v2(&f, &t);
            if (r == CUDA_SUCCESS)
                printf("info %zu %zu\n", f, t);
            else
                printf("err %d\n", r);
        } else if (strcmp(cmd, "dev") == 0 && sscanf(line, "%*s %llu", &x) == 1 && x < 16 && ctxs[x]) {
            cuCtxSetCurrent(ctxs[x]);
            cur_dev = (CUdevice)x;
            printf("ok\n");
        } else if (strcmp(cmd, "launch") == 0 && sscanf(line, "%*s %llu %llu", &x, &y) == 2) {
            CUresult r = CUDA_SUCCESS;
            for (unsigned long long i = 0; i < x && r == CUDA_SUCCESS; i++)
                r = launch((unsigned int)y);
            if (r == CUDA_SUCCESS)
                r = cuCtxSynchronize();
            printf(r == CUDA_SUCCESS ? "ok\n" : "err %d\n", r);
        } else if (strcmp(cmd, "spin") == 0 && sscanf(line, "%*s %llu %lf %lf", &x, &s, &w) == 3) {
            static char via_name[64];
            if (sscanf(line, "%*s %*s %*s %*s %63s", via_name) != 1)
                strcpy(via_name, "kernel");
            CUresult pr = prepare_via(via_name, (unsigned int)x);
            if (pr != CUDA_SUCCESS) {
                printf("err %d\n", pr);
                continue;
            }
            uint64_t t0 = now_ns(), end = t0 + (uint64_t)(s * 1e9), warm = t0 + (uint64_t)(w * 1e9);
            uint64_t first = 0, last = 0, busy = 0;
            CUevent done[2];
            cuEventCreate(&done[0], 0);
            cuEventCreate(&done[1], 0);
            /* two batches in flight, like an application that queues ahead: wait for the older one */
            for (unsigned long long i = 0;; i++) {
                launch_via((unsigned int)x);
                launch_via((unsigned int)x);
                cuEventRecord(done[i % 2], NULL);
                if (i == 0)
                    continue;
                cuEventSynchronize(done[(i + 1) % 2]);
                uint64_t t = now_ns();
                if (t > end)
                    break;
                if (t < warm)
                    continue;
                if (!first)
                    first = t;
                else
                    busy += 2 * x * 1000;
                last = t;
            }
            cuCtxSynchronize();
            cuEventDestroy_v2(done[0]);
            cuEventDestroy_v2(done[1]);
            printf("spin %llu %llu\n", (unsigned long long)busy, (unsigned long long)(last - first));
        } else if (strcmp(cmd, "fork") == 0 && sscanf(line, "%*s %llu", &x) == 1) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                CUdeviceptr p;
                CUresult r = cuMemAlloc_v2(&p, (size_t)x);
                printf(r == CUDA_SUCCESS ? "child ok\n" : "child err %d\n", r);
                exit(0);
            }
            int status = 0;
            if (pid > 0)
                waitpid(pid, &status, 0);
            printf(pid > 0 ? "ok\n" : "err fork\n");
        } else if (strcmp(cmd, "export") == 0 && sscanf(line, "%*s %llu", &x) == 1) {
            CUipcMemHandle h;
            CUresult r = x < (unsigned long long)nallocs ? cuIpcGetMemHandle(&h, allocs[x].key)
                                                         : CUDA_ERROR_INVALID_VALUE;
            if (r != CUDA_SUCCESS) {
                printf("err %d\n", r);
                continue;
            }
            printf("handle ");
            for (size_t i = 0; i < sizeof h.reserved; i++)
                printf("%02x", (unsigned char)h.reserved[i]);
            printf("\n");
        } else if (strcmp(cmd, "import") == 0) {
            char hex[160] = "";
            CUipcMemHandle h;
            memset(&h, 0, sizeof h);
            if (sscanf(line, "%*s %159s", hex) == 1 && strlen(hex) == 2 * sizeof h.reserved)
                for (size_t i = 0; i < sizeof h.reserved; i++) {
                    unsigned int byte = 0;
                    if (sscanf(hex + 2 * i, "%2x", &byte) == 1)
                        h.reserved[i] = (char)byte;
                }
            CUdeviceptr p = 0;
            CUresult r = cuIpcOpenMemHandle_v2(&p, h, 1);
            if (r == CUDA_SUCCESS && nallocs < 4096) {
                allocs[nallocs] = (struct alloc){K_IPC, p, 1};
                printf("ok %d\n", nallocs++);
            } else {
                printf("err %d\n", r);
            }
        } else if (strcmp(cmd, "bench") == 0 && sscanf(line, "%*s %llu", &x) == 1 && x > 0) {
            bench((int)x);
        } else if (strcmp(cmd, "quit") == 0) {
            break;
        } else {
            printf("err unknown command\n");
        }
    }
    return 0;
}
