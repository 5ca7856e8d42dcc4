/* lstm.h: the contract of the fused LSTM kernel (one layer, one direction).
 *
 * Shapes (time-major, PyTorch conventions, gate order i, f, g, o; all arrays
 * C-contiguous, element type float (_f32) or double (_f64)):
 *
 *   x      [T,B,I]    input sequence
 *   w_ih   [4H,I]     input weights          w_hh [4H,H] recurrent weights
 *   b      [4H]       b_ih + b_hh, or NULL
 *   h0, c0 [B,H]      initial hidden and cell state
 *   y      [T,B,H]    hidden state after every step
 *   h_n, c_n [B,H]    final hidden and cell state (copies of y[T-1], c[T-1];
 *                     of h0, c0 when T == 0)
 *   gates  [T,B,4H]   activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
 *   c      [T,B,H]    cell state after every step
 *
 * The kernel never allocates. The caller owns every output, the packed weights
 * and the workspace; none of them may alias each other or an input.
 *
 * Every function returns LSTM_OK or an LSTM_ERR_* status.
 * Results are bitwise identical for any nthreads: the work is split over
 * output tiles only, never over a reduction.
 */
#ifndef LSTM_FAST_LSTM_H
#define LSTM_FAST_LSTM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LSTM_OK = 0,
    LSTM_ERR_ARG = 1,        /* negative dimension, NULL pointer, H == 0 */
    LSTM_ERR_PACKED = 2,     /* packed weights do not match dtype, I, H or were built for
                                a SIMD level other than the current one */
    LSTM_ERR_SIMD = 3        /* requested SIMD level not supported by this CPU */
};

/* SIMD level used by lstm_pack_* (and hence by every kernel on that pack).
 * Defaults to lstm_cpu_simd_level(); levels as in cpu.h. */
int lstm_set_simd_level(int level);   /* LSTM_ERR_SIMD if the CPU lacks it */
int lstm_get_simd_level(void);

/* Threads to use for a shape: requested > 0 is capped at the number of online
 * CPUs and at LSTM_MAX_THREADS; requested == 0 chooses from the per-step work
 * (a second thread only pays off when B*4H*H is large). */
#define LSTM_MAX_THREADS 64
int lstm_resolve_threads(int64_t T, int64_t B, int64_t I, int64_t H, int requested,
                         int elem_size);

/* Compiler, flags, SIMD levels compiled, threading library. */
const char *lstm_build_info(void);

/* ---- per dtype ------------------------------------------------------------
 * _f32: TYPE = float, _f64: TYPE = double.
 *
 * lstm_packed_size_X(I, H)             bytes of the packed-weights buffer
 * lstm_pack_X(I, H, w_ih, w_hh, b, packed)
 *     w_ih [4H,I], w_hh [4H,H], b [4H] or NULL: inputs.
 *     packed: output, lstm_packed_size_X bytes, any alignment. Layout private,
 *     tied to the current SIMD level.
 *
 * lstm_forward_workspace_size_X(T, B, I, H, nthreads)   bytes of scratch
 * lstm_forward_X(T, B, I, H, packed, x, h0, c0, y, h_n, c_n, gates, c,
 *                workspace, nthreads)
 *     inputs:  packed, x [T,B,I], h0 [B,H], c0 [B,H]
 *     outputs: y [T,B,H], h_n [B,H], c_n [B,H], gates [T,B,4H], c [T,B,H]
 *     scratch: workspace (lstm_forward_workspace_size_X bytes, any alignment)
 *
 * lstm_backward_workspace_size_X(T, B, I, H, nthreads)
 * lstm_backward_X(T, B, I, H, packed, x, h0, c0, y, gates, c, dy, dh_n, dc_n,
 *                 dx, dw_ih, dw_hh, db, dh0, dc0, workspace, nthreads)
 *     inputs:  packed, x, h0, c0, and y, gates, c as returned by lstm_forward_X,
 *              dy [T,B,H], dh_n [B,H], dc_n [B,H] (gradients of the loss)
 *     outputs: dx [T,B,I], dw_ih [4H,I], dw_hh [4H,H], db [4H], dh0 [B,H], dc0 [B,H]
 *     scratch: workspace (holds dgates [T,B,4H] and GEMM packing buffers)
 */
#define LSTM_DECLARE(SFX, TYPE)                                                        \
    size_t lstm_packed_size_##SFX(int64_t I, int64_t H);                               \
    int lstm_pack_##SFX(int64_t I, int64_t H, const TYPE *w_ih, const TYPE *w_hh,      \
                        const TYPE *b, void *packed);                                  \
    size_t lstm_forward_workspace_size_##SFX(int64_t T, int64_t B, int64_t I,          \
                                             int64_t H, int nthreads);                 \
    int lstm_forward_##SFX(int64_t T, int64_t B, int64_t I, int64_t H,                 \
                           const void *packed, const TYPE *x, const TYPE *h0,          \
                           const TYPE *c0, TYPE *y, TYPE *h_n, TYPE *c_n,              \
                           TYPE *gates, TYPE *c, void *workspace, int nthreads);       \
    size_t lstm_backward_workspace_size_##SFX(int64_t T, int64_t B, int64_t I,         \
                                              int64_t H, int nthreads);                \
    int lstm_backward_##SFX(int64_t T, int64_t B, int64_t I, int64_t H,                \
                            const void *packed, const TYPE *x, const TYPE *h0,         \
                            const TYPE *c0, const TYPE *y, const TYPE *gates,          \
                            const TYPE *c, const TYPE *dy, const TYPE *dh_n,           \
                            const TYPE *dc_n, TYPE *dx, TYPE *dw_ih, TYPE *dw_hh,      \
                            TYPE *db, TYPE *dh0, TYPE *dc0, void *workspace,           \
                            int nthreads);

LSTM_DECLARE(f32, float)
LSTM_DECLARE(f64, double)

#ifdef __cplusplus
}
#endif
#endif
