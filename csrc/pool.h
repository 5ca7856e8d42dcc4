/* A persistent thread pool with a spin-then-sleep barrier, for the per-step
 * synchronisation of the recurrent loop.
 *
 * Workers are created on first use and kept; between jobs they spin for a
 * short while (so back-to-back calls pay no wake-up) and then sleep (futex on
 * Linux). A thread waiting at a barrier also spins only briefly and then
 * sleeps, so a thread that lost its core to another process gets it back
 * instead of being starved by its partner spinning. Only one job runs at a
 * time: a caller that finds the pool busy (another Python thread, GIL
 * released) runs its job on 1 thread, which gives the same bits because the
 * kernels never split a reduction.
 *
 * Every sleep follows one protocol (see wait_change in pool.c): the sleeper
 * announces itself (sleepers++) and then re-checks the word; the waker changes
 * the word and then looks at sleepers; both with sequentially consistent
 * atomics, so at least one of them sees the other and no wake-up is lost. */
#ifndef LSTM_FAST_POOL_H
#define LSTM_FAST_POOL_H

typedef struct {
    int count;        /* threads arrived in the current phase */
    int phase;        /* bumped when the last one arrives (futex word) */
    int sleepers;     /* threads asleep, or about to sleep, on phase */
    long wait_ns;     /* time spent waiting here in the current job, all threads */
} lstm_barrier;

typedef void (*lstm_job_fn)(void *arg, int tid, int num_threads, lstm_barrier *bar);

/* Run fn(arg, tid, n, bar) for tid = 0..n-1 (tid 0 on the calling thread) and
 * return when all are done; n <= num_threads (fewer if the pool is busy or threads
 * cannot be created). Every one of the n threads must call lstm_barrier_wait
 * on bar the same number of times. */
void lstm_pool_run(lstm_job_fn fn, void *arg, int num_threads);

/* Wait until all num_threads threads of the job have arrived. */
void lstm_barrier_wait(lstm_barrier *bar, int num_threads);

/* CPUs usable by this process (affinity mask, else online), capped at
 * LSTM_MAX_THREADS; determined once. */
int lstm_online_cpus(void);

/* 1 while recent multi-thread jobs were inefficient: their threads spent more
 * than ~40% of the job waiting for each other, i.e. a second thread bought
 * less than ~1.2x, typically because another process holds the other core.
 * Set after such a job for 10 ms, doubling while it persists (up to 1 s, so
 * the auto choice re-probes at least once a second); cleared by an efficient
 * job. For an automatic thread choice (lstm_fast.backends.threads_for);
 * an explicit thread count is always honoured. */
int lstm_pool_contended(void);

/* Counters for tests and tuning (relaxed, so approximate while jobs run):
 * out[0] jobs run on >1 thread, out[1] jobs run on 1 thread because the pool
 * was busy, out[2] barrier waits that went to sleep, out[3] worker wake-ups
 * from sleep, out[4] multi-thread jobs found inefficient (see
 * lstm_pool_contended), out[5] permille of waiting in the last multi-thread
 * job. */
#define LSTM_POOL_NSTATS 6
void lstm_pool_stats(long out[LSTM_POOL_NSTATS]);

#endif
