/* mask.template.c: Bernoulli masks (dropout, recurrent dropout, zoneout) from a
 * counter-based generator, Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC'11; the generator of Random123, cuRAND and PyTorch's
 * CUDA dropout). A mask's elements go in groups of 32: element 32 g + 8 w + l takes word w
 * of Philox4x32-10 applied to the counter 8 g + l (as 64 bits: low word, high word, 0, 0)
 * under the call's key (k0, k1) (so that 8 counters' words fill 8 consecutive elements:
 * one vector compare and store per word); it is `on` where that word is >= t, else 0.
 * The callers draw the key from their own seeded stream (lstm_fast/_philox.py, which also holds the same generator in
 * NumPy, bit for bit, for the builds and backends without this file). Why by hand: NumPy
 * draws a (T, B, H) float mask at ~2 ns per element from PCG64 doubles (72 us at
 * (32, 16, 64): 10 % of that shape's training step); no library offers a vectorised
 * Philox to C, and these loops compile to a few vector instructions per element. */

/* 8 counters per pass, each 32-bit word in a 64-bit lane (GCC vector extensions: the
 * products of two 32-bit numbers exact in the lane; the same code at every SIMD level) */
typedef uint64_t FN(philox_v) __attribute__((vector_size(64)));
typedef TYPE FN(mask_v) __attribute__((vector_size(8 * sizeof(TYPE))));

/* r = a * b of lanes holding 32-bit numbers (exact in 64 bits): one vpmuludq per 8 lanes
 * (AVX-512) or per 4 (AVX2) instead of the general 64-bit product. A macro: a function
 * taking or returning this 64-byte vector would change the ABI at the levels below
 * AVX-512 (-Wpsabi). */
#if ISA == 2
#define PHILOX_MUL(r, a, b) ((r) = (FN(philox_v))_mm512_mul_epu32((__m512i)(a), (__m512i)(b)))
#elif ISA == 1
#define PHILOX_MUL(r, a, b)                                                                  \
    do {                                                                                     \
        __m256i al_, ah_, bl_, bh_, rl_, rh_;                                                \
        memcpy(&al_, &(a), 32);                                                              \
        memcpy(&ah_, (const char *)&(a) + 32, 32);                                           \
        memcpy(&bl_, &(b), 32);                                                              \
        memcpy(&bh_, (const char *)&(b) + 32, 32);                                           \
        rl_ = _mm256_mul_epu32(al_, bl_);                                                    \
        rh_ = _mm256_mul_epu32(ah_, bh_);                                                    \
        memcpy(&(r), &rl_, 32);                                                              \
        memcpy((char *)&(r) + 32, &rh_, 32);                                                 \
    } while (0)
#else
#define PHILOX_MUL(r, a, b) ((r) = (a) * (b))
#endif

KERNEL int FN(bernoulli_mask)(int64_t n, uint32_t k0, uint32_t k1, uint64_t t, TYPE on,
                              TYPE *out)
{
    typedef FN(philox_v) pv;
    const pv low = (pv){0} + 0xFFFFFFFFu, m0 = (pv){0} + 0xD2511F53u, m1 = (pv){0} + 0xCD9E8D57u;
    const int64_t nblocks = (n + 3) / 4;
    for (int64_t b0 = 0; b0 < nblocks; b0 += 8) {
        pv ctr = (pv){0, 1, 2, 3, 4, 5, 6, 7} + (uint64_t)b0;
        pv c0 = ctr & low, c1 = ctr >> 32, c2 = (pv){0}, c3 = (pv){0};
        uint64_t a = k0, b = k1;
        for (int r = 0; r < 10; r++) {   /* ten rounds, the key bumped between them */
            if (r) {
                a = (a + 0x9E3779B9u) & 0xFFFFFFFFu;
                b = (b + 0xBB67AE85u) & 0xFFFFFFFFu;
            }
            pv p0, p1;
            PHILOX_MUL(p0, c0, m0);
            PHILOX_MUL(p1, c2, m1);
            c0 = (p1 >> 32) ^ c1 ^ a;
            c2 = (p0 >> 32) ^ c3 ^ b;
            c1 = p1 & low;
            c3 = p0 & low;
        }
        /* group g = b0 / 8 of 32 elements: element 8 w + l takes word w of counter b0 + l */
        const pv tv = (pv){0} + t;
        const pv keep[4] = {(pv)(c0 >= tv) & 1, (pv)(c1 >= tv) & 1, (pv)(c2 >= tv) & 1,
                            (pv)(c3 >= tv) & 1};
        int64_t e = 4 * b0, m = n - e < 32 ? n - e : 32;
        for (int w = 0; w < 4; w++) {
            FN(mask_v) v = __builtin_convertvector(keep[w], FN(mask_v)) * on;
            int64_t k = m - 8 * w < 8 ? m - 8 * w : 8;
            if (k == 8)
                memcpy(out + e + 8 * w, &v, sizeof v);
            else
                for (int64_t l = 0; l < k; l++)
                    out[e + 8 * w + l] = v[l];
        }
    }
    return LSTM_OK;
}
#undef PHILOX_MUL
