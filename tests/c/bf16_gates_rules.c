/* The argument rule of lstm_backward_ex_f32 for bfloat16 training's saved arrays
 * (variant.bf16_gates / bf16_c, lstm.h): both or neither, only with bf16_grads, P = 0 and
 * no other variant; anything else is LSTM_ERR_ARG before any array is read. Prints one
 * line per case, "name status"; run by tests/test_c_variant_rules.py. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "lstm.h"

enum { T = 2, B = 2, I = 3, H = 4, N = T * B };

static float *filled(size_t n, float v)
{
    float *p = malloc(n * sizeof(float));
    for (size_t k = 0; k < n; k++)
        p[k] = v * (float)((k % 7) + 1);
    return p;
}

int main(void)
{
    float *w_ih = filled(4 * H * I, 0.01f), *w_hh = filled(4 * H * H, 0.02f);
    float *b = filled(4 * H, 0.0f), *x = filled(N * I, 0.1f), *h0 = filled(B * H, 0.0f);
    float *c0 = filled(B * H, 0.0f), *y = filled(N * H, 0.05f), *dy = filled(N * H, 0.3f);
    float *dx = filled(N * I, 0), *dw_ih = filled(4 * H * I, 0), *dw_hh = filled(4 * H * H, 0);
    float *db = filled(4 * H, 0), *dh0 = filled(B * H, 0), *dc0 = filled(B * H, 0);
    float *dh_n = filled(B * H, 0.2f), *dc_n = filled(B * H, 0.1f);
    float *peep = filled(3 * H, 0.1f), *mask = filled(N * H, 1.0f), *ln = filled(10 * H, 1.0f);
    uint16_t *g16 = calloc(N * 4 * H, 2), *c16 = calloc(N * H, 2);
    void *packed = malloc(lstm_packed_size_f32(I, H, 0) + 64);
    void *ws = malloc(lstm_backward_workspace_size_f32(T, N, B, I, H, 0, 1) + 64);
    void *vws = malloc(lstm_variant_workspace_size_f32(N, B, H, 1, 1) + 64);
    for (int k = 0; k < N * 4 * H; k++)
        g16[k] = 0x3f00;   /* 0.5 */
    for (int k = 0; k < N * H; k++)
        c16[k] = 0x3e80;   /* 0.25 */
    if (lstm_pack_f32(I, H, 0, w_ih, w_hh, b, NULL, packed) != LSTM_OK)
        return 1;
    struct {
        const char *name;
        lstm_variant v;
        int64_t P;
    } cases[] = {
        {"valid", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16}, 0},
        {"gates_without_c", {.bf16_grads = 1, .bf16_gates = g16}, 0},
        {"c_without_gates", {.bf16_grads = 1, .bf16_c = c16}, 0},
        {"without_bf16_grads", {.bf16_gates = g16, .bf16_c = c16}, 0},
        {"peephole", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16, .peephole = peep}, 0},
        {"clip", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16, .clip = 3.0}, 0},
        {"cell_clip", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16, .cell_clip = 3.0}, 0},
        {"cifg", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16, .cifg = 1}, 0},
        {"rdrop", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16, .rdrop = mask, .var_ws = vws}, 0},
        {"zoneout", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16, .zoneout = mask, .var_ws = vws}, 0},
        {"layer_norm", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16, .layer_norm = ln}, 0},
        {"projection", {.bf16_grads = 1, .bf16_gates = g16, .bf16_c = c16}, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        float *dw_hr = cases[k].P ? filled(cases[k].P * H, 0) : NULL;
        int s = lstm_backward_ex_f32(T, B, I, H, cases[k].P, packed, NULL, x, h0, c0, y, NULL, NULL,
                                     dy, dh_n, dc_n, dx, dw_ih, dw_hh, db, dh0, dc0, dw_hr, ws, 1,
                                     &cases[k].v, NULL);
        int finite = 1;
        if (s == LSTM_OK)
            for (int j = 0; j < 4 * H * H; j++)
                finite &= dw_hh[j] == dw_hh[j] && dw_hh[j] - dw_hh[j] == 0;
        printf("%s %d %d\n", cases[k].name, s, finite);
        free(dw_hr);
    }
    return 0;
}
