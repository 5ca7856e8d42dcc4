/* fwd_tile_rows_micro.c: the forward step's register tile on AVX2 (16 ymm registers) for 1-4
 * rows: RR rows x 4 gates x 8 units over KK rows of packed weights (NBLK blocks, cycled), as
 * fwd_tile runs it, float32, one thread. Why the AVX2 step tiles take 3 rows (csrc/simd.template.h,
 * FR and BR): with 2 rows the 8 accumulators are exactly the FMAs in flight at 2 a cycle and a
 * latency of 4. Not part of the package or the suites:
 *     for r in 1 2 3 4; do gcc -O3 -ffp-contract=off -fno-math-errno -Icsrc -DRR=$r \
 *         -o /tmp/tile_rows_$r benchmarks/fwd_tile_rows_micro.c && flock -x /tmp/lstm_cpu.lock /tmp/tile_rows_$r; done
 * Figures: benchmarks/README.md ("Session 21"). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define TYPE float
#define IS_F64 0
#define SFX f32_avx2
#define ISA 1
#include "simd.template.h"
#ifndef RR
#define RR 2
#endif
#ifndef KK
#define KK 144
#endif
#ifndef NBLK
#define NBLK 8
#endif
__attribute__((noinline)) ATTR void tile(const TYPE *x, const TYPE *w, TYPE *part)
{
    vec acc[RR * 4];
_Pragma("GCC unroll 24") for (int q = 0; q < RR * 4; q++) acc[q] = (vec){0};
    for (int k = 0; k < KK; k++) {
        const TYPE *wk = w + k * 4 * V;
#pragma GCC unroll 8
        for (int r = 0; r < RR; r++) {
            vec a = vset1(x[r * KK + k]);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) acc[r * 4 + g] = vfma(a, vload(wk + g * V), acc[r * 4 + g]);
        }
    }
_Pragma("GCC unroll 24") for (int q = 0; q < RR * 4; q++) vstore(part + q * V, acc[q]);
}
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+1e-9*t.tv_nsec;}
int main(void)
{
    TYPE *x = aligned_alloc(64, 64 * KK * 4), *w = aligned_alloc(64, (size_t)NBLK * KK * 4 * V * 4), *part = aligned_alloc(64, 64 * 4 * V * 4);
    for (int i = 0; i < RR * KK; i++) x[i] = 0.01f * (i % 7);
    for (long i = 0; i < (long)NBLK * KK * 4 * V; i++) w[i] = 0.001f * (i % 13);
    long N = 200000000L / (RR * KK * 4);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        for (long n = 0; n < N; n++) { tile(x, w + (n % NBLK) * KK * 4 * V, part); __asm__ volatile("" ::: "memory"); }
        double t1 = now();
        double flops = 2.0 * RR * 4 * V * KK;
        printf("RR=%d K=%d blocks=%d (%ld KB): %.0f GF/s\n", RR, KK, NBLK, (long)NBLK*KK*4*V*4/1024, flops * N / (t1 - t0) / 1e9);
    }
}
