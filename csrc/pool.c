#define _GNU_SOURCE
#include "pool.h"
#include "lstm.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <dlfcn.h>
#include <link.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#define HAVE_HOST_OMP 1
#else
#define HAVE_HOST_OMP 0
#endif

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* How long a waiter spins before it sleeps: adaptive, between MIN_SPIN_NS and
 * a maximum per kind of wait. Idle workers may spin longer between jobs
 * (back-to-back calls then pay no wake-up); a barrier waiter about as long as
 * a small recurrent step takes. A wait that ends while spinning doubles the
 * budget, one that has to sleep halves it; every job starts with the full
 * barrier budget, and an efficient job (see judge_job) restores the full idle
 * budget, so a transient disturbance does not leave it low. The halving
 * matters on a loaded machine: when another process holds the other core,
 * both our threads share one, and the partner cannot even run while we spin
 * (measured at (T,B,I,H)=(32,16,64,64): 2 threads took 0.78/1.5/3.8/10.5 ms
 * with a fixed 10/30/100/300 us spin, 1 thread 0.21 ms; libgomp's own barrier,
 * a fixed ~300000-pause spin, made a 2-thread forward at (32,64,256,256) take
 * 63-113 ms instead of 14 ms on 1 thread while another process held a core).
 *
 * The barrier's full budget must outlast the time a sleeping partner takes to
 * run again: on a virtual machine a futex wake of an idle vCPU takes tens of
 * us, so with 30 us one sleep made the partner late at the next barrier, which
 * made it sleep, and so on (Intel Xeon KVM, (100,32,16,128) f32, 2 threads, no
 * torch in the process: 26-54 barrier sleeps per training step, 8.5-11.5 ms;
 * with 100 us 0-5 sleeps, 7.8-9.0 ms). Every job starts with the full budget.
 * (Until session 13 a job after one judged contended kept the short budget the
 * last one ended with, to spin less on a loaded machine: (32,16,64,64) with a
 * busy loop on one CPU and 2 threads forced, 1.13-1.21 ms per training step
 * against 1.27-1.32. But the carried budget never recovered once the load was
 * gone: at 1-2 us every barrier wait sleeps, the futex wake of a vCPU makes the
 * partner late, the job is judged contended again, and a forced 2-thread
 * forward stayed 1.6-2.5x slower for good after 0.5 s of another process on the
 * CPUs (Intel Xeon KVM, churn (6,32,3,32) 26 -> 42 us, (100,32,16,128) 2.0 ->
 * 5.0 ms, a barrier sleep at every step); in the benchmark, after ONNX
 * Runtime's pool ran, 3-30x. The automatic thread choice still goes to one
 * thread while jobs are judged contended, which is the answer to a loaded
 * machine.)
 *
 * In the host's OpenMP team the barrier may spin longer (HOST_BARRIER_SPIN_NS):
 * between our jobs that team also runs torch's ops, and with 30 us the budget
 * collapsed to sleeping at most barriers (a futex wake per step); with 300 us
 * a torch-process 2-thread train step at (35,20,200,200)x2 took 12.1 ms
 * instead of 12.7 (forward 3.8 vs 4.3, Intel Xeon, figures in the commit log). */
#ifndef IDLE_SPIN_NS
#define IDLE_SPIN_NS 100000
#endif
#ifndef BARRIER_SPIN_NS
#define BARRIER_SPIN_NS 100000
#endif
#ifndef HOST_BARRIER_SPIN_NS
#define HOST_BARRIER_SPIN_NS 300000
#endif
#ifndef MIN_SPIN_NS
#define MIN_SPIN_NS 1000
#endif

typedef struct {
    int budget;   /* current spin budget, ns (relaxed: a racy update only tunes) */
    int max;
} spin_policy;

static spin_policy barrier_spin = {BARRIER_SPIN_NS, BARRIER_SPIN_NS};
static spin_policy host_barrier_spin = {HOST_BARRIER_SPIN_NS, HOST_BARRIER_SPIN_NS};
static spin_policy idle_spin = {IDLE_SPIN_NS, IDLE_SPIN_NS};

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define INC(p) __atomic_add_fetch((p), 1, __ATOMIC_SEQ_CST)
#define DEC(p) __atomic_sub_fetch((p), 1, __ATOMIC_SEQ_CST)
#define COUNT(p) __atomic_add_fetch((p), 1, __ATOMIC_RELAXED)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)

static long stats[LSTM_POOL_NSTATS];

/* Efficiency of multi-thread jobs (see judge_job): a loss above BAD_LOSS marks
 * the pool contended (see lstm_pool_contended), below GOOD_LOSS clears it. */
#define BAD_LOSS 0.40
#define GOOD_LOSS 0.25
#define BACKOFF_MIN_NS 10000000L     /* 10 ms */
#define BACKOFF_MAX_NS 1000000000L   /* 1 s */
static long contended_until;   /* now_ns() deadline; atomic */

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* CPU time of the calling thread (a system call, ~0.3 us: twice per thread
 * and job). */
static long cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* ---- sleeping on an int: futex on Linux, a condition variable elsewhere ---- */

#ifdef __linux__
static void os_wait(int *word, int old)
{
    /* Returns at once if *word != old (checked atomically with the sleep in
     * the kernel); may also return spuriously: callers loop. */
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
}

static void os_wake_all(int *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static void os_after_fork(void) {}
#else
static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cond = PTHREAD_COND_INITIALIZER;

static void os_wait(int *word, int old)
{
    pthread_mutex_lock(&park_lock);
    if (LOAD(word) == old)
        pthread_cond_wait(&park_cond, &park_lock);
    pthread_mutex_unlock(&park_lock);
}

static void os_wake_all(int *word)
{
    (void)word;
    /* Taking the lock orders this wake after any waiter's re-check. */
    pthread_mutex_lock(&park_lock);
    pthread_cond_broadcast(&park_cond);
    pthread_mutex_unlock(&park_lock);
}

static void os_after_fork(void)
{
    pthread_mutex_init(&park_lock, NULL);
    pthread_cond_init(&park_cond, NULL);
}
#endif

/* A spinning waiter yields its CPU every YIELD_SPINS + 1 pauses (~10 us): when the
 * thread it waits for is queued on the same CPU (the scheduler placed our two
 * threads on one CPU: they run in turns, so it never sees both runnable long enough
 * to move one), that thread runs now instead of after our whole budget and a futex
 * sleep; alone on the CPU, sched_yield returns at once (~0.3 us). Measured on the
 * Intel Xeon KVM machine (`lstm-fast bench --threads 2`, torch in the process,
 * alternated builds): (100,32,16,128) forward 5.28 / 5.33 ms without the yield (a
 * barrier sleep at most steps) against 2.25 / 1.96 ms with it; the start-of-session
 * pool (the carried short budget, no yield) took 3.19 ms there, and 12.2 ms for the
 * torch module's (32,16,64,64) training step (1.0 ms now). With a busy loop holding
 * one CPU and 2 threads forced, (32,16,64,64) training 1.53 / 1.54 -> 1.28 / 1.21 ms. */
#ifndef YIELD_SPINS
#define YIELD_SPINS 255
#endif

/* Wait until *word != old: spin for spin_ns, then sleep.
 *
 * No lost wake-up: the sleeper does  sleepers++ ; read *word ; sleep if == old,
 * the waker does                     write *word ; read sleepers ; wake if > 0,
 * all sequentially consistent. In the single total order either the waker's
 * read of sleepers comes after sleepers++ (it wakes), or the sleeper's read of
 * *word comes after the write (it does not sleep). A wake between the
 * sleeper's check and its futex call is not lost either: FUTEX_WAIT itself
 * re-checks *word == old atomically. Returns 1 if it slept; *spun (if not
 * NULL) is the time spent spinning. */
static int wait_change(int *word, int old, int *sleepers, spin_policy *sp, long *spun)
{
    if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != old)
        return 0;
    int budget = __atomic_load_n(&sp->budget, __ATOMIC_RELAXED);
    long t0 = now_ns(), t = t0;
    for (unsigned spins = 1;; spins++) {
        CPU_RELAX();
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != old) {
            if (budget < sp->max)
                __atomic_store_n(&sp->budget, budget < sp->max / 2 ? 2 * budget : sp->max,
                                 __ATOMIC_RELAXED);
            if (spun)
                *spun = now_ns() - t0;
            return 0;
        }
        if ((spins & 31) == 0) {
            if ((t = now_ns()) - t0 > budget)
                break;
            if ((spins & YIELD_SPINS) == 0)
                sched_yield();   /* see YIELD_SPINS */
        }
    }
    if (spun)
        *spun = t - t0;
    if (budget > MIN_SPIN_NS)
        __atomic_store_n(&sp->budget, budget / 2 > MIN_SPIN_NS ? budget / 2 : MIN_SPIN_NS,
                         __ATOMIC_RELAXED);
    INC(sleepers);
    while (LOAD(word) == old)
        os_wait(word, old);
    DEC(sleepers);
    return 1;
}

static void wake(int *sleepers, int *word)
{
    if (LOAD(sleepers) > 0)
        os_wake_all(word);
}

/* ---- barrier ----------------------------------------------------------------- */

void lstm_barrier_wait(lstm_barrier *bar, int num_threads)
{
    if (num_threads <= 1)
        return;
    /* The phase cannot move before this thread arrives, so this read is the
     * phase this thread waits to end. */
    int phase = __atomic_load_n(&bar->phase, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&bar->count, 1, __ATOMIC_ACQ_REL) == num_threads) {
        /* Last one: reset for the next phase (the others re-arrive only after
         * seeing the new phase), then release them. */
        __atomic_store_n(&bar->count, 0, __ATOMIC_RELAXED);
        STORE(&bar->phase, (int)((unsigned)phase + 1u));   /* wraps */
        wake(&bar->sleepers, &bar->phase);
        return;
    }
    long spun = 0;
    if (wait_change(&bar->phase, phase, &bar->sleepers,
                    bar->host_team ? &host_barrier_spin : &barrier_spin, &spun))
        COUNT(&stats[2]);
    ADD(&bar->spin_ns, spun);
}

/* Runs one thread's part of a job and adds its CPU time to bar->cpu_ns. */
static void run_part(lstm_job_fn fn, void *arg, int tid, int num_threads, lstm_barrier *bar)
{
    long c0 = cpu_ns();
    fn(arg, tid, num_threads, bar);
    ADD(&bar->cpu_ns, cpu_ns() - c0);
}

/* ---- the host process's OpenMP runtime ----------------------------------------- */

/* GOMP_parallel and omp_get_thread_num/omp_get_num_threads of the GNU OpenMP
 * runtime when the process has already loaded it (torch's CPU wheel ships its
 * own libgomp.so.1; numba's OpenMP layer loads the system one), looked up with
 * dlopen(RTLD_NOLOAD): we never load it and have no link-time dependency.
 * glibc matches the name against every loaded object's soname, so this is the
 * copy torch itself resolved, whichever was loaded first. The pointers are set
 * once by the run_lock holder; host.parallel is published last (release). */
#define HOST_OMP_LIB "libgomp.so.1"
static struct {
    void (*parallel)(void (*)(void *), void *, unsigned, unsigned);
    int (*thread_num)(void);
    int (*num_threads)(void);
    unsigned long long adds;   /* objects loaded at the last failed look-up (run_lock) */
    int looked;                /* a look-up was made (run_lock) */
    int off;                   /* LSTM_FAST_THREADING=pool or lstm_pool_allow_host(0) */
    int forked;                /* a forked child: never */
} host;

#if HAVE_HOST_OMP
static int count_adds(struct dl_phdr_info *info, size_t size, void *out)
{
    *(unsigned long long *)out =
        size >= offsetof(struct dl_phdr_info, dlpi_subs) ? info->dlpi_adds : 0;
    return 1;   /* the counter is the same in every entry: stop at the first */
}
#endif

/* Under run_lock: 1 if the host's OpenMP runtime is to run this job. */
static int host_omp(void)
{
    int off = __atomic_load_n(&host.off, __ATOMIC_RELAXED) |
              __atomic_load_n(&host.forked, __ATOMIC_RELAXED);
    if (off || __atomic_load_n(&host.parallel, __ATOMIC_ACQUIRE))
        return !off;
#if HAVE_HOST_OMP
    /* A failed dlopen(RTLD_NOLOAD) searches the library path (~10 us): look
     * again only after the process loaded new objects (dl_iterate_phdr's
     * counter, ~0.1 us to read). */
    unsigned long long adds = 0;
    dl_iterate_phdr(count_adds, &adds);
    if (host.looked && adds == host.adds)
        return 0;
    host.looked = 1;
    host.adds = adds;
    void *h = dlopen(HOST_OMP_LIB, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (!h)
        return 0;
    void *par = dlsym(h, "GOMP_parallel");
    void *tnum = dlsym(h, "omp_get_thread_num");
    void *nth = dlsym(h, "omp_get_num_threads");
    if (!par || !tnum || !nth) {
        dlclose(h);
        return 0;
    }
    /* h stays open: the runtime cannot be unloaded under us. */
    *(void **)&host.thread_num = tnum;
    *(void **)&host.num_threads = nth;
    __atomic_store_n((void **)&host.parallel, par, __ATOMIC_RELEASE);
    return 1;
#else
    return 0;
#endif
}

typedef struct {
    lstm_job_fn fn;
    void *arg;
    lstm_barrier bar;
    int team;     /* threads the runtime gave (tid 0 writes it) */
} omp_job;

static void omp_body(void *p)
{
    omp_job *job = (omp_job *)p;
    /* The real team, which may be smaller than asked (nested region, thread
     * limit, OMP_DYNAMIC): the kernels partition by it and the barriers count it. */
    int n = host.num_threads(), tid = host.thread_num();
    if (tid == 0)
        job->team = n;
    run_part(job->fn, job->arg, tid, n, &job->bar);
}

/* ---- pool -------------------------------------------------------------------- */

static struct {
    pthread_mutex_t run_lock;    /* held by the caller running a job */
    int gen;                     /* job generation, bumped per job (futex word) */
    int gen_sleepers;            /* workers asleep on gen */
    int done;                    /* workers finished with the current job (futex word) */
    int done_sleepers;           /* the caller, while asleep on done */
    int nworkers;                /* workers created (tids 1..nworkers) */
    int start_gen[LSTM_MAX_THREADS];   /* gen when worker tid was created */
    lstm_job_fn fn;
    void *arg;
    int num_threads;
    lstm_barrier bar;
} pool = {.run_lock = PTHREAD_MUTEX_INITIALIZER};

static void *worker(void *p)
{
    int tid = (int)(intptr_t)p;
    /* A job posted before this thread first runs must not be missed: start
     * from the generation current when the thread was created (written
     * before pthread_create, which orders it before this read). */
    int seen = pool.start_gen[tid];
    for (;;) {
        if (wait_change(&pool.gen, seen, &pool.gen_sleepers, &idle_spin, NULL))
            COUNT(&stats[3]);
        /* The caller posts the next job only after every worker has counted
         * itself done with this one, so gen is now exactly seen + 1. */
        seen = LOAD(&pool.gen);
        if (tid < pool.num_threads)
            run_part(pool.fn, pool.arg, tid, pool.num_threads, &pool.bar);
        /* Last access to the job: after this the caller may return and post
         * another one (pool is static, so the wake below is always safe; at
         * worst it is spurious). */
        INC(&pool.done);
        wake(&pool.done_sleepers, &pool.done);
    }
    return NULL;
}

static void after_fork_child(void)
{
    /* The child has only the forking thread, which was not inside
     * lstm_pool_run: no workers, nobody asleep; start from scratch. */
    pthread_mutex_init(&pool.run_lock, NULL);
    pool.nworkers = 0;
    pool.gen_sleepers = 0;
    pool.done_sleepers = 0;
    pool.bar.count = 0;
    pool.bar.sleepers = 0;
    os_after_fork();
    /* libgomp's team of the forking thread did not survive the fork (its next
     * parallel region in the child hangs): the child uses its own pool. */
    __atomic_store_n(&host.forked, 1, __ATOMIC_RELAXED);
}

/* At load time, not at the first job: a child forked after torch used its
 * OpenMP team but before our first job must not use that team either. */
__attribute__((constructor)) static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void init(void)
{
    const char *mode = getenv("LSTM_FAST_THREADING");
    if (mode && strcmp(mode, "pool") == 0)
        __atomic_store_n(&host.off, 1, __ATOMIC_RELAXED);
}

int lstm_pool_allow_host(int allow)
{
    pthread_once(&init_once, init);
    return !__atomic_exchange_n(&host.off, !allow, __ATOMIC_RELAXED);
}

const char *lstm_pool_runtime(void)
{
    pthread_once(&init_once, init);
    pthread_mutex_lock(&pool.run_lock);
    int use_host = host_omp();
    pthread_mutex_unlock(&pool.run_lock);
    if (use_host)
        return "host OpenMP (GOMP_parallel of the process's " HOST_OMP_LIB ")";
    if (__atomic_load_n(&host.forked, __ATOMIC_RELAXED))
        return "own pthread pool (a forked child: the parent's OpenMP team is gone)";
    if (__atomic_load_n(&host.off, __ATOMIC_RELAXED))
        return "own pthread pool (LSTM_FAST_THREADING=pool)";
    return "own pthread pool (no " HOST_OMP_LIB " in the process: the host OpenMP runtime "
           "is used once one is loaded)";
}

int lstm_online_cpus(void)
{
    /* CPUs this process may run on (taskset, cpusets), else online CPUs;
     * taken once, at the first call. More threads than usable CPUs would
     * only take turns on one CPU at every barrier. */
    static int n = 0;
    int v = __atomic_load_n(&n, __ATOMIC_RELAXED);
    if (v == 0) {
        long s = sysconf(_SC_NPROCESSORS_ONLN);
#ifdef __linux__
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0 &&
            (s < 1 || CPU_COUNT(&set) < s))
            s = CPU_COUNT(&set);
#endif
        v = s < 1 ? 1 : (s > LSTM_MAX_THREADS ? LSTM_MAX_THREADS : (int)s);
        __atomic_store_n(&n, v, __ATOMIC_RELAXED);
    }
    return v;
}

int lstm_pool_contended(void)
{
    long until = __atomic_load_n(&contended_until, __ATOMIC_RELAXED);
    return until != 0 && now_ns() < until;
}

/* Called by the run_lock holder after each multi-thread job. The loss is the
 * share of the team's capacity (n threads x wall time) not spent computing:
 * 1 - (CPU time of the job's threads - their barrier spinning) / (n x wall).
 * CPU time, not wall time, so that a thread sharing its core with another
 * process counts for what it got: with a busy loop on one of 2 cores, one of
 * our threads runs at half speed and the other waits for it, a 2-thread job
 * is no faster than 1 thread, and the loss is ~50%. (The former measure,
 * wall time waiting at barriers, read 25% there, under BAD_LOSS.) */
static void judge_job(const lstm_barrier *bar, long wall_ns, int num_threads)
{
    static long backoff;   /* guarded by run_lock */
    if (wall_ns <= 0)
        return;
    long busy = __atomic_load_n(&bar->cpu_ns, __ATOMIC_RELAXED) -
                __atomic_load_n(&bar->spin_ns, __ATOMIC_RELAXED);
    double loss = 1.0 - (double)(busy > 0 ? busy : 0) / ((double)wall_ns * num_threads);
    __atomic_store_n(&stats[5], (long)(loss * 1000), __ATOMIC_RELAXED);
    if (loss > BAD_LOSS) {
        backoff = backoff ? (backoff < BACKOFF_MAX_NS / 2 ? 2 * backoff : BACKOFF_MAX_NS)
                          : BACKOFF_MIN_NS;
        __atomic_store_n(&contended_until, now_ns() + backoff, __ATOMIC_RELAXED);
        COUNT(&stats[4]);
    } else if (loss < GOOD_LOSS) {
        backoff = 0;
        __atomic_store_n(&contended_until, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&idle_spin.budget, idle_spin.max, __ATOMIC_RELAXED);
    }
}

void lstm_pool_stats(long out[LSTM_POOL_NSTATS])
{
    for (int k = 0; k < LSTM_POOL_NSTATS; k++)
        out[k] = __atomic_load_n(&stats[k], __ATOMIC_RELAXED);
}

void lstm_pool_run(lstm_job_fn fn, void *arg, int num_threads)
{
    lstm_barrier solo = {0};
    if (num_threads <= 1) {
        fn(arg, 0, 1, &solo);
        return;
    }
    if (pthread_mutex_trylock(&pool.run_lock) != 0) {
        COUNT(&stats[1]);
        fn(arg, 0, 1, &solo);
        return;
    }
    pthread_once(&init_once, init);
    if (num_threads > LSTM_MAX_THREADS)
        num_threads = LSTM_MAX_THREADS;
    if (host_omp()) {
        omp_job job = {fn, arg, {.host_team = 1}, 1};
        /* the full budget, as below */
        __atomic_store_n(&host_barrier_spin.budget, host_barrier_spin.max, __ATOMIC_RELAXED);
        long t_start = now_ns();
        host.parallel(omp_body, &job, (unsigned)num_threads, 0);
        long t_end = now_ns();
        if (job.team > 1) {
            COUNT(&stats[0]);
            judge_job(&job.bar, t_end - t_start, job.team);
        }
        pthread_mutex_unlock(&pool.run_lock);
        return;
    }
    while (pool.nworkers < num_threads - 1) {
        int tid = pool.nworkers + 1;
        pool.start_gen[tid] = pool.gen;   /* only this thread writes gen */
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &attr, worker, (void *)(intptr_t)tid);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        pool.nworkers++;
    }
    if (num_threads > pool.nworkers + 1)
        num_threads = pool.nworkers + 1;
    if (num_threads <= 1) {
        pthread_mutex_unlock(&pool.run_lock);
        fn(arg, 0, 1, &solo);
        return;
    }
    COUNT(&stats[0]);
    pool.fn = fn;
    pool.arg = arg;
    pool.num_threads = num_threads;
    pool.bar.count = 0;
    pool.bar.spin_ns = 0;
    pool.bar.cpu_ns = 0;
    STORE(&pool.done, 0);
    int nworkers = pool.nworkers;
    /* Post: everything above is published by this seq_cst store, which
     * workers read with a seq_cst/acquire load. */
    /* Every job starts with the full barrier budget (see the comment at the
     * budgets: a short budget carried over from a contended job never recovers). */
    __atomic_store_n(&barrier_spin.budget, barrier_spin.max, __ATOMIC_RELAXED);
    long t_start = now_ns();
    STORE(&pool.gen, (int)((unsigned)pool.gen + 1u));
    wake(&pool.gen_sleepers, &pool.gen);
    run_part(fn, arg, 0, num_threads, &pool.bar);
    for (int d; (d = LOAD(&pool.done)) < nworkers;)
        wait_change(&pool.done, d, &pool.done_sleepers, &barrier_spin, NULL);
    judge_job(&pool.bar, now_ns() - t_start, num_threads);
    pthread_mutex_unlock(&pool.run_lock);
}
