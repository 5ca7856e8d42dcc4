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

/* ---- per dtype: _f32 (float) and _f64 (double), identical contracts ------ */

/* Bytes of the packed-weights buffer for input size I, hidden size H. */
size_t lstm_packed_size_f32(int64_t I, int64_t H);
size_t lstm_packed_size_f64(int64_t I, int64_t H);

/* Pack the weights once per weight version.
 *   w_ih   [4H,I]   in
 *   w_hh   [4H,H]   in
 *   b      [4H]     in, b_ih + b_hh, or NULL for no bias
 *   packed [lstm_packed_size_X(I,H) bytes]  out, any alignment; layout private,
 *          built for the current SIMD level (lstm_set_simd_level) and usable
 *          by every later call whatever the level is then set to. */
int lstm_pack_f32(int64_t I, int64_t H, const float *w_ih, const float *w_hh,
                  const float *b, void *packed);
int lstm_pack_f64(int64_t I, int64_t H, const double *w_ih, const double *w_hh,
                  const double *b, void *packed);

/* Bytes of scratch lstm_forward_X needs with up to nthreads threads. */
size_t lstm_forward_workspace_size_f32(int64_t T, int64_t B, int64_t I, int64_t H,
                                       int nthreads);
size_t lstm_forward_workspace_size_f64(int64_t T, int64_t B, int64_t I, int64_t H,
                                       int nthreads);

/* Forward pass.
 *   packed    from lstm_pack_X with the same I, H          in
 *   x         [T,B,I]                                      in
 *   h0, c0    [B,H]                                        in
 *   y         [T,B,H]   hidden state after every step      out
 *   h_n, c_n  [B,H]     final states                       out
 *   gates     [T,B,4H]  activated i, f, g, o (for backward) out
 *   c         [T,B,H]   cell state after every step        out
 *   workspace lstm_forward_workspace_size_X bytes          scratch
 *   nthreads  threads to use (>= 1; see lstm_resolve_threads)
 * T may be 0 (h_n, c_n are then copies of h0, c0). */
int lstm_forward_f32(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                     const float *x, const float *h0, const float *c0,
                     float *y, float *h_n, float *c_n, float *gates, float *c,
                     void *workspace, int nthreads);
int lstm_forward_f64(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                     const double *x, const double *h0, const double *c0,
                     double *y, double *h_n, double *c_n, double *gates, double *c,
                     void *workspace, int nthreads);

/* Bytes of scratch lstm_backward_X needs with up to nthreads threads
 * (dgates [T,B,4H] with padded rows plus GEMM packing buffers). */
size_t lstm_backward_workspace_size_f32(int64_t T, int64_t B, int64_t I, int64_t H,
                                        int nthreads);
size_t lstm_backward_workspace_size_f64(int64_t T, int64_t B, int64_t I, int64_t H,
                                        int nthreads);

/* Backward pass (BPTT through the whole sequence).
 *   packed, x, h0, c0   as given to lstm_forward_X              in
 *   y, gates, c         as returned by lstm_forward_X           in
 *   dy        [T,B,H]   dLoss/dy                                in
 *   dh_n, dc_n [B,H]    dLoss/dh_n, dLoss/dc_n                  in
 *   dx        [T,B,I]                                           out
 *   dw_ih     [4H,I]                                            out
 *   dw_hh     [4H,H]                                            out
 *   db        [4H]      gradient of b_ih (= of b_hh)            out
 *   dh0, dc0  [B,H]                                             out
 *   workspace lstm_backward_workspace_size_X bytes              scratch
 *   nthreads  threads to use (>= 1) */
int lstm_backward_f32(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                      const float *x, const float *h0, const float *c0, const float *y,
                      const float *gates, const float *c, const float *dy,
                      const float *dh_n, const float *dc_n,
                      float *dx, float *dw_ih, float *dw_hh, float *db, float *dh0,
                      float *dc0, void *workspace, int nthreads);
int lstm_backward_f64(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                      const double *x, const double *h0, const double *c0, const double *y,
                      const double *gates, const double *c, const double *dy,
                      const double *dh_n, const double *dc_n,
                      double *dx, double *dw_ih, double *dw_hh, double *db, double *dh0,
                      double *dc0, void *workspace, int nthreads);

#ifdef __cplusplus
}
#endif
#endif
