# Declarations of the C kernel (csrc/). Only nogil extern declarations live here.
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

cdef extern from "cpu.h" nogil:
    ctypedef enum lstm_simd_level:
        LSTM_SIMD_PORTABLE
        LSTM_SIMD_AVX2
        LSTM_SIMD_AVX512
    lstm_simd_level lstm_cpu_simd_level()
    const char *lstm_simd_name(lstm_simd_level level)
    int lstm_cpu_has_avx512bf16()
    int lstm_cpu_has_avx512vnni()
    int lstm_cpu_has_avxvnni()
    int lstm_cpu_has_amx_int8()
    int lstm_cpu_has_amx_bf16()

cdef extern from "lstm.h" nogil:
    enum:
        LSTM_OK
        LSTM_ERR_ARG
        LSTM_ERR_PACKED
        LSTM_ERR_SIMD
        LSTM_MAX_THREADS
    int64_t LSTM_LN_STATS_COLS(int64_t H)
    int lstm_set_simd_level(int level)
    int lstm_get_simd_level()
    int lstm_pool_contended()
    const char *lstm_build_info()

    size_t lstm_packed_size_f32(int64_t I, int64_t H, int64_t P)
    int lstm_pack_f32(int64_t I, int64_t H, int64_t P, const float *w_ih, const float *w_hh,
                      const float *b, const float *w_hr, void *packed)
    size_t lstm_forward_workspace_size_f32(int64_t T, int64_t B, int64_t I, int64_t H,
                                           int64_t P, int num_threads, int save)
    int lstm_forward_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                         const void *packed, const int64_t *batch_sizes, const float *x,
                         const float *h0, const float *c0, float *y, float *h_n, float *c_n,
                         float *gates, float *c, void *workspace, int num_threads)
    size_t lstm_backward_workspace_size_f32(int64_t T, int64_t N, int64_t B, int64_t I,
                                            int64_t H, int64_t P, int num_threads)
    int lstm_backward_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                          const void *packed, const int64_t *batch_sizes, const float *x,
                          const float *h0, const float *c0, const float *y,
                          const float *gates, const float *c, const float *dy,
                          const float *dh_n, const float *dc_n, float *dx, float *dw_ih,
                          float *dw_hh, float *db, float *dh0, float *dc0, float *dw_hr,
                          void *workspace, int num_threads)

    size_t lstm_packed_size_f64(int64_t I, int64_t H, int64_t P)
    int lstm_pack_f64(int64_t I, int64_t H, int64_t P, const double *w_ih,
                      const double *w_hh, const double *b, const double *w_hr, void *packed)
    size_t lstm_forward_workspace_size_f64(int64_t T, int64_t B, int64_t I, int64_t H,
                                           int64_t P, int num_threads, int save)
    int lstm_forward_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                         const void *packed, const int64_t *batch_sizes, const double *x,
                         const double *h0, const double *c0, double *y, double *h_n,
                         double *c_n, double *gates, double *c, void *workspace, int num_threads)
    size_t lstm_backward_workspace_size_f64(int64_t T, int64_t N, int64_t B, int64_t I,
                                            int64_t H, int64_t P, int num_threads)
    int lstm_backward_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                          const void *packed, const int64_t *batch_sizes, const double *x,
                          const double *h0, const double *c0, const double *y,
                          const double *gates, const double *c, const double *dy,
                          const double *dh_n, const double *dc_n, double *dx, double *dw_ih,
                          double *dw_hh, double *db, double *dh0, double *dc0, double *dw_hr,
                          void *workspace, int num_threads)

    ctypedef struct lstm_variant:
        const void *peephole
        double clip
        double cell_clip
        int cifg
        const void *rdrop
        const void *zoneout
        void *var_ws
        int bf16_grads
        void *bf16_ws
        const uint16_t *bf16_gates
        const uint16_t *bf16_c
        const void *layer_norm
        void *ln_stats
        int64_t ln_stats_cols
        void *ln_grad
        void *ln_ws
    size_t lstm_ln_workspace_size_f32(int64_t N, int64_t B, int64_t H, int save, int backward)
    size_t lstm_ln_workspace_size_f64(int64_t N, int64_t B, int64_t H, int save, int backward)
    int lstm_bernoulli_mask_f32(int64_t n, uint32_t k0, uint32_t k1, uint64_t t, float on,
                                float *out)
    int lstm_bernoulli_mask_f64(int64_t n, uint32_t k0, uint32_t k1, uint64_t t, double on,
                                double *out)
    size_t lstm_variant_workspace_size_f32(int64_t N, int64_t B, int64_t R, int num_threads,
                                         int backward)
    size_t lstm_variant_workspace_size_f64(int64_t N, int64_t B, int64_t R, int num_threads,
                                         int backward)
    int lstm_forward_ex_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                            const void *packed, const int64_t *batch_sizes, const float *x,
                            const float *h0, const float *c0, float *y, float *h_n, float *c_n,
                            float *gates, float *c, void *workspace, int num_threads,
                            const lstm_variant *variant)
    int lstm_forward_ex_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                            const void *packed, const int64_t *batch_sizes, const double *x,
                            const double *h0, const double *c0, double *y, double *h_n,
                            double *c_n, double *gates, double *c, void *workspace,
                            int num_threads, const lstm_variant *variant)
    int lstm_backward_ex_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                             const void *packed, const int64_t *batch_sizes, const float *x,
                             const float *h0, const float *c0, const float *y,
                             const float *gates, const float *c, const float *dy,
                             const float *dh_n, const float *dc_n, float *dx, float *dw_ih,
                             float *dw_hh, float *db, float *dh0, float *dc0, float *dw_hr,
                             void *workspace, int num_threads, const lstm_variant *variant,
                             float *dpeephole)
    int lstm_backward_ex_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                             const void *packed, const int64_t *batch_sizes, const double *x,
                             const double *h0, const double *c0, const double *y,
                             const double *gates, const double *c, const double *dy,
                             const double *dh_n, const double *dc_n, double *dx,
                             double *dw_ih, double *dw_hh, double *db, double *dh0,
                             double *dc0, double *dw_hr, void *workspace, int num_threads,
                             const lstm_variant *variant, double *dpeephole)
    size_t lstm_packed_size_bf16(int64_t I, int64_t H)
    int lstm_pack_bf16(int64_t I, int64_t H, const float *w_ih, const float *w_hh,
                       const float *b, void *packed)
    size_t lstm_forward_workspace_size_bf16(int64_t T, int64_t B, int64_t I, int64_t H,
                                            int num_threads)
    int lstm_forward_bf16(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                          const int64_t *batch_sizes, const float *x, const float *h0,
                          const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                          int num_threads)
    int lstm_forward_bf16_ex(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                             const int64_t *batch_sizes, const float *x, const float *h0,
                             const float *c0, float *y, float *h_n, float *c_n,
                             uint16_t *gates, uint16_t *c, void *workspace, int num_threads)
    int lstm_set_bwd_interleave(int mode)
    int lstm_get_bwd_interleave()
    int lstm_set_claims(int mode)
    int lstm_get_claims()
    int lstm_set_bf16_mode(int mode)
    int lstm_get_bf16_mode()
    int lstm_bf16_native(int64_t B, int64_t I, int64_t H)
    int lstm_set_bf16_amx(int on)
    int lstm_get_bf16_amx()
    int lstm_bf16_path(int64_t B)
    int lstm_bf16_native_rule(double fp32_rate, double bf16_rate, int64_t B)
    size_t lstm_bf16_grads_workspace_size(int64_t N, int64_t B, int64_t I, int64_t H,
                                          int num_threads)
    int lstm_instruction_rates(double *fp32_fma, double *bf16_dot, double *int8_dot,
                               int *fp32_bits, int *int8_bits, double *seconds)
    int lstm_amx_instruction_rates(double *bf16, double *int8, double *seconds)
    size_t lstm_packed_size_i8(int64_t I, int64_t H)
    int lstm_pack_i8(int64_t I, int64_t H, const float *w_ih, const float *w_hh,
                     const float *b, void *packed)
    size_t lstm_forward_workspace_size_i8(int64_t T, int64_t B, int64_t I, int64_t H,
                                          int num_threads)
    int lstm_forward_i8(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                        const int64_t *batch_sizes, const float *x, const float *h0,
                        const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                        int num_threads)
    size_t lstm_packed_size_i8d(int64_t I, int64_t H)
    int lstm_pack_i8d(int64_t I, int64_t H, const float *w_ih, const float *w_hh,
                      const float *b, void *packed)
    size_t lstm_forward_workspace_size_i8d(int64_t T, int64_t B, int64_t I, int64_t H,
                                           int num_threads)
    int lstm_forward_i8d(int64_t T, int64_t B, int64_t I, int64_t H, const void *packed,
                         const int64_t *batch_sizes, const float *x, const float *h0,
                         const float *c0, float *y, float *h_n, float *c_n, void *workspace,
                         int num_threads)
    int lstm_set_i8d_mode(int mode)
    int lstm_get_i8d_mode()
    int lstm_i8d_native()
    int lstm_i8d_path(int64_t B)
    int lstm_products_i8d(int64_t B, int64_t I, int64_t H, const void *packed, const float *x,
                          const float *h, float *z, void *workspace)
