/* Threads for the kernels' jobs, with a spin-then-sleep barrier for the
 * per-step synchronisation of the recurrent loop.
 *
 * Which threads. When the process has already loaded the GNU OpenMP runtime
 * (torch's CPU wheel ships its own libgomp.so.1), a job runs on that
 * runtime's team (GOMP_parallel, found at run time with
 * dlopen(RTLD_NOLOAD)/dlsym: no link-time dependency, no -fopenmp): torch's
 * threads and ours are then the same threads. A second pool of our own there
 * competed with torch's OpenMP workers, which spin after each of torch's
 * parallel regions: on a 2-core Intel Xeon a 2-thread training step of a
 * 2-layer (35,20,200,200) model through lstm_fast.torch.LSTM took 28.1 ms on
 * our own pool, 25.8 ms on 1 thread and 15.9 ms on torch's team. The job
 * learns the team it got (omp_get_num_threads, possibly fewer than asked) and
 * partitions by it. Otherwise (no OpenMP runtime loaded, LSTM_FAST_THREADING=pool,
 * or a forked child: libgomp's team does not survive fork, and its next
 * parallel region in the child hangs) the job runs on our own pool of pthreads.
 * (A child forked before this library was loaded cannot know; torch's own ops
 * at 2 threads hang in such a child as well.)
 *
 * Own pool: workers are created on first use and kept; between jobs they spin
 * for a short while (so back-to-back calls pay no wake-up) and then sleep
 * (futex on Linux). A thread waiting at a barrier also spins only for an
 * adaptive while and then sleeps, so a thread that lost its core to another
 * process gets it back instead of being starved by its partner spinning
 * (our barrier is used in the host's team too, for that reason).
 *
 * Either way only one job runs at a time: a caller that finds a job running
 * (another Python thread, GIL released) runs its job on 1 thread, which gives
 * the same bits because the kernels never split a reduction.
 *
 * Every sleep follows one protocol (see wait_change in pool.c): the sleeper
 * announces itself (sleepers++) and then re-checks the word; the waker changes
 * the word and then looks at sleepers; both with sequentially consistent
 * atomics, so at least one of them sees the other and no wake-up is lost. */
#ifndef LSTM_FAST_POOL_H
#define LSTM_FAST_POOL_H

#define LSTM_CLAIM_THREADS 64   /* = LSTM_MAX_THREADS (lstm.h) */

typedef struct {
    int count;        /* threads arrived in the current phase */
    int phase;        /* bumped when the last one arrives (futex word) */
    int sleepers;     /* threads asleep, or about to sleep, on phase */
    int host_team;    /* 1: the job runs on the host's OpenMP team (longer spin) */
    long spin_ns;     /* time spent spinning here in the current job, all threads */
    long cpu_ns;      /* CPU time of the current job's threads, added as each finishes */
} lstm_barrier;

typedef void (*lstm_job_fn)(void *arg, int tid, int num_threads, lstm_barrier *bar);

/* Run fn(arg, tid, n, bar) for tid = 0..n-1 (tid 0 on the calling thread) and
 * return when all are done; n <= num_threads (fewer if a job is already running,
 * threads cannot be created, or the OpenMP runtime gives a smaller team).
 * Every one of the n threads must call lstm_barrier_wait(bar, n) the same
 * number of times. */
void lstm_pool_run(lstm_job_fn fn, void *arg, int num_threads);

/* Wait until all num_threads threads of the job have arrived. */
void lstm_barrier_wait(lstm_barrier *bar, int num_threads);

/* Work claimed at run time between two barriers. A phase's n items (a step's hidden
 * blocks) are split into num_threads parts as a static split would give them; each
 * thread claims chunks of its own part first, then of the others' parts, so a thread
 * slowed by another process or by the hypervisor (on a shared 2-core KVM guest, one
 * vCPU often runs 30-100 % slower than the other for seconds at a time) does less of
 * the phase instead of holding its partner at the barrier. Which thread computes an
 * item never changes its bits. Counters of two parities: phase p claims from slot
 * [p & 1]; a thread resets its own slot of the other parity during phase p (nobody
 * touches it again before the barrier that ends phase p). */
typedef struct {
    long next;   /* items of this part claimed (may overshoot the part) */
    char pad[64 - sizeof(long)];
} __attribute__((aligned(64))) lstm_claim_slot;

typedef struct {
    lstm_claim_slot slot[2][LSTM_CLAIM_THREADS];
    int others_first;   /* 1: claim from the next threads' parts before one's own (tests) */
} lstm_claims;

/* Zero the slots of both parities for num_threads threads (before the job starts). */
static inline void lstm_claims_init(lstm_claims *cl, int num_threads, int others_first)
{
    cl->others_first = others_first;
    for (int p = 0; p < 2; p++)
        for (int v = 0; v < num_threads; v++)
            cl->slot[p][v].next = 0;
}

/* Claims up to chunk items of phase p's n items for thread tid: [*a, *b); within a
 * part the items go first to last, or last to first when rev, and *next is the item
 * after these in that order (likely this thread's next claim: what to prefetch), or
 * -1 at the part's end. 0 when none is left. */
static inline int lstm_claim(lstm_claims *cl, long p, int tid, int num_threads, long n,
                             long chunk, int rev, long *a, long *b, long *next)
{
    for (int d = cl->others_first; d < num_threads + cl->others_first; d++) {
        int v = (tid + d) % num_threads;
        long s = n * v / num_threads, e = n * (v + 1) / num_threads;
        long *ctr = &cl->slot[p & 1][v].next;
        if (s + __atomic_load_n(ctr, __ATOMIC_RELAXED) >= e)   /* no write to a done part */
            continue;
        long k = __atomic_fetch_add(ctr, chunk, __ATOMIC_RELAXED);
        if (s + k >= e)
            continue;
        long m = e - s - k < chunk ? e - s - k : chunk;
        *a = rev ? e - k - m : s + k;
        *b = *a + m;
        *next = rev ? (*a > s ? *a - 1 : -1) : (*b < e ? *b : -1);
        return 1;
    }
    return 0;
}

/* Thread tid's slot of the parity phase p does not use, zeroed for phase p + 1. */
static inline void lstm_claims_next(lstm_claims *cl, long p, int tid)
{
    cl->slot[(p + 1) & 1][tid].next = 0;
}

/* CPUs usable by this process (affinity mask, else online), capped at
 * LSTM_MAX_THREADS; determined once. */
int lstm_online_cpus(void);

/* 1 while recent multi-thread jobs were inefficient: more than ~40% of the
 * team's capacity (threads x wall time) was not spent computing (their CPU
 * time less barrier spinning), i.e. a second thread bought less than ~1.2x,
 * typically because another process holds the other core.
 * Set after such a job for 10 ms, doubling while it persists (up to 1 s, so
 * the auto choice re-probes at least once a second); cleared by an efficient
 * job. For an automatic thread choice (lstm_fast.backends.threads_for);
 * an explicit thread count is always honoured. */
int lstm_pool_contended(void);

/* Counters for tests and tuning (relaxed, so approximate while jobs run):
 * out[0] jobs run on >1 thread, out[1] jobs run on 1 thread because the pool
 * was busy, out[2] barrier waits that went to sleep, out[3] worker wake-ups
 * from sleep, out[4] multi-thread jobs found inefficient (see
 * lstm_pool_contended), out[5] permille of the team's capacity lost in the
 * last multi-thread job. */
#define LSTM_POOL_NSTATS 6
void lstm_pool_stats(long out[LSTM_POOL_NSTATS]);

/* Which threads run multi-thread jobs now: the host process's OpenMP runtime
 * or our own pool (a constant string, for build info and `lstm-fast info`). */
const char *lstm_pool_runtime(void);

/* 1 (default, unless LSTM_FAST_THREADING=pool): jobs run on the host's OpenMP
 * runtime when the process has one; 0: always on our own pool (tests, A/B
 * measurements). A forked child never uses the host's runtime. Returns the
 * previous setting. */
int lstm_pool_allow_host(int allow);

#endif
