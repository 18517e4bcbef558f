# Vectorised row micro-kernels (C, _simd.h), shared by the kernels.
cdef extern from "_simd.h":
    double FL_ROUNDOFF          # the unit roundoff of double, 2^-53
    int fl_d_scaled_st_compact(int m, double *y, double a, double s,
                               int *idx, double *val) noexcept nogil
    int fl_s_scaled_st_compact(int m, float *y, float a, float s,
                               int *idx, float *val) noexcept nogil
    int fl_d_scaled_pst_compact(int m, double *y, double a, double s,
                                int *idx, double *val) noexcept nogil
    int fl_s_scaled_pst_compact(int m, float *y, float a, float s,
                                int *idx, float *val) noexcept nogil
    void fl_d_gather(int k, const int *idx, const double *coef, double alpha,
                     const double *A, int p, double *u) noexcept nogil
    void fl_s_gather(int k, const int *idx, const float *coef, float alpha,
                     const float *A, int p, float *u) noexcept nogil
    void fl_d_gather_set(int k, const int *idx, const double *coef, double alpha,
                         const double *A, int p, double *u) noexcept nogil
    void fl_s_gather_set(int k, const int *idx, const float *coef, float alpha,
                         const float *A, int p, float *u) noexcept nogil
    Py_ssize_t fl_d_st_step(Py_ssize_t n, double *z, const double *u, double a,
                            double s) noexcept nogil
    Py_ssize_t fl_s_st_step(Py_ssize_t n, float *z, const float *u, float a,
                            float s) noexcept nogil
    Py_ssize_t fl_d_pst_step(Py_ssize_t n, double *z, const double *u, double a,
                             double s) noexcept nogil
    Py_ssize_t fl_s_pst_step(Py_ssize_t n, float *z, const float *u, float a,
                             float s) noexcept nogil
    Py_ssize_t fl_d_st_step_sign(Py_ssize_t n, double *z, const double *u,
                                 double a, double s, signed char *sg) noexcept nogil
    Py_ssize_t fl_s_st_step_sign(Py_ssize_t n, float *z, const float *u,
                                 float a, float s, signed char *sg) noexcept nogil
    Py_ssize_t fl_d_pst_step_sign(Py_ssize_t n, double *z, const double *u,
                                  double a, double s, signed char *sg) noexcept nogil
    Py_ssize_t fl_s_pst_step_sign(Py_ssize_t n, float *z, const float *u,
                                  float a, float s, signed char *sg) noexcept nogil
    void fl_d_back_sign(int m, double *g, const double *v, const signed char *sg,
                        double a, double lmbd, double *acc) noexcept nogil
    void fl_s_back_sign(int m, float *g, const float *v, const signed char *sg,
                        float a, float lmbd, float *acc) noexcept nogil
    void fl_d_gap_sums(Py_ssize_t n, const double *x, const double *r, Py_ssize_t m,
                       const double *z, const double *g, int positive,
                       double *out) noexcept nogil
    void fl_s_gap_sums(Py_ssize_t n, const double *x, const double *r, Py_ssize_t m,
                       const float *z, const double *g, int positive,
                       double *out) noexcept nogil
    double fl_dot_dd(Py_ssize_t n, const double *x, const double *y) noexcept nogil
    double fl_dot_sd(Py_ssize_t n, const float *x, const double *y) noexcept nogil
    double fl_dot2(Py_ssize_t n, const double *x, const double *y,
                   double *bound) noexcept nogil
    double fl_certified_gmax(Py_ssize_t n, Py_ssize_t m, const double *r, const double *D,
                             const double *g, const double *dn, double e,
                             double lmbd, int positive) noexcept nogil
    double fl_d_corr_max(Py_ssize_t n, const double *c, int positive) noexcept nogil
    int fl_d_nonfinite(Py_ssize_t n, const double *z) noexcept nogil
    int fl_s_nonfinite(Py_ssize_t n, const float *z) noexcept nogil
    Py_ssize_t fl_d_count_nonzero(Py_ssize_t n, const double *z) noexcept nogil
    Py_ssize_t fl_s_count_nonzero(Py_ssize_t n, const float *z) noexcept nogil
    double fl_d_abs_sum(Py_ssize_t n, const double *z) noexcept nogil
    double fl_s_abs_sum(Py_ssize_t n, const float *z) noexcept nogil
    void fl_d_sub_axpy(int n, double a, const double *x, double *y) noexcept nogil
    void fl_lower_solve(int k, int ld, const double *L, const double *dinv,
                        double *v) noexcept nogil
    void fl_lower_t_solve(int k, int ld, const double *L, const double *dinv,
                          double *v) noexcept nogil
    void fl_cd_gap_sums(int w, const double *z, const double *g, const double *c,
                        int positive, double *out) noexcept nogil


# The sparse layers' gather-threshold-compact row through the kernel of an
# x86-64 level (_gather.h): call a level only where the CPU runs it
# (fl_gather_v3_runs: AVX2, fl_gather_v4_runs: AVX-512); the _default
# functions say whether the optimised build uses it unless told otherwise.
cdef extern from "_gather.h":
    enum:
        FL_GATHER_PORTABLE
        FL_GATHER_AVX2
        FL_GATHER_AVX512
    int fl_gather_v3_runs() noexcept nogil
    int fl_gather_v3_default() noexcept nogil
    int fl_gather_v4_runs() noexcept nogil
    int fl_gather_v4_default() noexcept nogil
    int fl_d_gather_row(int level, int positive, int k, const int *idx,
                        const double *coef, double alpha, double delta,
                        const double *A, int m, double *src, double *y, double a,
                        double s, int *oidx, double *oval) noexcept nogil
    int fl_s_gather_row(int level, int positive, int k, const int *idx,
                        const float *coef, float alpha, float delta,
                        const float *A, int m, float *src, float *y, float a,
                        float s, int *oidx, float *oval) noexcept nogil
