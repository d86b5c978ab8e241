/*
 * scale.c -- the host driver of SPEC 8's scale solver (fa_math.h's fa_scale_terms and
 * fa_scale_pass, which the CUDA kernel runs too): one image, host memory, sums in element order.
 * Below both of its users: the CPU backend's joint projection (backend_cpu.c) and the RMSE
 * matching (budget.c).
 */
#include "fa_backend.h"

double fa_solve_scale(int64_t dim, const float *t, const float *x0, float eps, double R,
                      double mu_max, double *s_out) {
    double mu = 0.0;
    for (int pass = 0; pass < FA_SCALE_PASSES; pass++) {
        double s_free = 0.0, s_sat = 0.0;
        for (int64_t j = 0; j < dim; j++)
            fa_scale_terms(mu, t[j], x0[j], eps, &s_sat, &s_free);
        if (!fa_scale_pass(&mu, s_free, s_sat, R, mu_max))
            break;
    }
    /* S at the final mu */
    double s = 0.0;
    for (int64_t j = 0; j < dim; j++) {
        int sat;
        const double v = fa_scaled(mu, t[j], fa_lower(x0[j], eps), fa_upper(x0[j], eps), &sat);
        s += v * v;
    }
    *s_out = s;
    return mu;
}
