/* fwd_step_micro.c: the forward step's register tile and cell apart and one after the other,
 * as fwd_step runs them at (T, B, I, H) = (., 32, 16, 128), float32, AVX-512: a tile of 6 rows
 * x 4 gates x 16 units over K = I + H = 144 rows of weights (8 blocks' weights, 295 KB, in the
 * L2), then the cell of those 96 units (csrc/simd.template.h's activations, the same
 * operations as cell.template.c's plain forward cell). Prints the tile's GFLOP/s, the cell's
 * ns per unit alone, and the cell's cost in situ (tile + cell minus tile), 3 rounds of 400000
 * tiles, one thread: where the forward's time goes when the products run at the tile's rate
 * (issue 14, what limits the 1-thread targets). -DISA=1 builds it for AVX2 (16 ymm registers,
 * 8 units a block) and -DROWS=n sets the tile's rows (default 6): why the AVX2 step tiles take
 * 3 rows (csrc/simd.template.h, FR and BR). Not part of the package or the suites:
 *     gcc -O3 -ffp-contract=off -fno-math-errno -Icsrc -o /tmp/fwd_step_micro benchmarks/fwd_step_micro.c
 *     flock -x /tmp/lstm_cpu.lock /tmp/fwd_step_micro
 *     for r in 1 2 3 4; do gcc -O3 -ffp-contract=off -fno-math-errno -Icsrc -DISA=1 -DROWS=$r \
 *         -o /tmp/fwd_step_micro_$r benchmarks/fwd_step_micro.c && flock -x /tmp/lstm_cpu.lock /tmp/fwd_step_micro_$r; done
 * Figures: benchmarks/README.md ("Session 20"; AVX2: "Report of 2026-12-02 (AMD EPYC family 25
 * model 1, Zen 3: AVX2 only)"). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <stdlib.h>
#define TYPE float
#define IS_F64 0
#ifndef ISA
#define ISA 2
#endif
#if ISA == 2
#define SFX f32_avx512
#else
#define SFX f32_avx2
#endif
#ifndef ROWS
#define ROWS 6
#endif
#include "simd.template.h"
enum { R = ROWS, K = 144, NBLK = 8 };
__attribute__((noinline)) ATTR void tile(const TYPE *x, const TYPE *w, TYPE *part)
{
    vec acc[R * 4];
    /* unrolled, as fwd_tile's: a rolled loop over acc kept 2 AVX2 rows' sums on the stack */
#pragma GCC unroll 24
    for (int q = 0; q < R * 4; q++) acc[q] = (vec){0};
    for (int k = 0; k < K; k++) {
        const TYPE *wk = w + k * 4 * V;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            vec a = vset1(x[r * K + k]);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) acc[r * 4 + g] = vfma(a, vload(wk + g * V), acc[r * 4 + g]);
        }
    }
    #pragma GCC unroll 24
    for (int q = 0; q < R * 4; q++) vstore(part + q * V, acc[q]);
}
__attribute__((noinline)) ATTR void cell(const TYPE *acc, const TYPE *bias, TYPE *c, TYPE *h)
{
    TYPE act[R * 4 * V] __attribute__((aligned(64)));
    for (int q = 0; q < R; q++) {
        const TYPE *s = acc + q * 4 * V; TYPE *ac = act + q * 4 * V;
        vec i = vsigmoid(vload(s) + vload(bias)), f = vsigmoid(vload(s + V) + vload(bias + V));
        vec g = vtanh(vload(s + 2 * V) + vload(bias + 2 * V)), o = vsigmoid(vload(s + 3 * V) + vload(bias + 3 * V));
        vstore(ac, i); vstore(ac + V, f); vstore(ac + 2 * V, g); vstore(ac + 3 * V, o);
    }
    for (int q = 0; q < R; q++) {
        const TYPE *ac = act + q * 4 * V;
        vec cn = vfma(vload(ac + V), vload(c + q * V), vload(ac) * vload(ac + 2 * V));
        vstore(c + q * V, cn); vstore(h + q * V, vload(ac + 3 * V) * vtanh(cn));
    }
}
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+1e-9*t.tv_nsec;}
int main(void)
{
    TYPE *x = aligned_alloc(64, R * K * 4), *w = aligned_alloc(64, NBLK * K * 4 * V * 4), *part = aligned_alloc(64, R * 4 * V * 4);
    TYPE *bias = aligned_alloc(64, 4 * V * 4), *c = aligned_alloc(64, NBLK * R * V * 4), *h = aligned_alloc(64, NBLK * R * V * 4);
    for (int i = 0; i < R * K; i++) x[i] = 0.01f * (i % 7);
    for (long i = 0; i < NBLK * K * 4 * V; i++) w[i] = 0.001f * (i % 13);
    for (int i = 0; i < 4 * V; i++) bias[i] = 0.1f;
    for (int i = 0; i < NBLK * R * V; i++) c[i] = 0.2f;
    for (int i = 0; i < R * 4 * V; i++) part[i] = 0.05f * (i % 11) - 0.2f;
    long N = 400000;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (long n = 0; n < N; n++) { tile(x, w + (n % NBLK) * K * 4 * V, part); __asm__ volatile("" ::: "memory"); }
        double t1 = now();
        for (long n = 0; n < N; n++) { cell(part, bias, c + (n % NBLK) * R * V, h + (n % NBLK) * R * V); __asm__ volatile("" ::: "memory"); }
        double t2 = now();
        for (long n = 0; n < N; n++) { tile(x, w + (n % NBLK) * K * 4 * V, part); cell(part, bias, c + (n % NBLK) * R * V, h + (n % NBLK) * R * V); __asm__ volatile("" ::: "memory"); }
        double t3 = now();
        double flops = 2.0 * R * 4 * V * K;
        printf("tile %.1f ns (%.0f GF/s)  cell %.1f ns (%.2f ns/unit)  tile+cell %.1f ns  -> cell in situ %.1f ns (%.2f ns/unit)\n",
               (t1 - t0) / N * 1e9, flops * N / (t1 - t0) / 1e9, (t2 - t1) / N * 1e9, (t2 - t1) / N * 1e9 / (R * V),
               (t3 - t2) / N * 1e9, ((t3 - t2) - (t1 - t0)) / N * 1e9, ((t3 - t2) - (t1 - t0)) / N * 1e9 / (R * V));
    }
}
