/* The worked example (x = 1, 2, 3; one input, one hidden unit) through the C kernel:
 * pack the weights, run the forward pass, then the backward pass of L = h_3.
 * Build from the repository root (the kernel needs no Python):
 *   cc -O2 -std=c11 -Icsrc csrc/cpu.c csrc/pool.c csrc/lstm.c docs/examples/forward.c \
 *      -o forward -lpthread -ldl -lm && ./forward
 */
#include <stdio.h>
#include <stdlib.h>
#include "lstm.h"

#define CHECK(call) do { int s_ = (call); if (s_ != LSTM_OK) { \
    fprintf(stderr, "%s failed with status %d\n", #call, s_); return 1; } } while (0)

int main(void)
{
    enum { T = 3, B = 1, I = 1, H = 1, P = 0, G = 4 * H };
    const double x[T * B * I] = {1.0, 2.0, 3.0};
    const double w_ih[G * I] = {0.6, 0.5, 0.7, 0.8};   /* gate order i, f, g, o */
    const double w_hh[G * H] = {0.2, 0.1, 0.3, 0.4};
    const double b[G] = {0.0, 0.0, 0.0, 0.0};           /* b_ih + b_hh */
    double h0[B * H] = {0.0}, c0[B * H] = {0.0};
    double y[T * B * H], h_n[B * H], c_n[B * H], gates[T * B * G], c[T * B * H];
    const int threads = 1;

    void *packed = malloc(lstm_packed_size_f64(I, H, P));
    CHECK(lstm_pack_f64(I, H, P, w_ih, w_hh, b, NULL, packed));
    void *ws = malloc(lstm_forward_workspace_size_f64(T, B, I, H, P, threads, 1));
    /* batch_sizes NULL: B rows at every step (the padded layout) */
    CHECK(lstm_forward_f64(T, B, I, H, P, packed, NULL, x, h0, c0, y, h_n, c_n, gates, c,
                           ws, threads));
    for (int t = 0; t < T; t++)
        printf("step %d: c = %.6f, h = %.6f\n", t + 1, c[t], y[t]);

    /* gradients of L = h_3: dy = 0, dh_n = 1 */
    double dy[T * B * H] = {0.0}, dh_n[B * H] = {1.0}, dc_n[B * H] = {0.0};
    double dx[T * B * I], dw_ih[G * I], dw_hh[G * H], db[G], dh0[B * H], dc0[B * H];
    void *wsb = malloc(lstm_backward_workspace_size_f64(T, T * B, B, I, H, P, threads));
    CHECK(lstm_backward_f64(T, B, I, H, P, packed, NULL, x, h0, c0, y, gates, c, dy, dh_n,
                            dc_n, dx, dw_ih, dw_hh, db, dh0, dc0, NULL, wsb, threads));
    printf("dh_3/dw_ih = [%.6f, %.6f, %.6f, %.6f]\n", dw_ih[0], dw_ih[1], dw_ih[2], dw_ih[3]);
    printf("dh_3/dx    = [%.6f, %.6f, %.6f]\n", dx[0], dx[1], dx[2]);
    free(packed); free(ws); free(wsb);
    return 0;
}
