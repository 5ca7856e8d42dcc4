/* lstm.h: the contract of the fused LSTM kernel (one layer, one direction).
 *
 * Shapes (PyTorch conventions, gate order i, f, g, o; all arrays C-contiguous,
 * element type float (_f32) or double (_f64)). R is the width of h: P with a
 * projection (torch's proj_size, P > 0), else H (pass P = 0).
 *
 *   w_ih   [4H,I]     input weights          w_hh [4H,R] recurrent weights
 *   b      [4H]       b_ih + b_hh, or NULL
 *   w_hr   [P,H]      projection, h_t = (o * tanh(c_t)) . w_hr^T (P > 0 only)
 *   h0     [B,R]      initial hidden state   c0 [B,H] initial cell state
 *   x      [N,I]      input rows, packed step-major (see batch_sizes)
 *   y      [N,R]      hidden state after every step
 *   gates  [N,4H]     activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
 *   c      [N,H]      cell state after every step
 *                     (gates and c are what backward needs; a forward for inference
 *                     passes both NULL and saves nothing)
 *   h_n    [B,R]      final hidden state     c_n [B,H] final cell state
 *
 * Variable lengths: batch_sizes [T] (int64, non-increasing, batch_sizes[0] <= B)
 * gives the rows of each step, N = sum(batch_sizes); the rows of step t start at
 * sum(batch_sizes[:t]) and are the first batch_sizes[t] sequences, which alone
 * advance at step t (sequences sorted longest first, as torch's PackedSequence).
 * h_n, c_n hold each sequence's state after its last step (h0, c0 for a sequence
 * of length 0). batch_sizes == NULL means B rows at every step: the padded
 * [T,B,.] layout, N = T*B. Both are one code path; the work is proportional to N.
 *
 * The kernel never allocates. The caller owns every output, the packed weights
 * and the workspace. Aliasing: outputs may not alias each other, the workspace
 * or an input, with two exceptions (useful to keep a running state in place):
 *   - h_n may be h0 and c_n may be c0 (h_n is written after the last step,
 *     from y; c_n too, from c, or, with nothing saved, it is the running cell
 *     state, each element read before it is written; rows never active are
 *     left as they are);
 *   - nothing else: in particular y and c may not alias h0 / c0.
 *
 * Every function returns LSTM_OK or an LSTM_ERR_* status.
 * Results are bitwise identical for any num_threads: the work is split over
 * output tiles only, never over a reduction. Each row is computed by the same
 * operations whatever the number of rows, so a sequence run in chunks (h_n, c_n
 * of one call as h0, c0 of the next) gives the same bits as one call, and a
 * forward without saving (gates, c NULL) the same y, h_n, c_n as one with.
 *
 * Glossary: T steps, B sequences, I input size, H hidden size, P projection
 * size (0: none), R width of h (P or H), G = 4H, N packed rows, num_threads
 * threads of a call (>= 1; the thread rule is the caller's).
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
    LSTM_ERR_ARG = 1,        /* negative dimension, NULL pointer, H == 0, bad batch_sizes */
    LSTM_ERR_PACKED = 2,     /* packed weights do not match dtype, I, H, P or were built for
                                a SIMD level other than the current one */
    LSTM_ERR_SIMD = 3        /* requested SIMD level not supported by this CPU */
};

/* SIMD level used by lstm_pack_* (and hence by every kernel on that pack).
 * Defaults to lstm_cpu_simd_level(); levels as in cpu.h. */
int lstm_set_simd_level(int level);   /* LSTM_ERR_SIMD if the CPU lacks it */
int lstm_get_simd_level(void);

/* Threads: every call takes a count num_threads >= 1, capped at the CPUs this
 * process may use and at LSTM_MAX_THREADS. The automatic choice of a count is
 * the caller's (lstm_fast.backends.threads_for in Python). */
#define LSTM_MAX_THREADS 64

/* 1 while recent multi-thread jobs of the pool were inefficient (another
 * process holds the other core): the contention signal for an automatic thread
 * rule. See pool.h. */
int lstm_pool_contended(void);

/* "key=value;..." : compiler, flags, SIMD levels compiled (levels), threading
 * library (threads), and the running CPU as cpu.h reports it: cpu (vendor,
 * family, model), l1d, l2, l3 (bytes), l2_shared_by, l3_shared_by (logical
 * CPUs), caches_from (cpuid, sysfs, ...). */
const char *lstm_build_info(void);

/* ---- per dtype: _f32 (float) and _f64 (double), identical contracts ------ */

/* Bytes of the packed-weights buffer for input size I, hidden size H, projection
 * size P (0: none). */
size_t lstm_packed_size_f32(int64_t I, int64_t H, int64_t P);
size_t lstm_packed_size_f64(int64_t I, int64_t H, int64_t P);

/* Pack the weights once per weight version.
 *   w_ih   [4H,I]   in
 *   w_hh   [4H,R]   in
 *   b      [4H]     in, b_ih + b_hh, or NULL for no bias
 *   w_hr   [P,H]    in, projection (P > 0), else ignored (may be NULL)
 *   packed [lstm_packed_size_X(I,H,P) bytes]  out, any alignment; layout private,
 *          built for the current SIMD level (lstm_set_simd_level) and usable
 *          by every later call whatever the level is then set to. */
int lstm_pack_f32(int64_t I, int64_t H, int64_t P, const float *w_ih, const float *w_hh,
                  const float *b, const float *w_hr, void *packed);
int lstm_pack_f64(int64_t I, int64_t H, int64_t P, const double *w_ih, const double *w_hh,
                  const double *b, const double *w_hr, void *packed);

/* Bytes of scratch lstm_forward_X needs with up to num_threads threads (T
 * steps, B sequences); save: 1 if gates and c will be given, 0 if they will be
 * NULL (the workspace may then hold the input projections of all rows). */
size_t lstm_forward_workspace_size_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                                       int num_threads, int save);
size_t lstm_forward_workspace_size_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                                       int num_threads, int save);

/* Forward pass.
 *   packed      from lstm_pack_X with the same I, H, P                 in
 *   batch_sizes [T] rows per step, or NULL for B at every step         in
 *   x           [N,I]                                                  in
 *   h0 [B,R], c0 [B,H]                                                 in
 *   y           [N,R]   hidden state after every step                  out
 *   h_n [B,R], c_n [B,H]  final states (may be h0, c0: see above)      out
 *   gates       [N,4H]  activated i, f, g, o (for backward), or NULL   out
 *   c           [N,H]   cell state after every step, or NULL           out
 *   workspace   lstm_forward_workspace_size_X bytes                    scratch
 *               (its save argument 0 if gates and c are NULL)
 *   num_threads threads to use (>= 1)
 * gates and c are both given (training: what backward needs) or both NULL
 * (inference: nothing is saved; the running cell state is kept in c_n, which
 * starts as a copy of c0 unless c_n is c0); y, h_n, c_n are the same bits
 * either way. T and N may be 0 (h_n, c_n are then copies of h0, c0).
 * LSTM_ERR_ARG if batch_sizes is not non-increasing in [0, B], or only one of
 * gates and c is NULL. */
int lstm_forward_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, const void *packed,
                     const int64_t *batch_sizes, const float *x, const float *h0,
                     const float *c0, float *y, float *h_n, float *c_n, float *gates, float *c,
                     void *workspace, int num_threads);
int lstm_forward_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, const void *packed,
                     const int64_t *batch_sizes, const double *x, const double *h0,
                     const double *c0, double *y, double *h_n, double *c_n, double *gates,
                     double *c, void *workspace, int num_threads);

/* Bytes of scratch lstm_backward_X needs with up to num_threads threads for T steps
 * of N rows in all (dgates [N,4H] with padded rows, with a projection also
 * dh [N,P] and m [N,H], plus GEMM packing buffers). */
size_t lstm_backward_workspace_size_f32(int64_t T, int64_t N, int64_t B, int64_t I, int64_t H,
                                        int64_t P, int num_threads);
size_t lstm_backward_workspace_size_f64(int64_t T, int64_t N, int64_t B, int64_t I, int64_t H,
                                        int64_t P, int num_threads);

/* Backward pass (BPTT through the whole sequence).
 *   packed, batch_sizes, x, h0, c0   as given to lstm_forward_X         in
 *   y, gates, c          as returned by lstm_forward_X                  in
 *   dy         [N,R]     dLoss/dy                                       in
 *   dh_n [B,R], dc_n [B,H]  dLoss/dh_n, dLoss/dc_n                      in
 *   dx         [N,I], or NULL: not computed (the input needs no gradient) out
 *   dw_ih      [4H,I]                                                   out
 *   dw_hh      [4H,R]                                                   out
 *   db         [4H]      gradient of b_ih (= of b_hh)                   out
 *   dh0 [B,R], dc0 [B,H]                                                out
 *   dw_hr      [P,H]     projection only (P > 0), else ignored          out
 *   workspace  lstm_backward_workspace_size_X bytes                     scratch
 *   num_threads threads to use (>= 1)
 * No output may alias an input here. */
int lstm_backward_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, const void *packed,
                      const int64_t *batch_sizes, const float *x, const float *h0,
                      const float *c0, const float *y, const float *gates, const float *c,
                      const float *dy, const float *dh_n, const float *dc_n, float *dx,
                      float *dw_ih, float *dw_hh, float *db, float *dh0, float *dc0,
                      float *dw_hr, void *workspace, int num_threads);
int lstm_backward_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, const void *packed,
                      const int64_t *batch_sizes, const double *x, const double *h0,
                      const double *c0, const double *y, const double *gates, const double *c,
                      const double *dy, const double *dh_n, const double *dc_n, double *dx,
                      double *dw_ih, double *dw_hh, double *db, double *dh0, double *dc0,
                      double *dw_hr, void *workspace, int num_threads);

/* The layer norm's saved columns (lstm_variant.ln_stats): zhat_x from column LSTM_LN_ZHAT,
 * zhat_h from LSTM_LN_ZHAT_H(H) (4H rounded up to 16 columns after it), LSTM_LN_STATS_COLS(H)
 * columns in all: each part of a row starts on a 64-byte line when the row does (float32 and
 * float64; a multiple of 16 columns), so the kernel's vector loads of it never straddle two
 * lines. */
#define LSTM_LN_ZHAT 16
#define LSTM_LN_ZHAT_H(H) (LSTM_LN_ZHAT + (4 * (H) + 15) / 16 * 16)
#define LSTM_LN_STATS_COLS(H) (2 * LSTM_LN_ZHAT_H(H) - LSTM_LN_ZHAT)

/* ---- LSTM variants (issue 15) ---------------------------------------------
 * lstm_forward_ex_X / lstm_backward_ex_X are lstm_forward_X / lstm_backward_X
 * with variants of the cell, any combination (NULL or all off: the plain LSTM,
 * the same bits as lstm_forward_X). With z_* the gate's products plus bias:
 *   i = sigmoid(clip(z_i + w_ci*c_{t-1}))   f = sigmoid(clip(z_f + w_cf*c_{t-1}))
 *   g = tanh(clip(z_g))                     c_t = cell_clip(f*c_{t-1} + i*g)
 *   o = sigmoid(clip(z_o + w_co*c_t))       h = o*tanh(c_t)
 * clip(z) clamps to [-clip, clip] (ONNX LSTM's clip), cell_clip(z) to
 * [-cell_clip, cell_clip] (TensorFlow's cell_clip; the clamped c_t is the state
 * carried and saved). cifg: f = 1 - i instead (w_cf unused). Backward: zero
 * gradient where clamped; a gate is taken
 * as clamped where its saved activation is at or beyond act(+-clip) (its
 * pre-activation is not saved), c_t where |f*c_{t-1} + i*g| > cell_clip. */
typedef struct {
    const void *peephole;  /* [3,H] rows w_ci, w_cf, w_co (the call's element type), or NULL */
    double clip;           /* > 0: gate pre-activation clip; 0: off */
    double cell_clip;      /* > 0: cell-state clip; 0: off */
    int cifg;              /* 1: coupled input and forget gates, f = 1 - i (ONNX input_forget,
                              as ONNX Runtime computes it); the f rows of the weights are
                              not used (pass zeros) and get zero gradients */
    /* Recurrent (variational) dropout, per call (set it for the forward and the matching
     * backward; Gal & Ghahramani 2016, Keras' recurrent_dropout): the recurrent product
     * uses h_{t-1} * rdrop instead of h_{t-1} at every step; h_t itself (y, h_n) is not
     * masked. Backward: dw_hh from the masked h_{t-1}, the gradient reaching h_{t-1}
     * (and dh0) through the product multiplied by the mask. */
    const void *rdrop;     /* [B,R] the mask, already scaled (0 or 1/(1-p)), or NULL: off */
    /* Zoneout on h, per call (haste's ZoneoutLSTM, lib/lstm_forward_gpu.cu.cc): with
     * h~_t = o*tanh(c_t), h_t = h_{t-1} + zoneout*(h~_t - h_{t-1}), computed as
     * (h~_t - h_{t-1})*zoneout + h_{t-1} (training: a 0/1 mask, 1 keeps the new value;
     * eval: 1 - zoneout probability everywhere). No projection (P = 0, else LSTM_ERR_ARG).
     * Backward: the gradient dh_t reaching h_t goes to the cell as zoneout*dh_t and
     * (1 - zoneout)*dh_t to h_{t-1}. */
    const void *zoneout;   /* [N,H] the mask, rows as x's, or NULL: off */
    void *var_ws;          /* with rdrop or zoneout: scratch of lstm_variant_workspace_size_X
                              bytes (the masked h_{t-1}: forward a copy per thread, backward
                              every row; zoneout's running gradient), any alignment */
    /* bfloat16 training (backward, _f32 only; see lstm_forward_bf16_ex): 1 rounds every
     * gate gradient to bfloat16 (nearest even, as lstm_pack_bf16 rounds) before it enters
     * a product (dh_{t-1}, dx, dw_ih, dw_hh); db sums the unrounded ones. */
    int bf16_grads;
    /* With bf16_grads, scratch of lstm_bf16_grads_workspace_size bytes (any alignment) for
     * the products dh_{t-1}, the in-step dx_t, dw_ih and dw_hh with vdpbf16ps (pairs along
     * 4H, or along the rows for dw), used where the CPU and the
     * rates favour it as for the forward (lstm_bf16_native; mode as lstm_set_bf16_mode);
     * NULL: always float32 FMAs. The operands are the same bf16 values either way; only
     * the order of the sums (pairs, the odd element first) and VDPBF16PS's flush of
     * denormal results differ (the bound: backends/reference.py, "bfloat16 training"). */
    void *bf16_ws;
    /* With bf16_grads (backward): the forward's saved gates [N,4H] and c [N,H] as
     * lstm_forward_bf16_ex stores them (bfloat16 bit patterns, 2 bytes each), both given
     * or both NULL; given, the call's gates and c are not read (pass NULL) and the step's
     * cell widens these (exact), so the results are the same bits as with float32 words
     * holding the same values. Only with P = 0 and no other variant (LSTM_ERR_ARG). */
    const uint16_t *bf16_gates;
    const uint16_t *bf16_c;
    /* Layer-normalized LSTM (haste's LayerNormLSTM; equations in backends/reference.py):
     * LN over the 4H values of x.w_ih^T and, apart, of h.w_hh^T (gains g_ih, g_hh, no
     * bias), the bias b added after the input's LN, and LN of c_t (gain g_c, bias b_c)
     * before the output tanh. No projection, no cifg (LSTM_ERR_ARG). The calls' own
     * workspaces are sized as for the plain LSTM (lstm_forward_workspace_size_X with any
     * save, lstm_backward_workspace_size_X); the layer norm's scratch is ln_ws. The
     * backward's parameter sums (ln_grad, db, dpeephole) run on one thread in a fixed
     * row order: the same bits for any num_threads. Code: lnorm.template.c. */
    const void *layer_norm; /* [10H] g_ih (4H), g_hh (4H), g_c (H), b_c (H), or NULL: off */
    void *ln_stats;         /* [N, ln_stats_cols] the rows' statistics (mean, rstd of the
                               input product, of the recurrent product, of c_t) in columns
                               0..5, then with LSTM_LN_STATS_COLS(H) columns the normalized
                               products (4H each) from columns LSTM_LN_ZHAT and
                               LSTM_LN_ZHAT_H(H) (the padding between is never written):
                               written by the forward, read by the backward (which needs
                               LSTM_LN_STATS_COLS(H)); a forward saving nothing may take 6 */
    int64_t ln_stats_cols;
    void *ln_grad;          /* [10H] backward: the gradients of layer_norm, laid out as it */
    void *ln_ws;            /* scratch of lstm_ln_workspace_size_X bytes, any alignment */
} lstm_variant;

size_t lstm_bf16_grads_workspace_size(int64_t N, int64_t B, int64_t I, int64_t H,
                                      int num_threads);

/* Bytes of variant.ln_ws for a layer-normalized forward (backward = 0; save as the
 * forward's gates and c are given) or backward (backward = 1) of N rows. */
size_t lstm_ln_workspace_size_f32(int64_t N, int64_t B, int64_t H, int save, int backward);
size_t lstm_ln_workspace_size_f64(int64_t N, int64_t B, int64_t H, int save, int backward);

/* A Bernoulli mask of n elements (dropout, recurrent dropout, zoneout): out[32 g + 8 w + l]
 * = on where word w of Philox4x32-10 (Random123's philox4x32_R with R = 10) of the counter
 * 8 g + l (a 64-bit number: low 32 bits, high 32 bits, 0, 0) and the key (k0, k1) is
 * >= t, else 0. t = ceil(p * 2^32) drops with probability p (t = 2^32: every element 0).
 * The same masks bit for bit as lstm_fast/_philox.py's NumPy generator. Code:
 * mask.template.c. Returns LSTM_OK, or LSTM_ERR_ARG for n < 0. */
int lstm_bernoulli_mask_f32(int64_t n, uint32_t k0, uint32_t k1, uint64_t t, float on,
                            float *out);
int lstm_bernoulli_mask_f64(int64_t n, uint32_t k0, uint32_t k1, uint64_t t, double on,
                            double *out);

/* Bytes of variant.var_ws for a forward (backward = 0) with up to num_threads threads
 * or a backward (backward = 1) of N rows. */
size_t lstm_variant_workspace_size_f32(int64_t N, int64_t B, int64_t R, int num_threads,
                                     int backward);
size_t lstm_variant_workspace_size_f64(int64_t N, int64_t B, int64_t R, int num_threads,
                                     int backward);

/* As lstm_forward_X, plus variant (NULL: plain). LSTM_ERR_ARG for a negative or
 * NaN clip or cell_clip. */
int lstm_forward_ex_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                        const void *packed, const int64_t *batch_sizes, const float *x,
                        const float *h0, const float *c0, float *y, float *h_n, float *c_n,
                        float *gates, float *c, void *workspace, int num_threads,
                        const lstm_variant *variant);
int lstm_forward_ex_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                        const void *packed, const int64_t *batch_sizes, const double *x,
                        const double *h0, const double *c0, double *y, double *h_n,
                        double *c_n, double *gates, double *c, void *workspace,
                        int num_threads, const lstm_variant *variant);

/* As lstm_backward_X, with the variant of the forward call, plus
 *   dpeephole  [3,H]  gradients of w_ci, w_cf, w_co (required with peepholes,
 *                     else ignored)                                        out */
int lstm_backward_ex_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                         const void *packed, const int64_t *batch_sizes, const float *x,
                         const float *h0, const float *c0, const float *y,
                         const float *gates, const float *c, const float *dy,
                         const float *dh_n, const float *dc_n, float *dx, float *dw_ih,
                         float *dw_hh, float *db, float *dh0, float *dc0, float *dw_hr,
                         void *workspace, int num_threads, const lstm_variant *variant,
                         float *dpeephole);
int lstm_backward_ex_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                         const void *packed, const int64_t *batch_sizes, const double *x,
                         const double *h0, const double *c0, const double *y,
                         const double *gates, const double *c, const double *dy,
                         const double *dh_n, const double *dc_n, double *dx, double *dw_ih,
                         double *dw_hh, double *db, double *dh0, double *dc0, double *dw_hr,
                         void *workspace, int num_threads, const lstm_variant *variant,
                         double *dpeephole);
/* ---- bfloat16 weights, float32 everything else (inference) ----------------
 * The same layer with w_ih and w_hh rounded to bfloat16 at pack time and x, h
 * rounded to bfloat16 for the products; products accumulated in float32 in
 * VDPBF16PS's order and rounding; bias, cell state, activations and outputs
 * float32. The exact arithmetic is at the top of bf16.template.c. No projection
 * (P = 0), nothing saved for backward. The products give the same bits at every
 * SIMD level and whether vdpbf16ps is used or emulated; the outputs too, except
 * for the last bits of the activations, which differ between levels as in _f32.
 * Contracts as lstm_packed_size_f32, lstm_pack_f32 and lstm_forward_f32 with
 * P = 0, gates = c = NULL. The pack holds the bf16 weights (2 bytes each) and, at the
 * AVX2 and AVX-512 levels, a float32-widened copy for batches of several row tiles
 * (see bf16.template.c): 6 bytes per weight in all there. */
size_t lstm_packed_size_bf16(int64_t I, int64_t H);
int lstm_pack_bf16(int64_t I, int64_t H, const float *w_ih, const float *w_hh, const float *b,
                   void *packed);
size_t lstm_forward_workspace_size_bf16(int64_t T, int64_t B, int64_t I, int64_t H,
                                        int num_threads);
int lstm_forward_bf16(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                      const int64_t *batch_sizes, const float *x, const float *h0,
                      const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                      int num_threads);

/* bfloat16 training (mixed precision; the arithmetic in backends/reference.py, "bfloat16
 * training"): lstm_forward_bf16 plus gates [N,4H] and c [N,H] (both given, or both NULL:
 * lstm_forward_bf16), the activated gates and cell states for backward rounded to
 * bfloat16 (nearest even, as lstm_pack_bf16) and stored as their bit patterns: 2 bytes
 * each, half the float32 training's saved bytes. The outputs' bits are
 * lstm_forward_bf16's. The
 * backward is lstm_backward_ex_f32 on a float32 pack of the bf16-rounded weights, with
 * x, h0 and y rounded to bfloat16, gates = c = NULL and these arrays as
 * variant.bf16_gates and variant.bf16_c, and variant.bf16_grads = 1 (and
 * variant.bf16_ws: dh_{t-1}, the in-step dx, dw_ih and dw_hh with bf16 products where
 * lstm_bf16_path chooses them for B rows: 2 on AMX tiles, 1 with vdpbf16ps). */
int lstm_forward_bf16_ex(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                         const int64_t *batch_sizes, const float *x, const float *h0,
                         const float *c0, float *y, float *h_n, float *c_n, uint16_t *gates,
                         uint16_t *c, void *workspace, int num_threads);

/* Whether the backward (lstm_backward_*) runs its whole-sequence products over the
 * rows of the gate gradients (dw_ih and dw_hh, and dx where the steps do not make it)
 * interleaved with the steps, each block of 256 rows as soon as the steps have written
 * it, while those rows are still in the L2, rather than after the loop. Mode: -1
 * automatic (the default: where the sequence's gate gradients exceed half the running
 * CPU's L2 and a block of them fits in half of it; plain LSTM without a projection,
 * float32 words, no recurrent dropout), 0 never, 1 wherever the call allows it. The
 * same bits in every mode (for tests and benchmarks). LSTM_ERR_ARG for another mode. */
int lstm_set_bwd_interleave(int mode);
int lstm_get_bwd_interleave(void);

/* Whether the steps' hidden blocks, where the threads split them, are claimed at run time
 * (each thread its own part first, then what is left of the others', in chunks), so that a
 * thread slowed by another process or by the hypervisor does less of each step instead of
 * holding the others at the step's barrier. Mode: -1 automatic (the default: where a step
 * has B >= 8 rows and a chunk's products are >= 128K FLOPs), 0 never (each thread its own
 * part), 1 wherever the threads split the units, 2 as 1 with every thread claiming from the
 * others' parts first (tests: every block computed away from its part). The same bits in
 * every mode (for tests and benchmarks). LSTM_ERR_ARG for another mode. */
int lstm_set_claims(int mode);
int lstm_get_claims(void);

/* How lstm_forward_bf16 computes its products: 1 with vdpbf16ps (AVX512_BF16), 0
 * emulated with float32 FMAs (same bits). Mode: -1 automatic (the default: native
 * where the CPU has it and a pack of the AVX-512 level, per call by B and the CPU's
 * measured rates: lstm_bf16_native_rule),
 * 0 always emulated, 1 native wherever possible. lstm_set_bf16_mode returns
 * LSTM_ERR_SIMD for 1 on a CPU without AVX512_BF16. */
int lstm_set_bf16_mode(int mode);
int lstm_get_bf16_mode(void);
int lstm_bf16_native(int64_t B, int64_t I, int64_t H);   /* what a call of this shape uses */
/* AMX (tdpbf16ps) for the bf16 forwards (lstm_forward_bf16, _ex) and bfloat16 training's
 * backward products (lstm_backward_ex_f32 with variant.bf16_grads), at the AVX-512 level:
 * -1 automatic (the default: at every B, unless lstm_set_bf16_mode forced a path), 1
 * always (LSTM_ERR_ARG where the CPU or the OS lacks AMX-BF16), 0 never. Its sums differ
 * from the other paths' in the last bits (bf16.template.c). lstm_bf16_path: what a call
 * of B rows uses at the level in force: 2 AMX, 1 vdpbf16ps, 0 the emulation. */
int lstm_set_bf16_amx(int mode);
int lstm_get_bf16_amx(void);
int lstm_bf16_path(int64_t B);
/* The automatic mode's rule, as a function of the per-core rates (GFLOP/s) of the fp32
 * FMA and of vdpbf16ps (0: the CPU lacks it) and the rows B: native at B = 1, and at
 * every B where the bf16 dot runs at >= 1.5x the fp32 FMA's FLOP rate. */
int lstm_bf16_native_rule(double fp32_rate, double bf16_rate, int64_t B);
/* The running CPU's measured per-core instruction rates (cpu.h, lstm_cpu_rates_get):
 * fp32 FMA and bf16 dot in GFLOP/s, int8 dot (vpdpbusd) in GOP/s, 0 where the CPU lacks
 * the instruction; the vector widths measured (512, 256, 0) and the seconds it took.
 * Measured once per process, at the first call of this or of an automatic-mode bf16
 * forward with B > 1. */
int lstm_instruction_rates(double *fp32_fma, double *bf16_dot, double *int8_dot,
                           int *fp32_bits, int *int8_bits, double *seconds);
/* The AMX tiles' per-core rates (tile-only loops, measured at the first call, ~1 ms):
 * tdpbf16ps in GFLOP/s and tdpbusd in GOP/s, 0 where the CPU or the OS lacks AMX-BF16 /
 * AMX-INT8; the seconds it took. */
int lstm_amx_instruction_rates(double *bf16, double *int8, double *seconds);

/* ---- int8 weights, float32 everything else (inference) --------------------
 * The same layer with w_ih and w_hh quantized to int8 at pack time, a symmetric
 * float32 scale per gate row of each (max |w| / 127); x and h stay float32: the
 * weights are widened back to float32 in registers, each row's sums over x and over h
 * (float32 FMAs in k order) are scaled by their row's scales and added; bias, cell
 * state, activations and outputs float32. The exact arithmetic is at the top of
 * int8.template.c. No projection (P = 0), nothing saved for backward. The products
 * give the same bits at every SIMD level; the outputs too, except for the last bits of
 * the activations, which differ between levels as in _f32. Contracts as
 * lstm_packed_size_f32, lstm_pack_f32 and lstm_forward_f32 with P = 0, gates = c =
 * NULL. The pack holds the int8 weights (1 byte each) and, at the AVX2 and AVX-512
 * levels, a float32 copy for batches of several row tiles: 5 bytes per weight there. */
size_t lstm_packed_size_i8(int64_t I, int64_t H);
int lstm_pack_i8(int64_t I, int64_t H, const float *w_ih, const float *w_hh, const float *b,
                 void *packed);
size_t lstm_forward_workspace_size_i8(int64_t T, int64_t B, int64_t I, int64_t H,
                                      int num_threads);
int lstm_forward_i8(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                    const int64_t *batch_sizes, const float *x, const float *h0,
                    const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                    int num_threads);

/* ---- int8 weights, x and h quantized per step (inference) -------------------
 * As _i8, but x_t and h_{t-1} are quantized too, per row per step (a symmetric scale:
 * max |v| / 127, stored with a +128 offset as u8), and the products are int32 sums
 * (vpdpbusd: AVX512_VNNI, AVX-VNNI, or an exact emulation; the same sums everywhere),
 * dequantized by the row's scale times the weight row's scale; bias, cell state,
 * activations and outputs float32. The exact arithmetic is at the top of
 * int8d.template.c. The pack holds the int8 weights (1 byte each; LSTM_ERR_ARG for I
 * or H above 66311: the int32 sums could overflow). The products give the same bits at
 * every SIMD level, native or emulated; the outputs too, except for the last bits of
 * the activations, which differ between levels as in _f32. */
size_t lstm_packed_size_i8d(int64_t I, int64_t H);
int lstm_pack_i8d(int64_t I, int64_t H, const float *w_ih, const float *w_hh, const float *b,
                  void *packed);
size_t lstm_forward_workspace_size_i8d(int64_t T, int64_t B, int64_t I, int64_t H,
                                       int num_threads);
int lstm_forward_i8d(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                     const int64_t *batch_sizes, const float *x, const float *h0,
                     const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                     int num_threads);
/* Mode: -1 automatic (the default: AMX's tdpbusd where the CPU has AMX-INT8 and the OS
 * grants the tile state, at the AVX-512 level; else vpdpbusd where the CPU has it), 0
 * always emulated, 1 vpdpbusd (never AMX), 2 AMX (LSTM_ERR_ARG if it cannot be used here;
 * at the AVX2 and portable levels as 1). The same int32 sums every way.
 * lstm_i8d_native: 1 if a call at the SIMD level in force uses vpdpbusd or AMX;
 * lstm_i8d_path: what a call with B rows uses: 0 the emulation, 1 vpdpbusd, 2 AMX. */
int lstm_set_i8d_mode(int mode);
int lstm_get_i8d_mode(void);
int lstm_i8d_native(void);
int lstm_i8d_path(int64_t B);
/* For tests: z [B,4H], the products of one step (before the bias and the cell) of rows
 * x [B,I] and h [B,H] as lstm_forward_i8d computes them; workspace of
 * lstm_forward_workspace_size_i8d(1, B, I, H, 1) bytes. */
int lstm_products_i8d(int64_t B, int64_t I, int64_t H, const void *packed, const float *x,
                      const float *h, float *z, void *workspace);

#ifdef __cplusplus
}
#endif
#endif
