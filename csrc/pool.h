/* A persistent thread pool with a spin barrier, for the per-step
 * synchronisation of the recurrent loop.
 *
 * Workers are created on first use and kept; between jobs they spin for a
 * short while (so back-to-back calls pay no wake-up) and then sleep on a
 * condition variable. Only one job runs at a time: a caller that finds the
 * pool busy (another Python thread, GIL released) runs its job on 1 thread,
 * which gives the same bits because the kernels never split a reduction. */
#ifndef LSTM_FAST_POOL_H
#define LSTM_FAST_POOL_H

typedef struct {
    int count;        /* threads arrived in the current phase */
    int phase;        /* bumped when the last one arrives */
} lstm_barrier;

typedef void (*lstm_job_fn)(void *arg, int tid, int nthreads, lstm_barrier *bar);

/* Run fn(arg, tid, n, bar) for tid = 0..n-1 (tid 0 on the calling thread) and
 * return when all are done; n <= nthreads (fewer if the pool is busy or threads
 * cannot be created). */
void lstm_pool_run(lstm_job_fn fn, void *arg, int nthreads);

/* Wait until all nthreads threads of the job have arrived. */
void lstm_barrier_wait(lstm_barrier *bar, int nthreads);

int lstm_online_cpus(void);

#endif
