/* The real driver (dlopen "libcuda.so.1") and the dlsym hook that hands out our wrappers.
 *
 * Why hook dlsym: libcudart >= 11.3, cuBLAS and PyTorch dlopen the driver and look up cuGetProcAddress with
 * dlsym(handle, ...), which searches only that library's scope and so bypasses a preloaded definition. On
 * x86_64 the hook is a small assembly trampoline that tail-jumps to the real dlsym, so that dlsym(RTLD_NEXT)
 * calls from other libraries keep their caller (glibc resolves RTLD_NEXT from the return address). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime.h"

struct gp_real gp_real;
static void *cuda_handle;
static int resolved_ok;
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;

typedef void *(*dlsym_fn)(void *, const char *);
__attribute__((visibility("hidden"))) dlsym_fn gp_real_dlsym;

/* Runs inside every dlsym of the process, sanitizer start-up included: never instrumented. */
#define GP_NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

GP_NO_SANITIZE static void find_real_dlsym(void) {
    if (gp_real_dlsym)
        return;
    dlsym_fn f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!f)
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    if (!f)
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.17"); /* aarch64 */
    __atomic_store_n(&gp_real_dlsym, f, __ATOMIC_RELEASE);
}

void *gp_real_sym(const char *name) {
    find_real_dlsym();
    if (!cuda_handle || !gp_real_dlsym)
        return NULL;
    return gp_real_dlsym(cuda_handle, name);
}

#define R(name) gp_real.name = (__typeof__(gp_real.name))gp_real_sym(#name)

static void resolve(void) {
    find_real_dlsym();
    const char *lib = getenv("GPUPOOL_CUDA_LIBRARY");
    cuda_handle = dlopen(lib && *lib ? lib : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cuda_handle) {
        gp_log("cannot load the CUDA driver (%s); passing calls through", dlerror());
        return;
    }
    R(cuInit); R(cuCtxGetDevice); R(cuCtxGetCurrent);
    R(cuMemAlloc); R(cuMemAlloc_v2); R(cuMemAllocPitch); R(cuMemAllocPitch_v2); R(cuMemAllocManaged);
    R(cuMemAllocAsync); R(cuMemAllocAsync_ptsz); R(cuMemAllocFromPoolAsync); R(cuMemAllocFromPoolAsync_ptsz);
    R(cuMemCreate); R(cuMemRelease); R(cuMemFree); R(cuMemFree_v2); R(cuMemFreeAsync); R(cuMemFreeAsync_ptsz);
    R(cuMemGetInfo); R(cuMemGetInfo_v2);
    R(cuLaunchKernel); R(cuLaunchKernel_ptsz); R(cuLaunchKernelEx); R(cuLaunchKernelEx_ptsz);
    R(cuLaunchCooperativeKernel); R(cuLaunchCooperativeKernel_ptsz); R(cuGraphLaunch); R(cuGraphLaunch_ptsz);
    R(cuGetProcAddress); R(cuGetProcAddress_v2);
    R(cuEventCreate); R(cuEventDestroy_v2); R(cuEventRecord); R(cuEventRecord_ptsz); R(cuEventQuery);
    R(cuEventSynchronize); R(cuEventElapsedTime);
    resolved_ok = gp_real.cuCtxGetDevice != NULL;
}

int gp_resolve(void) {
    pthread_once(&resolve_once, resolve);
    return resolved_ok ? 0 : -1;
}

int gp_is_cuda_handle(void *handle);
int gp_is_cuda_handle(void *handle) {
    if (handle == RTLD_DEFAULT || handle == RTLD_NEXT)
        return 1;
    if (gp_resolve() != 0)
        return 0;
    return handle == cuda_handle;
}

void *gp_wrapper_for(const char *name); /* procaddr.c */

/* Returns our wrapper when `name` is an intercepted driver entry looked up in the driver, else NULL (then the
 * trampoline continues into the real dlsym). */
__attribute__((visibility("hidden"))) void *gp_dlsym_hook(void *handle, const char *name);
GP_NO_SANITIZE void *gp_dlsym_hook(void *handle, const char *name) {
    find_real_dlsym();
    if (!name || name[0] != 'c' || name[1] != 'u')
        return NULL;
    void *w = gp_wrapper_for(name);
    if (!w || !gp_is_cuda_handle(handle))
        return NULL;
    return w;
}

#if defined(__x86_64__) && !defined(GP_C_DLSYM)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym,@function\n"
        "dlsym:\n"
        "  pushq %rdi\n"
        "  pushq %rsi\n"
        "  subq $8, %rsp\n"
        "  call gp_dlsym_hook\n"
        "  addq $8, %rsp\n"
        "  popq %rsi\n"
        "  popq %rdi\n"
        "  testq %rax, %rax\n"
        "  jz 1f\n"
        "  ret\n"
        "1:\n"
        "  movq gp_real_dlsym(%rip), %rax\n"
        "  testq %rax, %rax\n"
        "  jz 2f\n"
        "  jmp *%rax\n"
        "2:\n"
        "  ret\n"
        ".size dlsym, .-dlsym\n");
#else
/* Other architectures: a C forwarder; dlsym(RTLD_NEXT, ...) from other libraries then resolves relative to
 * this library (documented in docs/runtime.md). */
GP_EXPORT void *dlsym(void *handle, const char *name) {
    void *w = gp_dlsym_hook(handle, name);
    return w || !gp_real_dlsym ? w : gp_real_dlsym(handle, name);
}
#endif

uint64_t gp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void gp_log(const char *fmt, ...) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "gpupool-runtime[%d]: ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && n < (int)sizeof buf)
        n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w;
}
