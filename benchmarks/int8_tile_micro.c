/* int8_tile_micro.c: the large forward's step products (B = 64 rows in register tiles of 6,
 * H = 256 in 16 blocks of 16 units x 4 gates, K = I + H = 512, all in L1/L2) as the three
 * register tiles an int8 path could use, to choose between them (issue 16):
 *   - the float32 FMA tile on a float32 copy of the weights (what int8.template.c runs for
 *     B > FR: the float32 kernel's speed),
 *   - the same tile widening int8 weights in registers (vpmovsxbd + vcvtdq2ps per weight
 *     vector: what int8.template.c runs for B <= FR),
 *   - a vpdpbusd tile (AVX512-VNNI, u8 x s8, 4 k per instruction): option (b), x and h
 *     quantized per row per step (the u8 offset: x + 128, corrected by 128 * row sums of
 *     the weights; vpdpbusd does not saturate: 4 * 255 * 127 fits its int32 lanes),
 *     plus what (b) adds per step: quantizing [x | h] and dequantizing the int32 sums.
 * Best of 15 rounds of 20 steps, one thread. Not part of the package or the pytest suites:
 *     gcc -O3 -mavx512f -mavx512vl -mavx512bw -mavx512dq -mavx512vnni -mfma \
 *         -o /tmp/int8_tile_micro benchmarks/int8_tile_micro.c
 *     flock -x /tmp/lstm_cpu.lock /tmp/int8_tile_micro
 * Figures: benchmarks/README.md ("int8 weights"). */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define B 64
#define H 256
#define K 512
#define V 16
#define NBLK (H / V)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static float wf[NBLK][K][4][V] __attribute__((aligned(64)));
static int8_t w8[NBLK][K][4][V] __attribute__((aligned(64)));
static int8_t wq[NBLK][K / 4][4][V][4] __attribute__((aligned(64)));
static float xf[B][K] __attribute__((aligned(64)));
static uint8_t xu[B][K] __attribute__((aligned(64)));
static float out[B][4 * H] __attribute__((aligned(64)));
static int32_t outi[B][4 * H] __attribute__((aligned(64)));

__attribute__((noinline)) static void step_f32(void) {
  for (int j = 0; j < NBLK; j++)
    for (int r0 = 0; r0 < B; r0 += 6) {
      int mr = B - r0 < 6 ? B - r0 : 6;
      __m512 acc[6][4];
      for (int r = 0; r < 6; r++) for (int g = 0; g < 4; g++) acc[r][g] = _mm512_setzero_ps();
      if (mr == 6) {
        for (int k = 0; k < K; k++) {
          __m512 w0 = _mm512_load_ps(wf[j][k][0]), w1 = _mm512_load_ps(wf[j][k][1]), w2 = _mm512_load_ps(wf[j][k][2]), w3 = _mm512_load_ps(wf[j][k][3]);
#pragma GCC unroll 6
          for (int r = 0; r < 6; r++) { __m512 a = _mm512_set1_ps(xf[r0 + r][k]);
            acc[r][0] = _mm512_fmadd_ps(a, w0, acc[r][0]); acc[r][1] = _mm512_fmadd_ps(a, w1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(a, w2, acc[r][2]); acc[r][3] = _mm512_fmadd_ps(a, w3, acc[r][3]); }
        }
      } else {
        for (int k = 0; k < K; k++) for (int r = 0; r < mr; r++) { __m512 a = _mm512_set1_ps(xf[r0 + r][k]);
          for (int g = 0; g < 4; g++) acc[r][g] = _mm512_fmadd_ps(a, _mm512_load_ps(wf[j][k][g]), acc[r][g]); }
      }
      for (int r = 0; r < mr; r++) for (int g = 0; g < 4; g++) _mm512_store_ps(&out[r0 + r][g * H + j * V], acc[r][g]);
    }
}

__attribute__((noinline)) static void step_i8widen(void) {
  for (int j = 0; j < NBLK; j++)
    for (int r0 = 0; r0 < B; r0 += 6) {
      int mr = B - r0 < 6 ? B - r0 : 6;
      __m512 acc[6][4];
      for (int r = 0; r < 6; r++) for (int g = 0; g < 4; g++) acc[r][g] = _mm512_setzero_ps();
      if (mr == 6) {
        for (int k = 0; k < K; k++) {
          __m512 w[4];
          for (int g = 0; g < 4; g++) w[g] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)w8[j][k][g])));
#pragma GCC unroll 6
          for (int r = 0; r < 6; r++) { __m512 a = _mm512_set1_ps(xf[r0 + r][k]);
            for (int g = 0; g < 4; g++) acc[r][g] = _mm512_fmadd_ps(a, w[g], acc[r][g]); }
        }
      } else {
        for (int k = 0; k < K; k++) for (int r = 0; r < mr; r++) { __m512 a = _mm512_set1_ps(xf[r0 + r][k]);
          for (int g = 0; g < 4; g++) acc[r][g] = _mm512_fmadd_ps(a, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)w8[j][k][g]))), acc[r][g]); }
      }
      for (int r = 0; r < mr; r++) for (int g = 0; g < 4; g++) _mm512_store_ps(&out[r0 + r][g * H + j * V], acc[r][g]);
    }
}

__attribute__((noinline)) static void step_vnni(void) {
  for (int j = 0; j < NBLK; j++)
    for (int r0 = 0; r0 < B; r0 += 6) {
      int mr = B - r0 < 6 ? B - r0 : 6;
      __m512i acc[6][4];
      for (int r = 0; r < 6; r++) for (int g = 0; g < 4; g++) acc[r][g] = _mm512_setzero_si512();
      if (mr == 6) {
        for (int k = 0; k < K / 4; k++) {
          __m512i w0 = _mm512_load_si512(wq[j][k][0]), w1 = _mm512_load_si512(wq[j][k][1]), w2 = _mm512_load_si512(wq[j][k][2]), w3 = _mm512_load_si512(wq[j][k][3]);
#pragma GCC unroll 6
          for (int r = 0; r < 6; r++) { int32_t x4; memcpy(&x4, &xu[r0 + r][4 * k], 4); __m512i a = _mm512_set1_epi32(x4);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, w0); acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, w1);
            acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], a, w2); acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], a, w3); }
        }
      } else {
        for (int k = 0; k < K / 4; k++) for (int r = 0; r < mr; r++) { int32_t x4; memcpy(&x4, &xu[r0 + r][4 * k], 4); __m512i a = _mm512_set1_epi32(x4);
          for (int g = 0; g < 4; g++) acc[r][g] = _mm512_dpbusd_epi32(acc[r][g], a, _mm512_load_si512(wq[j][k][g])); }
      }
      for (int r = 0; r < mr; r++) for (int g = 0; g < 4; g++) _mm512_store_si512(&outi[r0 + r][g * H + j * V], acc[r][g]);
    }
}

/* the per-step extras of (b): quantize B rows of [x|h] to u8 (per-row scale), dequantize B x 4H outputs */
__attribute__((noinline)) static void vnni_extras(void) {
  for (int r = 0; r < B; r++) {
    __m512 m = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_load_ps(&xf[r][k])));
    float s = _mm512_reduce_max_ps(m) / 127.f; __m512 inv = _mm512_set1_ps(s ? 1 / s : 0);
    for (int k = 0; k < K; k += 16) {
      __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(&xf[r][k]), inv)), _mm512_set1_epi32(128));
      _mm_store_si128((__m128i *)&xu[r][k], _mm512_cvtusepi32_epi8(q));
    }
    for (int n = 0; n < 4 * H; n += 16) {
      __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(&outi[r][n]), _mm512_set1_epi32(100)));
      _mm512_store_ps(&out[r][n], _mm512_mul_ps(v, _mm512_set1_ps(s)));
    }
  }
}

int main(void) {
  srand(1);
  for (size_t i = 0; i < sizeof wf / 4; i++) ((float *)wf)[i] = rand() / (float)RAND_MAX - .5f;
  for (size_t i = 0; i < sizeof w8; i++) ((int8_t *)w8)[i] = rand() % 255 - 127, ((int8_t *)wq)[i] = rand() % 255 - 127;
  for (int r = 0; r < B; r++) for (int k = 0; k < K; k++) xf[r][k] = rand() / (float)RAND_MAX - .5f, xu[r][k] = rand() % 256;
  void (*fns[])(void) = {step_f32, step_i8widen, step_vnni, vnni_extras};
  const char *names[] = {"fp32 FMA tile (float copy)", "fp32 FMA tile, int8 widened", "vpdpbusd tile", "(b) extras: quantize x,h + dequantize"};
  double best[4] = {1e9, 1e9, 1e9, 1e9};
  for (int rep = 0; rep < 15; rep++)
    for (int f = 0; f < 4; f++) { double t0 = now(); for (int i = 0; i < 20; i++) fns[f](); double t = (now() - t0) / 20; if (t < best[f]) best[f] = t; }
  double macs = (double)B * K * 4 * H;
  for (int f = 0; f < 4; f++) printf("%-40s %8.1f us/step  %6.1f GMAC/s\n", names[f], best[f] * 1e6, f < 3 ? macs / best[f] * 1e-9 : 0);
  return 0;
}
