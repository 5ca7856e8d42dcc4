/* amx.template.c: what the two AMX paths share (int8d.template.c: tdpbusd on int8 weights
 * and quantized x and h; bf16.template.c: tdpbf16ps on bfloat16 weights and rounded x and
 * h): a thread's tile configuration and the products of one hidden block. Included by
 * lstm.template.c for TYPE float only, before both; code at the AVX-512 level only (the
 * callers check lstm_cpu_has_amx_int8 / _bf16 at run time).
 *
 * Tiles 0-3: C (the 4 gates), 4 and 5: A, 5-7: B; 16 rows x 64 bytes each. A: 16 rows of
 * the inputs, 16 groups of 4 bytes (4 u8, or a pair of bf16) per row, rows lda bytes apart;
 * B for one gate: 16 groups x the block's V = 16 units x 4 bytes, which is the packs' layout
 * with a row stride of 4 V 4 = 256 bytes; C: 16 rows x 16 int32 or float, stored into out
 * [rows][4][V] (the register tile's layout with nb = 1). K is taken in whole tiles: the
 * callers pad the rows of A with zeros to a multiple of 16 groups, so that the B rows
 * beyond the weights' own multiply zeros. */
#if ISA == 2
#define AMX_ATTR                                                                           \
    __attribute__((target("amx-tile,amx-int8,amx-bf16,avx512f,avx512dq,avx512vl,avx512bw,"  \
                          "avx2,fma")))
#define AMX_ROWS 64   /* rows per call of the callers' steps (the cell then takes FR at a time) */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} FN(amx_cfg);

/* this thread's tiles: 8 of 16 rows x 64 bytes (amx_end releases them) */
static AMX_ATTR void FN(amx_begin)(void)
{
    FN(amx_cfg) cfg __attribute__((aligned(64)));
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    /* ldtilecfg by hand: gcc 12's _tile_loadconfig tells the compiler it reads 8 bytes
     * only, and the stores of colsb and rows above were seen to be dropped */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

static AMX_ATTR void FN(amx_end)(void) { _tile_release(); }

#define AMX_DP(BF, C, A, B)                                                                \
    do {                                                                                   \
        if (BF)                                                                            \
            _tile_dpbf16ps(C, A, B);                                                       \
        else                                                                               \
            _tile_dpbusd(C, A, B);                                                         \
    } while (0)

/* out [mr][4][V] (4-byte elements) = mr rows of a (lda bytes apart, ng groups: a multiple
 * of 16) times one block's weights w (group 0), by tdpbf16ps (bf) or tdpbusd. Rows up to
 * 16 ceil(mr / 16) are read (those beyond mr only make rows of out beyond mr). The 4 C
 * tiles hold 1 row group x 4 gates, or 2 x 2 where 32 rows remain (each A and B tile used
 * twice; faster than 4 row groups x 1 gate, whose loads wait for the tile they overwrite:
 * int8, 1 thread, (T, B, I, H) = (128, 64, 512, 512), 29.6 ms against 31.0 on the Intel
 * Xeon family 6 model 167). */
static inline __attribute__((always_inline)) AMX_ATTR void
FN(amx_block)(const int bf, int mr, const uint8_t *a, int64_t lda, int64_t ng,
              const uint8_t *w, unsigned char *out)
{
    const int64_t ws = 4 * V * 4;   /* bytes from one group row of w (and row of out) on */
    for (; mr > 16; mr -= 32, a += 32 * lda, out += 32 * ws) {
        const uint8_t *a1 = a + 16 * lda;
        unsigned char *o1 = out + 16 * ws;
        for (int gp = 0; gp < 4; gp += 2) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int64_t g = 0; g < ng; g += 16) {
                const uint8_t *wg = w + g * ws + gp * V * 4;
                _tile_loadd(6, wg, ws);
                _tile_loadd(4, a + 4 * g, lda);
                AMX_DP(bf, 0, 4, 6);
                _tile_loadd(7, wg + V * 4, ws);
                AMX_DP(bf, 1, 4, 7);
                _tile_loadd(5, a1 + 4 * g, lda);
                AMX_DP(bf, 2, 5, 6);
                AMX_DP(bf, 3, 5, 7);
            }
            _tile_stored(0, out + gp * V * 4, ws);
            _tile_stored(1, out + (gp + 1) * V * 4, ws);
            _tile_stored(2, o1 + gp * V * 4, ws);
            _tile_stored(3, o1 + (gp + 1) * V * 4, ws);
        }
    }
    if (mr > 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t g = 0; g < ng; g += 16) {
            const uint8_t *wg = w + g * ws;
            _tile_loadd(4, a + 4 * g, lda);
            _tile_loadd(5, wg, ws);
            _tile_loadd(6, wg + V * 4, ws);
            AMX_DP(bf, 0, 4, 5);
            _tile_loadd(7, wg + 2 * V * 4, ws);
            AMX_DP(bf, 1, 4, 6);
            _tile_loadd(5, wg + 3 * V * 4, ws);
            AMX_DP(bf, 2, 4, 7);
            AMX_DP(bf, 3, 4, 5);
        }
        _tile_stored(0, out, ws);
        _tile_stored(1, out + V * 4, ws);
        _tile_stored(2, out + 2 * V * 4, ws);
        _tile_stored(3, out + 3 * V * 4, ws);
    }
}

/* int32 sums of u8 x s8 (int8d.template.c) */
static AMX_ATTR void FN(amx_block_i8)(int mr, const uint8_t *a, int64_t lda, int64_t ng,
                                      const int8_t *w, int32_t *out)
{
    FN(amx_block)(0, mr, a, lda, ng, (const uint8_t *)w, (unsigned char *)out);
}

/* float sums of bf16 x bf16 pairs (bf16.template.c) */
static AMX_ATTR void FN(amx_block_bf16)(int mr, const uint8_t *a, int64_t lda, int64_t np,
                                        const uint32_t *w, float *out)
{
    FN(amx_block)(1, mr, a, lda, np, (const uint8_t *)w, (unsigned char *)out);
}
#undef AMX_DP
#endif
