/* Memory cap per device per container: reserve in the shared accounting region before the real allocation,
 * release after a successful free; a per-process table remembers what each pointer or handle was charged. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

int gp_my_entry_locked(void); /* state.c */

int gp_mem_reserve(int idx, uint64_t bytes) {
    int ok = 0;
    gp_lock();
    struct gp_acc_dev *d = &gp.acc->dev[idx];
    for (int pass = 0; pass < 2; pass++) {
        if (d->memory_used <= d->memory_limit && bytes <= d->memory_limit - d->memory_used) {
            ok = 1;
            break;
        }
        if (pass == 0)
            gp_reap_locked(); /* a dead process's memory may be what is missing */
    }
    if (ok) {
        d->memory_used += bytes;
        int e = gp_my_entry_locked();
        if (e >= 0)
            gp.acc->proc[e].used[idx] += bytes;
    }
    gp_unlock();
    return ok ? 0 : -1;
}

void gp_mem_release(int idx, uint64_t bytes) {
    gp_lock();
    struct gp_acc_dev *d = &gp.acc->dev[idx];
    d->memory_used -= bytes <= d->memory_used ? bytes : d->memory_used;
    int e = gp_my_entry_locked();
    if (e >= 0) {
        uint64_t *u = &gp.acc->proc[e].used[idx];
        *u -= bytes <= *u ? bytes : *u;
    }
    gp_unlock();
}

/* ---- open-addressing tables key -> (device, bytes), backward-shift deletion */
struct entry {
    uint64_t key;
    uint64_t bytes;
    int idx;
    int used;
};

struct table {
    struct entry *e;
    size_t cap, n;
};

static struct table tables[2];
static pthread_mutex_t tables_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t slot_of(uint64_t key, size_t cap) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static int grow(struct table *t) {
    size_t cap = t->cap ? t->cap * 2 : 1024;
    struct entry *e = calloc(cap, sizeof *e);
    if (!e)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->e[i].used)
            continue;
        size_t s = slot_of(t->e[i].key, cap);
        while (e[s].used)
            s = (s + 1) & (cap - 1);
        e[s] = t->e[i];
    }
    free(t->e);
    t->e = e;
    t->cap = cap;
    return 0;
}

void gp_track_add(int which, uint64_t key, int idx, uint64_t bytes) {
    pthread_mutex_lock(&tables_lock);
    struct table *t = &tables[which];
    if ((t->n + 1) * 2 > t->cap && grow(t) != 0) {
        pthread_mutex_unlock(&tables_lock);
        gp_mem_release(idx, bytes); /* cannot remember it: do not keep it charged forever */
        return;
    }
    size_t s = slot_of(key, t->cap);
    while (t->e[s].used && t->e[s].key != key)
        s = (s + 1) & (t->cap - 1);
    if (!t->e[s].used)
        t->n++;
    t->e[s] = (struct entry){.key = key, .bytes = bytes, .idx = idx, .used = 1};
    pthread_mutex_unlock(&tables_lock);
}

int gp_track_take(int which, uint64_t key, int *idx, uint64_t *bytes) {
    int found = 0;
    pthread_mutex_lock(&tables_lock);
    struct table *t = &tables[which];
    if (t->cap) {
        size_t s = slot_of(key, t->cap);
        while (t->e[s].used && t->e[s].key != key)
            s = (s + 1) & (t->cap - 1);
        if (t->e[s].used) {
            found = 1;
            *idx = t->e[s].idx;
            *bytes = t->e[s].bytes;
            t->e[s].used = 0;
            t->n--;
            size_t hole = s;
            for (size_t j = (s + 1) & (t->cap - 1); t->e[j].used; j = (j + 1) & (t->cap - 1)) {
                size_t home = slot_of(t->e[j].key, t->cap);
                /* move e[j] into the hole when its home is not cyclically in (hole, j] */
                if ((j > hole && (home <= hole || home > j)) || (j < hole && home <= hole && home > j)) {
                    t->e[hole] = t->e[j];
                    t->e[j].used = 0;
                    hole = j;
                }
            }
        }
    }
    pthread_mutex_unlock(&tables_lock);
    return found;
}

void gp_mem_reset_after_fork(void) {
    pthread_mutex_init(&tables_lock, NULL);
    for (int i = 0; i < 2; i++) {
        free(tables[i].e);
        tables[i] = (struct table){0};
    }
}
