/* Limits and the per-container regions: Allocate env, the agent's control region, the shared accounting
 * region, the per-GPU sharing regions (formats: regions.h, docs/runtime.md).
 *
 * Precedence: an existing accounting region holds the limits in effect for the whole container; a new one is
 * seeded from the control region, else from the Allocate env. A valid control region that differs from the
 * limits in effect replaces them (live limits); a missing or corrupt one changes nothing (fail closed). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

struct gp_state gp = {.my_proc = -1};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static char dir_path[PATH_MAX], ctl_path[PATH_MAX + 16], acc_path[PATH_MAX + 16];
static uint64_t next_ctl_ns, next_reap_ns;
static struct stat ctl_seen;
static int ctl_status = -1; /* -1 never read, 0 valid, 1 missing, 2 corrupt */
static int lock_broken;

struct gp_limits {
    int ndev;
    uint32_t mode;
    uint64_t generation;
    uint64_t memory_mib[GP_MAX_DEV];
    uint32_t compute[GP_MAX_DEV];
};

static uint64_t fnv1a64(const unsigned char *p, size_t n) {
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* 0 valid, 1 missing, 2 corrupt (reason in `why`) */
static int read_control(struct gp_limits *out, char *why, size_t whylen) {
    unsigned char buf[sizeof(struct gp_ctl_head) + GP_MAX_DEV * sizeof(struct gp_ctl_dev) + 8 + 1];
    int fd = open(ctl_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return errno == ENOENT ? 1 : 2;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    struct gp_ctl_head h;
    if (n < (ssize_t)sizeof h) {
        snprintf(why, whylen, "%zd bytes, shorter than its header", n);
        return 2;
    }
    memcpy(&h, buf, sizeof h);
    if (h.magic != GP_CTL_MAGIC || h.version != GP_CTL_VERSION) {
        snprintf(why, whylen, "bad magic or version %u", (unsigned)h.version);
        return 2;
    }
    if (h.ndev < 1 || h.ndev > GP_MAX_DEV) {
        snprintf(why, whylen, "ndev %u outside 1..%d", (unsigned)h.ndev, GP_MAX_DEV);
        return 2;
    }
    size_t body = sizeof h + h.ndev * sizeof(struct gp_ctl_dev);
    if ((size_t)n != body + 8) {
        snprintf(why, whylen, "%zd bytes, expected %zu", n, body + 8);
        return 2;
    }
    uint64_t sum;
    memcpy(&sum, buf + body, 8);
    if (sum != fnv1a64(buf, body)) {
        snprintf(why, whylen, "checksum mismatch");
        return 2;
    }
    if (h.mode != GP_MODE_CEILING && h.mode != GP_MODE_SHARE) {
        snprintf(why, whylen, "mode %u unknown", h.mode);
        return 2;
    }
    out->ndev = h.ndev;
    out->mode = h.mode;
    out->generation = h.generation;
    for (int i = 0; i < h.ndev; i++) {
        struct gp_ctl_dev d;
        memcpy(&d, buf + sizeof h + (size_t)i * sizeof d, sizeof d);
        if (d.compute < 1 || d.compute > 100 || d.memory_mib > (1ull << 40)) {
            snprintf(why, whylen, "device %d: compute %u or memory %llu MiB out of range", i, d.compute,
                     (unsigned long long)d.memory_mib);
            return 2;
        }
        out->memory_mib[i] = d.memory_mib;
        out->compute[i] = d.compute;
    }
    return 0;
}

/* "4096,2048" -> values; number of values, -1 on a malformed list */
static int parse_list(const char *s, uint64_t *vals, uint64_t max) {
    int n = 0;
    while (s && *s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s || errno || v > max || n == GP_MAX_DEV || (*end && *end != ','))
            return -1;
        vals[n++] = v;
        s = *end ? end + 1 : end;
    }
    return n;
}

/* 0 when the Allocate env gives limits */
static int env_limits(struct gp_limits *out) {
    uint64_t mem[GP_MAX_DEV], cpu[GP_MAX_DEV];
    const char *m = getenv("GPUPOOL_MEMORY_LIMITS"), *c = getenv("GPUPOOL_COMPUTE_LIMITS");
    const char *mode = getenv("GPUPOOL_COMPUTE_MODE");
    if (!m || !*m)
        return -1;
    int nm = parse_list(m, mem, 1ull << 40);
    int nc = c && *c ? parse_list(c, cpu, 100) : 0;
    if (nm < 1 || nc < 0 || (nc && nc != nm)) {
        gp_log("GPUPOOL_MEMORY_LIMITS=%s / GPUPOOL_COMPUTE_LIMITS=%s malformed (want MiB and percent per device, "
               "comma separated, same count)", m, c ? c : "");
        return -1;
    }
    out->ndev = nm;
    out->mode = mode && strcmp(mode, "share") == 0 ? GP_MODE_SHARE : GP_MODE_CEILING;
    out->generation = 0;
    for (int i = 0; i < nm; i++) {
        out->memory_mib[i] = mem[i];
        out->compute[i] = nc ? (uint32_t)(cpu[i] ? cpu[i] : 1) : 100;
    }
    return 0;
}

static void limits_into(struct gp_acc *a, const struct gp_limits *l) {
    a->ndev = (uint32_t)l->ndev;
    a->mode = l->mode;
    a->generation = l->generation;
    for (int i = 0; i < GP_MAX_DEV; i++) {
        struct gp_acc_dev *d = &a->dev[i];
        if (i < l->ndev) {
            d->memory_limit = l->memory_mib[i] << 20;
            d->compute = l->compute[i];
        } else {
            d->memory_limit = 0;
            d->compute = 1;
        }
        uint32_t allow = d->compute * 100;
        if (l->mode == GP_MODE_CEILING || d->allowance == 0 || d->allowance < allow)
            __atomic_store_n(&d->allowance, allow, __ATOMIC_RELAXED);
    }
}

static int init_region(struct gp_acc *a, const struct gp_limits *l) {
    memset(a, 0, sizeof *a);
    pthread_mutexattr_t at;
    if (pthread_mutexattr_init(&at) || pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED) ||
        pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST) || pthread_mutex_init(&a->lock.m, &at))
        return -1;
    pthread_mutexattr_destroy(&at);
    limits_into(a, l);
    a->version = GP_ACC_VERSION;
    __atomic_store_n(&a->magic, GP_ACC_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

static struct gp_acc *private_region(const struct gp_limits *l) {
    void *p = mmap(NULL, sizeof(struct gp_acc), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || init_region(p, l) != 0)
        return NULL;
    return p;
}

static struct gp_acc *map_fd(int fd) {
    void *p = mmap(NULL, sizeof(struct gp_acc), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Open (or create, atomically: a full temp file linked into place) the container's accounting region. */
static struct gp_acc *open_shared_region(const struct gp_limits *seed, char *why, size_t whylen) {
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(acc_path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) != 0 || st.st_size != (off_t)sizeof(struct gp_acc)) {
                close(fd);
                snprintf(why, whylen, "size %lld, expected %zu", (long long)st.st_size, sizeof(struct gp_acc));
                return NULL;
            }
            struct gp_acc *a = map_fd(fd);
            close(fd);
            if (!a) {
                snprintf(why, whylen, "mmap: %s", strerror(errno));
                return NULL;
            }
            if (__atomic_load_n(&a->magic, __ATOMIC_ACQUIRE) != GP_ACC_MAGIC || a->version != GP_ACC_VERSION ||
                a->ndev > GP_MAX_DEV) {
                munmap(a, sizeof *a);
                snprintf(why, whylen, "bad magic, version or device count");
                return NULL;
            }
            gp.owner = ((uint64_t)st.st_dev << 40) ^ (uint64_t)st.st_ino ^ 1;
            return a;
        }
        if (errno != ENOENT || !seed) {
            snprintf(why, whylen, "%s", strerror(errno));
            return NULL;
        }
        char tmp[PATH_MAX + 64];
        snprintf(tmp, sizeof tmp, "%s/.accounting.%d", dir_path, (int)getpid());
        fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (fd < 0) {
            snprintf(why, whylen, "create %.160s: %s", tmp, strerror(errno));
            return NULL;
        }
        if (fchmod(fd, 0666) != 0 || ftruncate(fd, sizeof(struct gp_acc)) != 0) {
            snprintf(why, whylen, "size %.160s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return NULL;
        }
        struct gp_acc *a = map_fd(fd);
        close(fd);
        if (!a || init_region(a, seed) != 0) {
            snprintf(why, whylen, "initialise %.160s", tmp);
            unlink(tmp);
            return NULL;
        }
        munmap(a, sizeof *a);
        int linked = link(tmp, acc_path);
        unlink(tmp);
        if (linked != 0 && errno != EEXIST) {
            snprintf(why, whylen, "link %.160s: %s", acc_path, strerror(errno));
            return NULL;
        }
        /* linked, or another process won the race: open what is there */
    }
    snprintf(why, whylen, "vanished while opening");
    return NULL;
}

static struct gp_shr *open_shares(const char *gpudir, int idx) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%d/shares", gpudir, idx);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || (st.st_size < (off_t)sizeof(struct gp_shr) &&
                                (fchmod(fd, 0666), ftruncate(fd, sizeof(struct gp_shr))) != 0)) {
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, sizeof(struct gp_shr), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

static void describe_limits(char *buf, size_t len) {
    size_t off = 0;
    buf[0] = 0;
    for (uint32_t i = 0; gp.acc && i < gp.acc->ndev && off < len; i++) {
        int n = snprintf(buf + off, len - off, "%sdevice %u: %llu MiB, %u %%", i ? "; " : "", i,
                         (unsigned long long)(gp.acc->dev[i].memory_limit >> 20), gp.acc->dev[i].compute);
        if (n < 0)
            break;
        off += (size_t)n;
    }
}

static void child_after_fork(void) {
    gp.my_proc = -1;
    gp_mem_reset_after_fork();
    gp_compute_reset_after_fork();
}

static void init(void) {
    if (gp_resolve() != 0)
        return;
    const char *d = getenv("GPUPOOL_RUNTIME_DIR");
    int dir_from_env = d && *d;
    snprintf(dir_path, sizeof dir_path, "%s", dir_from_env ? d : "/run/gpupool");
    snprintf(ctl_path, sizeof ctl_path, "%s/control", dir_path);
    snprintf(acc_path, sizeof acc_path, "%s/accounting", dir_path);
    struct stat st;
    int have_dir = stat(dir_path, &st) == 0 && S_ISDIR(st.st_mode);

    struct gp_limits env, ctl, *seed = NULL;
    int have_env = env_limits(&env) == 0;
    char why[256] = "", why2[256] = "";
    ctl_status = have_dir ? read_control(&ctl, why, sizeof why) : 1;
    if (!have_dir)
        snprintf(why, sizeof why, "no directory %.200s", dir_path);
    if (ctl_status == 0) {
        seed = &ctl;
        stat(ctl_path, &ctl_seen);
    } else if (have_env) {
        seed = &env;
    }
    if (!have_dir && !have_env)
        return; /* not a gpupool container: pass everything through */

    if (have_dir)
        gp.acc = open_shared_region(seed, why2, sizeof why2);
    if (!gp.acc) {
        struct gp_limits deny = {.ndev = GP_MAX_DEV};
        for (int i = 0; i < GP_MAX_DEV; i++)
            deny.compute[i] = 1;
        gp.acc = private_region(seed ? seed : &deny);
        if (!gp.acc)
            return;
        gp.owner = ((uint64_t)getpid() << 20) | 3;
        gp_log("accounting region %s unusable (%s); limits hold for this process alone",
               have_dir ? acc_path : dir_path, have_dir ? why2 : "no such directory");
    }
    if (ctl_status != 0) {
        char lim[256];
        describe_limits(lim, sizeof lim);
        gp_log("control region %s %s (%s); keeping the limits in effect: %s", ctl_path,
               ctl_status == 1 ? "missing" : "corrupt", why, lim);
    }
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (vis && *vis) {
        uint64_t v[GP_MAX_DEV];
        int n = parse_list(vis, v, GP_MAX_DEV - 1);
        for (int i = 0; i < n; i++)
            gp.vis_map[i] = (int)v[i];
        gp.nvis = n > 0 ? n : 0;
    }
    const char *gpudir = getenv("GPUPOOL_GPU_DIR");
    for (int i = 0; i < GP_MAX_DEV; i++) {
        gp.shr_slot[i] = -1;
        gp.shr[i] = gpudir && *gpudir && (uint32_t)i < gp.acc->ndev ? open_shares(gpudir, i) : NULL;
    }
    pthread_atfork(NULL, NULL, child_after_fork);
    uint64_t now = gp_now_ns();
    next_ctl_ns = now + 100000000ull;
    next_reap_ns = now;
    __atomic_store_n(&gp.active, 1, __ATOMIC_RELEASE);
}

int gp_enabled(void) {
    pthread_once(&init_once, init);
    return __atomic_load_n(&gp.active, __ATOMIC_ACQUIRE);
}

int gp_limit_index(CUdevice dev) {
    if (dev < 0 || dev >= GP_MAX_DEV)
        return -1;
    int idx = dev < gp.nvis ? gp.vis_map[dev] : dev;
    return (uint32_t)idx < __atomic_load_n(&gp.acc->ndev, __ATOMIC_RELAXED) ? idx : -1;
}

int gp_current_limit_index(void) {
    CUdevice d;
    if (gp_real.cuCtxGetDevice(&d) != CUDA_SUCCESS)
        return -1;
    return gp_limit_index(d);
}

void gp_lock(void) {
    if (lock_broken)
        return;
    int r = pthread_mutex_lock(&gp.acc->lock.m);
    if (r == EOWNERDEAD) {
        pthread_mutex_consistent(&gp.acc->lock.m); /* a process died holding it: its entry is reaped below */
    } else if (r != 0) {
        lock_broken = 1;
        gp_log("accounting lock unusable (%s); continuing without it", strerror(r));
    }
}

void gp_unlock(void) {
    if (!lock_broken)
        pthread_mutex_unlock(&gp.acc->lock.m);
}

/* 0 unknown, else starttime; *zombie set when the process is dead but not yet waited for */
static uint64_t proc_start_time(int pid, int *dead) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *dead = 0;
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return 0;
    p += 2;
    if (*p == 'Z' || *p == 'X')
        *dead = 1;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoull(p, NULL, 10) : 0;
}

static int proc_alive(const struct gp_acc_proc *e) {
    if (kill(e->pid, 0) != 0 && errno == ESRCH)
        return 0;
    int dead;
    uint64_t st = proc_start_time(e->pid, &dead);
    if (dead)
        return 0;
    if (st && e->start_time && st != e->start_time)
        return 0;
    return 1;
}

void gp_reap_locked(void) {
    int self = (int)getpid();
    for (int i = 0; i < GP_MAX_PROCS; i++) {
        struct gp_acc_proc *e = &gp.acc->proc[i];
        if (e->pid == 0 || e->pid == self || proc_alive(e))
            continue;
        for (int d = 0; d < GP_MAX_DEV; d++) {
            uint64_t u = e->used[d];
            gp.acc->dev[d].memory_used -= u <= gp.acc->dev[d].memory_used ? u : gp.acc->dev[d].memory_used;
            e->used[d] = 0;
        }
        e->pid = 0;
        if (gp.acc->nprocs)
            gp.acc->nprocs--;
    }
}

/* This process's entry, registering it first; call with the lock held. -1 when the table is full. */
int gp_my_entry_locked(void);
int gp_my_entry_locked(void) {
    int self = (int)getpid();
    if (gp.my_proc >= 0 && gp.acc->proc[gp.my_proc].pid == self)
        return gp.my_proc;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < GP_MAX_PROCS; i++) {
            struct gp_acc_proc *e = &gp.acc->proc[i];
            if (e->pid != 0)
                continue;
            memset(e, 0, sizeof *e);
            int dead;
            e->start_time = proc_start_time(self, &dead);
            e->pid = self;
            gp.acc->nprocs++;
            gp.my_proc = i;
            return i;
        }
        gp_reap_locked();
    }
    return -1;
}

static void check_control(void) {
    struct stat st;
    int present = stat(ctl_path, &st) == 0;
    if (present && ctl_status == 0 && st.st_ino == ctl_seen.st_ino && st.st_size == ctl_seen.st_size &&
        st.st_mtim.tv_sec == ctl_seen.st_mtim.tv_sec && st.st_mtim.tv_nsec == ctl_seen.st_mtim.tv_nsec)
        return;
    struct gp_limits l;
    char why[256] = "";
    int status = present ? read_control(&l, why, sizeof why) : 1;
    if (status == 1 && !present)
        snprintf(why, sizeof why, "%s", strerror(ENOENT));
    if (status == 0) {
        ctl_seen = st;
        gp_lock();
        int differs = gp.acc->generation != l.generation || gp.acc->ndev != (uint32_t)l.ndev || gp.acc->mode != l.mode;
        for (int i = 0; !differs && i < l.ndev; i++)
            differs = gp.acc->dev[i].memory_limit != l.memory_mib[i] << 20 || gp.acc->dev[i].compute != l.compute[i];
        if (differs)
            limits_into(gp.acc, &l);
        gp_unlock();
        if (ctl_status > 0)
            gp_log("control region %s valid again (generation %llu)", ctl_path, (unsigned long long)l.generation);
    } else if (status != ctl_status) {
        char lim[256];
        describe_limits(lim, sizeof lim);
        gp_log("control region %s %s (%s); keeping the limits in effect: %s", ctl_path,
               status == 1 ? "missing" : "corrupt", why, lim);
    }
    ctl_status = status;
}

void gp_tick(void) {
    uint64_t now = gp_now_ns();
    uint64_t due = __atomic_load_n(&next_ctl_ns, __ATOMIC_RELAXED);
    if (now >= due && __atomic_compare_exchange_n(&next_ctl_ns, &due, now + 100000000ull, 0, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_RELAXED))
        check_control();
    due = __atomic_load_n(&next_reap_ns, __ATOMIC_RELAXED);
    if (now >= due && __atomic_compare_exchange_n(&next_reap_ns, &due, now + 1000000000ull, 0, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_RELAXED)) {
        gp_lock();
        gp_reap_locked();
        gp_unlock();
    }
    uint32_t n = __atomic_load_n(&gp.acc->ndev, __ATOMIC_RELAXED);
    for (uint32_t i = 0; i < n; i++)
        gp_compute_window((int)i, now);
}

__attribute__((destructor)) static void release_at_exit(void) {
    if (!__atomic_load_n(&gp.active, __ATOMIC_ACQUIRE) || gp.my_proc < 0)
        return;
    gp_lock();
    struct gp_acc_proc *e = &gp.acc->proc[gp.my_proc];
    if (e->pid == (int)getpid()) {
        for (int d = 0; d < GP_MAX_DEV; d++) {
            uint64_t u = e->used[d];
            gp.acc->dev[d].memory_used -= u <= gp.acc->dev[d].memory_used ? u : gp.acc->dev[d].memory_used;
            e->used[d] = 0;
        }
        e->pid = 0;
        if (gp.acc->nprocs)
            gp.acc->nprocs--;
    }
    gp_unlock();
}
