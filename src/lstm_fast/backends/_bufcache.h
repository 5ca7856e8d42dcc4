/* _bufcache.h: a NumPy data-memory handler (NEP 49) that keeps a few large freed blocks
 * for the next large arrays of the C backend. Set only around the binding's own large
 * allocations (_c.pyx: _empty, arrays of BC_MIN bytes or more): every other array of the
 * process keeps NumPy's default handler, and an array made here is freed through this
 * handler whenever it dies (NumPy keeps the handler with the array).
 *
 * Why: a training step's per-call arrays (y, gates and c saved for backward, dx, ...) are
 * above glibc's largest mmap threshold (32 MiB) at large shapes, so glibc maps fresh pages
 * for each call and unmaps them on free, and the kernel zeroes every page at first touch.
 * On the project's KVM machines that cost came and went with the host: on the Intel Xeon
 * (family 6 model 167), float64 (128, 64, 512, 512) training step, 1 thread, the forward
 * with saving took 499-852 ms without this cache and 459-467 ms with it (inference
 * forward: 374 ms), the whole step 1.37-1.97 s against 1.35-1.64 s
 * (benchmarks/README.md, "Session 14"). No library does this for NumPy arrays: the
 * process-wide switches (mallopt, MALLOC_MMAP_THRESHOLD_) would change every allocation
 * of the user's program.
 *
 * Policy: a freed block of BC_MIN bytes or more is kept if it fits under the limit
 * (bc.limit bytes in all, default BC_DEFAULT_LIMIT; set_limit; 0 turns the cache off and
 * frees what is kept); at most BC_SLOTS blocks; of the kept blocks and a freed one, the
 * largest stay (a training loop frees the same few sizes at every step). A new array
 * takes the smallest kept block of capacity in [size, 2 size], else malloc. calloc zeroes a reused block. The kept blocks are memory the process holds
 * without an array: bc_stats reports them, bc_release frees them. */
#ifndef LSTM_FAST_BUFCACHE_H
#define LSTM_FAST_BUFCACHE_H
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <Python.h>
#include <numpy/ndarraytypes.h>

#define BC_SLOTS 8
#define BC_MIN ((size_t)1 << 20)               /* blocks of 1 MiB or more are kept */
#define BC_DEFAULT_LIMIT ((size_t)1 << 30)     /* at most 1 GiB kept, by default */
#define BC_HDR 64                              /* the block's capacity, before the data */

static struct {
    void *p[BC_SLOTS];   /* block bases (NULL: a free slot) */
    size_t n[BC_SLOTS];  /* their capacities (bytes after the header) */
    size_t total;        /* sum of the kept capacities */
    size_t limit;        /* at most this many bytes kept; 0: the cache is off */
    size_t reused;       /* allocations served from a kept block, since the start */
    pthread_mutex_t lock;
} bc = {.limit = BC_DEFAULT_LIMIT, .lock = PTHREAD_MUTEX_INITIALIZER};

/* The smallest kept block of capacity in [size, 2 size], removed from the cache, or NULL. */
static void *bc_take(size_t size)
{
    int best = -1;
    void *base = NULL;
    pthread_mutex_lock(&bc.lock);
    for (int k = 0; k < BC_SLOTS; k++)
        if (bc.p[k] && bc.n[k] >= size && bc.n[k] / 2 <= size &&
            (best < 0 || bc.n[k] < bc.n[best]))
            best = k;
    if (best >= 0) {
        base = bc.p[best];
        bc.total -= bc.n[best];
        bc.p[best] = NULL;
        bc.reused++;
    }
    pthread_mutex_unlock(&bc.lock);
    return base;
}

static void *bc_new(size_t size, int zero)
{
    if (size > SIZE_MAX - BC_HDR)
        return NULL;
    void *base = size >= BC_MIN ? bc_take(size) : NULL;
    if (base) {
        if (zero)
            memset((char *)base + BC_HDR, 0, size);
    } else {
        base = zero ? calloc(1, size + BC_HDR) : malloc(size + BC_HDR);
        if (!base)
            return NULL;
        *(size_t *)base = size;
    }
    return (char *)base + BC_HDR;
}

static void *bc_malloc(void *ctx, size_t size)
{
    (void)ctx;
    return bc_new(size ? size : 1, 0);
}

static void *bc_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    return bc_new(nelem * elsize ? nelem * elsize : 1, 1);
}

/* Keep the block at base (capacity cap) if the policy allows, else free it: of the kept
 * blocks and this one, the largest are kept, at most BC_SLOTS and bc.limit bytes. */
static void bc_keep_or_free(void *base, size_t cap)
{
    void *drop[BC_SLOTS];
    int ndrop = 0;
    pthread_mutex_lock(&bc.lock);
    if (cap >= BC_MIN && cap <= bc.limit) {
        for (;;) {
            int slot = -1, small = -1;
            for (int k = 0; k < BC_SLOTS; k++) {
                if (!bc.p[k])
                    slot = slot < 0 ? k : slot;
                else if (small < 0 || bc.n[k] < bc.n[small])
                    small = k;
            }
            if (slot >= 0 && bc.total + cap <= bc.limit) {   /* room: kept */
                bc.p[slot] = base;
                bc.n[slot] = cap;
                bc.total += cap;
                base = NULL;
                break;
            }
            if (small < 0 || bc.n[small] >= cap)   /* this block is the smallest: freed */
                break;
            drop[ndrop++] = bc.p[small];           /* else the smallest kept one goes */
            bc.total -= bc.n[small];
            bc.p[small] = NULL;
        }
    }
    pthread_mutex_unlock(&bc.lock);
    for (int k = 0; k < ndrop; k++)   /* free() outside the lock */
        free(drop[k]);
    free(base);
}

static void bc_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    if (!ptr)
        return;
    void *base = (char *)ptr - BC_HDR;
    bc_keep_or_free(base, *(size_t *)base);
}

static void *bc_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (!ptr)
        return bc_malloc(ctx, new_size);
    size_t cap = *(size_t *)((char *)ptr - BC_HDR);
    if (new_size <= cap)
        return ptr;   /* fits the block (NumPy only reads the new size's bytes) */
    void *q = bc_malloc(ctx, new_size);
    if (q) {
        memcpy(q, ptr, cap);
        bc_free(ctx, ptr, cap);
    }
    return q;   /* NULL: ptr is still valid, as realloc's contract */
}

/* Advise transparent huge pages for the whole pages of [p, p + n) (madvise MADV_HUGEPAGE,
 * as NumPy's allocator does for its arrays of 4 MiB or more; where the kernel leaves THP
 * to madvise, the usual default, nothing else gets them). Used for the packed weights
 * alone (_c.pyx, _pack_target): the steps stream them at every step, and a pack beyond
 * the L2 in 4 KiB pages spans more pages than the STLB holds (~1700 at H = 650). Not for
 * the per-call arrays: on the project's KVM machines a huge page's first touch cost
 * ~1.5 ms (a (400,32,16,128) training step's first calls 110-136 ms instead of 37-44),
 * which a call whose arrays miss the cache would pay again. Nothing where the system
 * has no MADV_HUGEPAGE; an error of madvise is ignored (the pages stay as they are). */
static void bc_advise_huge(void *p, size_t n)
{
#ifdef MADV_HUGEPAGE
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, e = (uintptr_t)p + n;
    if (e > a)
        (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

/* Free every kept block (what set_limit drops, too). */
static void bc_release(void)
{
    void *drop[BC_SLOTS];
    pthread_mutex_lock(&bc.lock);
    for (int k = 0; k < BC_SLOTS; k++) {
        drop[k] = bc.p[k];
        bc.p[k] = NULL;
    }
    bc.total = 0;
    pthread_mutex_unlock(&bc.lock);
    for (int k = 0; k < BC_SLOTS; k++)
        free(drop[k]);
}

/* The limit in bytes (0: off); the kept blocks are freed first (a new limit applies to
 * the blocks freed from now on). */
static void bc_set_limit(size_t limit)
{
    bc_release();
    pthread_mutex_lock(&bc.lock);
    __atomic_store_n(&bc.limit, limit, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&bc.lock);
}

/* The kept bytes and blocks, the limit and the reuse count. */
static void bc_stats(size_t *kept, size_t *blocks, size_t *limit, size_t *reused)
{
    size_t nb = 0;
    pthread_mutex_lock(&bc.lock);
    for (int k = 0; k < BC_SLOTS; k++)
        nb += bc.p[k] != NULL;
    *kept = bc.total;
    *blocks = nb;
    *limit = bc.limit;
    *reused = bc.reused;
    pthread_mutex_unlock(&bc.lock);
}

/* Whether arrays of nbytes go through the handler (the limit read without the lock: a
 * stale value only picks the other allocator for one array; both free correctly). */
static int bc_wanted(size_t nbytes)
{
    return nbytes >= BC_MIN && __atomic_load_n(&bc.limit, __ATOMIC_RELAXED) != 0;
}

static PyDataMem_Handler bc_handler = {
    "lstm_fast_bufcache", 1, {NULL, bc_malloc, bc_calloc, bc_realloc, bc_free}};

/* A new reference to the handler's capsule (named "mem_handler", as NumPy wants). */
static PyObject *bc_capsule(void) { return PyCapsule_New(&bc_handler, "mem_handler", NULL); }
#endif
