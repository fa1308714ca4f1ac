/* Test helper: another preloaded interposer that wraps time() and finds the real one with dlsym(RTLD_NEXT).
 * Loaded after libgpupool.so, it checks that gpupool's dlsym hook keeps the caller: were RTLD_NEXT resolved
 * relative to libgpupool.so, it would find this very time() and recurse until the stack overflows. */
#include <dlfcn.h>
#include <time.h>

__attribute__((visibility("default"))) time_t time(time_t *t) {
    time_t (*real)(time_t *) = (time_t (*)(time_t *))dlsym(RTLD_NEXT, "time");
    if (!real || (void *)real == (void *)time)
        return (time_t)-1;
    return real(t);
}
