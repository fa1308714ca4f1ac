/* Compute share: a token bucket of device time per device per container, refilled at the allowance and
 * drained by what the container's kernels actually ran on the device.
 *
 * Each launch is bracketed by two events; the bucket is charged an estimate (running mean of this process's
 * kernels) at launch and trued up with the measured elapsed time when the events complete (feedback, not a
 * fixed sleep). A launch waits while the bucket is empty. Every 100 ms one process of the container closes a
 * usage window, publishes the container's usage in the GPU's sharing region and sets the allowance: `ceiling`
 * = the share; `share` = the share, raised to what the other containers of the GPU leave idle. */
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "runtime.h"

#define RING 256u
#define WINDOW_NS 100000000ull
#define STALE_NS 500000000ull
#define RECLAIM_NS 10000000000ull
#define BURST_NS 20000000ll
#define SHARE_MARGIN_BP 500u
#define FIRST_ESTIMATE_NS 50000ll

struct ring {
    pthread_mutex_t m;
    CUevent start[RING], end[RING];
    CUcontext ctx[RING];
    int64_t est[RING];
    unsigned head, tail;
    int64_t mean_ns;
};

static struct ring rings[GP_MAX_DEV];
static pthread_once_t rings_once = PTHREAD_ONCE_INIT;

static void rings_init(void) {
    for (int i = 0; i < GP_MAX_DEV; i++) {
        pthread_mutex_init(&rings[i].m, NULL);
        rings[i].mean_ns = FIRST_ESTIMATE_NS;
    }
}

void gp_compute_reset_after_fork(void) {
    memset(rings, 0, sizeof rings); /* the parent's events are not valid in the child */
    rings_init();
}

static void refill(struct gp_acc_dev *d, uint64_t now) {
    uint64_t last = __atomic_load_n(&d->refill_ns, __ATOMIC_RELAXED);
    if (now <= last || !__atomic_compare_exchange_n(&d->refill_ns, &last, now, 0, __ATOMIC_ACQ_REL,
                                                     __ATOMIC_RELAXED))
        return;
    if (last == 0)
        return;
    uint32_t allow = __atomic_load_n(&d->allowance, __ATOMIC_RELAXED);
    if (allow < 100)
        allow = 100; /* never starve: at least 1 % */
    int64_t add = (int64_t)((now - last) * allow / 10000u);
    int64_t t = __atomic_add_fetch(&d->tokens_ns, add, __ATOMIC_ACQ_REL);
    while (t > BURST_NS && !__atomic_compare_exchange_n(&d->tokens_ns, &t, BURST_NS, 0, __ATOMIC_ACQ_REL,
                                                         __ATOMIC_RELAXED))
        ;
}

static void gate(int idx) {
    struct gp_acc_dev *d = &gp.acc->dev[idx];
    for (;;) {
        refill(d, gp_now_ns());
        int64_t t = __atomic_load_n(&d->tokens_ns, __ATOMIC_ACQUIRE);
        if (t > 0)
            return;
        uint32_t allow = __atomic_load_n(&d->allowance, __ATOMIC_RELAXED);
        if (allow < 100)
            allow = 100;
        uint64_t wait = (uint64_t)(-t) * 10000u / allow + 1;
        if (wait < 20000)
            wait = 20000;
        if (wait > 20000000)
            wait = 20000000;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)wait};
        nanosleep(&ts, NULL);
        gp_tick(); /* live limits and windows keep moving while we wait */
    }
}

static void complete(struct ring *r, int idx, int64_t ns, int64_t est) {
    struct gp_acc_dev *d = &gp.acc->dev[idx];
    __atomic_add_fetch(&d->busy_ns, (uint64_t)ns, __ATOMIC_RELAXED);
    __atomic_add_fetch(&d->tokens_ns, est - ns, __ATOMIC_RELAXED);
    r->mean_ns += (ns - r->mean_ns) / 8;
}

/* Charge the completed launches; with `block`, wait for the oldest first. Ring lock held. */
static void poll_ring(struct ring *r, int idx, int block) {
    while (r->tail != r->head) {
        unsigned s = r->tail % RING;
        CUresult q = block ? gp_real.cuEventSynchronize(r->end[s]) : gp_real.cuEventQuery(r->end[s]);
        if (q == CUDA_ERROR_NOT_READY)
            return;
        float ms = -1.0f;
        int64_t ns = r->est[s];
        if (q == CUDA_SUCCESS && gp_real.cuEventElapsedTime(&ms, r->start[s], r->end[s]) == CUDA_SUCCESS &&
            ms >= 0.0f)
            ns = (int64_t)((double)ms * 1e6);
        complete(r, idx, ns, r->est[s]);
        r->tail++;
        block = 0;
    }
}

void gp_launch_begin(struct gp_launch *l, CUstream stream, int ptsz) {
    l->idx = -1;
    if (!gp_enabled() || !gp_real.cuEventRecord || !gp_real.cuEventQuery || !gp_real.cuEventElapsedTime ||
        !gp_real.cuEventCreate || !gp_real.cuEventSynchronize || !gp_real.cuCtxGetCurrent)
        return; /* a driver without events: launches pass unmeasured */
    int idx = gp_current_limit_index();
    if (idx < 0)
        return;
    pthread_once(&rings_once, rings_init);
    gp_tick();
    struct ring *r = &rings[idx];
    pthread_mutex_lock(&r->m);
    poll_ring(r, idx, 0);
    pthread_mutex_unlock(&r->m);
    gate(idx);
    pthread_mutex_lock(&r->m);
    poll_ring(r, idx, 0);
    while (r->head - r->tail >= RING)
        poll_ring(r, idx, 1);
    unsigned s = r->head % RING;
    CUcontext ctx = NULL;
    gp_real.cuCtxGetCurrent(&ctx);
    if (!r->start[s] || r->ctx[s] != ctx) {
        if (r->start[s] && gp_real.cuEventDestroy_v2) {
            gp_real.cuEventDestroy_v2(r->start[s]);
            gp_real.cuEventDestroy_v2(r->end[s]);
        }
        r->start[s] = r->end[s] = NULL;
        if (gp_real.cuEventCreate(&r->start[s], CU_EVENT_DEFAULT) != CUDA_SUCCESS ||
            gp_real.cuEventCreate(&r->end[s], CU_EVENT_DEFAULT) != CUDA_SUCCESS) {
            r->start[s] = r->end[s] = NULL;
            pthread_mutex_unlock(&r->m);
            return; /* unmeasured, not failed */
        }
        r->ctx[s] = ctx;
    }
    CUresult (*rec)(CUevent, CUstream) = ptsz && gp_real.cuEventRecord_ptsz ? gp_real.cuEventRecord_ptsz
                                                                            : gp_real.cuEventRecord;
    if (rec(r->start[s], stream) != CUDA_SUCCESS) {
        pthread_mutex_unlock(&r->m);
        return;
    }
    r->est[s] = r->mean_ns;
    __atomic_sub_fetch(&gp.acc->dev[idx].tokens_ns, r->mean_ns, __ATOMIC_RELAXED);
    l->idx = idx;
    l->slot = (int)s;
    l->ptsz = ptsz;
    l->stream = stream;
    /* ring lock stays held until gp_launch_end */
}

void gp_launch_end(struct gp_launch *l, CUresult launched) {
    if (l->idx < 0)
        return;
    struct ring *r = &rings[l->idx];
    unsigned s = (unsigned)l->slot;
    CUresult (*rec)(CUevent, CUstream) = l->ptsz && gp_real.cuEventRecord_ptsz ? gp_real.cuEventRecord_ptsz
                                                                               : gp_real.cuEventRecord;
    if (launched == CUDA_SUCCESS && rec(r->end[s], l->stream) == CUDA_SUCCESS)
        r->head++;
    else
        __atomic_add_fetch(&gp.acc->dev[l->idx].tokens_ns, r->est[s], __ATOMIC_RELAXED);
    pthread_mutex_unlock(&r->m);
}

static int my_share_slot(struct gp_shr *shr, int idx, uint64_t now) {
    int s = gp.shr_slot[idx];
    if (s >= 0 && __atomic_load_n(&shr->slot[s].owner, __ATOMIC_RELAXED) == gp.owner)
        return s;
    for (int j = 0; j < GP_MAX_SHARERS; j++)
        if (__atomic_load_n(&shr->slot[j].owner, __ATOMIC_RELAXED) == gp.owner)
            return gp.shr_slot[idx] = j;
    for (int j = 0; j < GP_MAX_SHARERS; j++) {
        uint64_t o = __atomic_load_n(&shr->slot[j].owner, __ATOMIC_RELAXED);
        uint64_t st = __atomic_load_n(&shr->slot[j].stamp_ns, __ATOMIC_RELAXED);
        if ((o == 0 || (st < now && now - st > RECLAIM_NS)) &&
            __atomic_compare_exchange_n(&shr->slot[j].owner, &o, gp.owner, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            __atomic_store_n(&shr->slot[j].stamp_ns, now, __ATOMIC_RELAXED);
            return gp.shr_slot[idx] = j;
        }
    }
    return -1;
}

void gp_compute_window(int idx, uint64_t now) {
    struct gp_acc_dev *d = &gp.acc->dev[idx];
    uint64_t w0 = __atomic_load_n(&d->window_ns, __ATOMIC_RELAXED);
    if ((w0 != 0 && now - w0 < WINDOW_NS) || now < w0 ||
        !__atomic_compare_exchange_n(&d->window_ns, &w0, now, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return;
    uint64_t busy = __atomic_load_n(&d->busy_ns, __ATOMIC_RELAXED);
    uint64_t prev = __atomic_exchange_n(&d->window_busy_ns, busy, __ATOMIC_ACQ_REL);
    uint64_t usage = w0 && busy >= prev ? (busy - prev) * 10000u / (now - w0) : 0;
    if (usage > 10000)
        usage = 10000;
    uint32_t compute = __atomic_load_n(&d->compute, __ATOMIC_RELAXED);
    uint32_t allow = compute * 100u;
    struct gp_shr *shr = gp.shr[idx];
    int mine = shr ? my_share_slot(shr, idx, now) : -1;
    if (mine >= 0) {
        __atomic_store_n(&shr->slot[mine].usage_bp, (uint32_t)usage, __ATOMIC_RELAXED);
        __atomic_store_n(&shr->slot[mine].compute, compute, __ATOMIC_RELAXED);
        __atomic_store_n(&shr->slot[mine].stamp_ns, now, __ATOMIC_RELEASE);
        if (__atomic_load_n(&gp.acc->mode, __ATOMIC_RELAXED) == GP_MODE_SHARE) {
            uint64_t others = 0;
            for (int j = 0; j < GP_MAX_SHARERS; j++) {
                if (j == mine || __atomic_load_n(&shr->slot[j].owner, __ATOMIC_RELAXED) == 0)
                    continue;
                uint64_t st = __atomic_load_n(&shr->slot[j].stamp_ns, __ATOMIC_ACQUIRE);
                if (st <= now && now - st < STALE_NS)
                    others += __atomic_load_n(&shr->slot[j].usage_bp, __ATOMIC_RELAXED);
            }
            if (others == 0)
                allow = 10000;
            else if (others + SHARE_MARGIN_BP < 10000 && 10000 - others - SHARE_MARGIN_BP > allow)
                allow = (uint32_t)(10000 - others - SHARE_MARGIN_BP);
        }
    }
    __atomic_store_n(&d->allowance, allow, __ATOMIC_RELAXED);
}
