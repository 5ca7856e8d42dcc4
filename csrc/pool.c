#define _GNU_SOURCE
#include "pool.h"
#include "lstm.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_NS 200000L   /* idle workers spin 0.2 ms before sleeping */

static struct {
    pthread_mutex_t run_lock;    /* held by the caller running a job */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    unsigned gen;                /* job generation, bumped per job */
    int nworkers;                /* workers created (tids 1..nworkers) */
    lstm_job_fn fn;
    void *arg;
    int nthreads;
    int done;                    /* workers finished with the current job */
    lstm_barrier bar;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          0, 0, 0, 0, 0, 0, {0, 0}};

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

void lstm_barrier_wait(lstm_barrier *bar, int nthreads)
{
    if (nthreads <= 1)
        return;
    int phase = __atomic_load_n(&bar->phase, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&bar->count, 1, __ATOMIC_ACQ_REL) == nthreads) {
        __atomic_store_n(&bar->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar->phase, phase + 1, __ATOMIC_RELEASE);
        return;
    }
    for (unsigned spins = 0; __atomic_load_n(&bar->phase, __ATOMIC_ACQUIRE) == phase; spins++) {
        CPU_RELAX();
        if (spins > (1u << 12))
            sched_yield();   /* more threads than free cores: let the others run */
    }
}

static void *worker(void *p)
{
    /* p = tid | generation at creation << 8: a job posted before this thread
     * first runs must not be missed. */
    int tid = (int)((unsigned long)p & 255);
    unsigned seen = (unsigned)((unsigned long)p >> 8);
    for (;;) {
        long t0 = now_ns();
        unsigned spins = 0;
        while (__atomic_load_n(&pool.gen, __ATOMIC_ACQUIRE) == seen) {
            CPU_RELAX();
            if ((++spins & 255) == 0 && now_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&pool.sleep_lock);
                while (__atomic_load_n(&pool.gen, __ATOMIC_ACQUIRE) == seen)
                    pthread_cond_wait(&pool.wake, &pool.sleep_lock);
                pthread_mutex_unlock(&pool.sleep_lock);
            }
        }
        seen = __atomic_load_n(&pool.gen, __ATOMIC_ACQUIRE);
        if (tid < pool.nthreads)
            pool.fn(pool.arg, tid, pool.nthreads, &pool.bar);
        __atomic_add_fetch(&pool.done, 1, __ATOMIC_ACQ_REL);
    }
    return NULL;
}

static void after_fork_child(void)
{
    /* The child has no workers: start from scratch. */
    pthread_mutex_init(&pool.run_lock, NULL);
    pthread_mutex_init(&pool.sleep_lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.nworkers = 0;
    pool.bar.count = 0;
}

int lstm_online_cpus(void)
{
    static int n = 0;
    if (n == 0) {
        long v = sysconf(_SC_NPROCESSORS_ONLN);
        n = v < 1 ? 1 : (v > LSTM_MAX_THREADS ? LSTM_MAX_THREADS : (int)v);
    }
    return n;
}

void lstm_pool_run(lstm_job_fn fn, void *arg, int nthreads)
{
    static lstm_barrier solo = {0, 0};
    if (nthreads <= 1 || pthread_mutex_trylock(&pool.run_lock) != 0) {
        fn(arg, 0, 1, &solo);
        return;
    }
    static int atfork_done = 0;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
    while (pool.nworkers < nthreads - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        unsigned long code = (unsigned long)(pool.nworkers + 1) | ((unsigned long)pool.gen << 8);
        int rc = pthread_create(&th, &attr, worker, (void *)code);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        pool.nworkers++;
    }
    if (nthreads > pool.nworkers + 1)
        nthreads = pool.nworkers + 1;
    if (nthreads <= 1) {
        pthread_mutex_unlock(&pool.run_lock);
        fn(arg, 0, 1, &solo);
        return;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.nthreads = nthreads;
    pool.bar.count = 0;
    __atomic_store_n(&pool.done, 0, __ATOMIC_RELAXED);
    int nworkers = pool.nworkers;
    pthread_mutex_lock(&pool.sleep_lock);
    __atomic_add_fetch(&pool.gen, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.sleep_lock);
    fn(arg, 0, nthreads, &pool.bar);
    for (unsigned spins = 0; __atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) < nworkers; spins++) {
        CPU_RELAX();
        if (spins > (1u << 12))
            sched_yield();
    }
    pthread_mutex_unlock(&pool.run_lock);
}
