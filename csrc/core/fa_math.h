/*
 * fa_math.h -- internal: the per-value math of the attack, written once and compiled by both
 * backends (backend_cpu.c with the C compiler, csrc/cuda/kernels.cu with nvcc, where FA_HD
 * is __host__ __device__). The CPU tests therefore exercise the very formulas the GPU runs.
 *
 * Arithmetic order: every product goes through fa_mul(), which nvcc may not contract with a
 * neighbouring add (__fmul_rn); the C build uses -ffp-contract=off. With IEEE division and
 * square root on both sides, each value is the same bit for bit on CPU and GPU.
 *
 * Per-image sums (RMSE, |g| sums, the joint projection's and the matching's sums) are not in
 * this header: each backend sums in double, in an order that depends on dim only, never on the
 * batch.
 */
#ifndef FA_MATH_H
#define FA_MATH_H

#include <math.h>
#include <stdint.h>

#include "fairattack.h"

#if defined(__CUDACC__)
#define FA_HD __host__ __device__
#else
#define FA_HD
#endif

static inline FA_HD float fa_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

/* A double product nvcc may not fuse with a neighbouring add (the C build: -ffp-contract=off). */
static inline FA_HD double fa_dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

static inline FA_HD float fa_sign(float x) {
    return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
}

/* P of SPEC 1: the box [0, 255], then the l-inf ball around x0. NaN propagates (no fminf). */
static inline FA_HD float fa_project(float y, float x0, float eps) {
    y = y < 0.0f ? 0.0f : (y > 255.0f ? 255.0f : y);
    const float lo = x0 - eps, hi = x0 + eps;
    return y < lo ? lo : (y > hi ? hi : y);
}

/* The bounds of a perturbation value: delta in [fa_lower(x0, eps), fa_upper(x0, eps)] is the
 * l-inf ball intersected with the box (0 is always inside for x0 in [0, 255]). */
static inline FA_HD float fa_lower(float x0, float eps) {
    return -x0 > -eps ? -x0 : -eps;
}
static inline FA_HD float fa_upper(float x0, float eps) {
    return 255.0f - x0 < eps ? 255.0f - x0 : eps;
}

/* clip(mu * t, lo, hi) in double; *saturated tells whether a bound was hit. The joint
 * projection and the RMSE matching of SPEC 8 both scale a perturbation t by mu >= 0. */
static inline FA_HD double fa_scaled(double mu, float t, float lo, float hi, int *saturated) {
    const double v = mu * (double)t;
    *saturated = v > (double)hi || v < (double)lo;
    return v > (double)hi ? (double)hi : (v < (double)lo ? (double)lo : v);
}

/* One value of a step P(x + a * d) (SPEC 1) or, with mu >= 0, of the joint projection of SPEC 8
 * x0 + clip(mu * (x + a * d - x0), lo, hi) at the scale mu the row's solver found.
 * eps = INFINITY: x + a * d, no projection at all (NI-FGSM's look-ahead point; mu is ignored:
 * no backend solves a joint scale then). */
static inline FA_HD float fa_step_value(float x, float x0, float d, float a, float eps,
                                        double mu) {
    if (isinf(eps))
        return x + fa_mul(a, d);
    if (mu < 0.0)
        return fa_project(x + fa_mul(a, d), x0, eps);
    int sat;
    const float t = (x + fa_mul(a, d)) - x0;
    return x0 + (float)fa_scaled(mu, t, fa_lower(x0, eps), fa_upper(x0, eps), &sat);
}

/* ---------------------------------------------------------------- the joint scale (SPEC 8)
 *
 * The largest mu in [0, mu_max] with S(mu) = sum_j clip(mu * t_j, lo_j, hi_j)^2 <= R, by an
 * active-set iteration from mu = 0: with the values saturated at mu held fixed and the others
 * scaling freely, mu' = sqrt((R - S_sat) / S_free). Every iterate is feasible and the iterates
 * increase to the answer (there are finitely many partitions); at most FA_SCALE_PASSES passes.
 * A pass sums fa_scale_terms over the row at the current mu (in any order: the host driver,
 * scale.c, in element order, the CUDA kernel in one block per row), then fa_scale_pass decides.
 * When every value saturates below R, mu is the smallest scale that saturates them all. */
#define FA_SCALE_PASSES 100

static inline FA_HD void fa_scale_terms(double mu, float t, float x0, float eps, double *s_sat,
                                        double *s_free) {
    int sat;
    const double v = fa_scaled(mu, t, fa_lower(x0, eps), fa_upper(x0, eps), &sat);
    if (sat)
        *s_sat += fa_dmul(v, v);
    else
        *s_free += fa_dmul((double)t, (double)t);
}

/* 1: *mu moved up and another pass follows; 0: *mu is the answer. */
static inline FA_HD int fa_scale_pass(double *mu, double s_free, double s_sat, double R,
                                      double mu_max) {
    if (!(s_free > 0.0))
        return 0; /* every value saturated (or no perturbation): nothing scales any more */
    double next = sqrt((R > s_sat ? R - s_sat : 0.0) / s_free);
    if (next > mu_max)
        next = mu_max;
    if (!(next > *mu))
        return 0; /* converged: the partition no longer changes */
    *mu = next;
    return *mu != mu_max;
}

/* The counter-based uniform draw of random_start: a splitmix64 mix of (seed, index, j) mapped to
 * [-1, 1) -- identical on every backend and for every batching. */
static inline FA_HD float fa_uniform_pm1(uint64_t seed, int64_t index, int64_t j) {
    uint64_t z = seed ^ ((uint64_t)index * 0x9E3779B97F4A7C15ULL) ^
                 ((uint64_t)j * 0xD1B54A32D192ED03ULL);
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    /* 24 high bits -> [0, 1) exactly representable in float, then to [-1, 1) */
    return (float)(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

/* One value of the random start: P(x0 + eps * u). */
static inline FA_HD float fa_random_value(float x0, float eps, uint64_t seed, int64_t index,
                                          int64_t j) {
    return fa_project(x0 + fa_mul(eps, fa_uniform_pm1(seed, index, j)), x0, eps);
}

/* The constants of one step's update rule (fa_direction_consts_make fills them from a config). */
typedef struct fa_direction_consts {
    int optimizer;
    float mu, b1, b2, delta, lambda, decay, msvag_beta, msvag_rho, rmsprop_rho;
} fa_direction_consts;

/* rho_k of M-SVAG (SPEC 3) for the 0-based step k, in float as both backends have it. */
static inline float fa_msvag_rho(float b, int k) {
    const float bk = powf(b, (float)(k + 2)); /* computed on the host for both backends */
    return (1.0f - b) * (1.0f + bk) / ((1.0f + b) * (1.0f - bk));
}

static inline fa_direction_consts fa_direction_consts_make(const fa_config *cfg, int k) {
    fa_direction_consts c;
    c.optimizer = cfg->optimizer;
    c.mu = cfg->momentum;
    c.b1 = cfg->beta1;
    c.b2 = cfg->beta2;
    c.delta = cfg->delta;
    c.lambda = cfg->ladam_lambda;
    c.decay = cfg->adamw_decay;
    c.msvag_beta = cfg->msvag_beta;
    c.msvag_rho = cfg->optimizer == FA_OPT_MSVAG ? fa_msvag_rho(cfg->msvag_beta, k) : 0.0f;
    c.rmsprop_rho = cfg->rmsprop_rho;
    return c;
}

/*
 * One value of one step's direction (SPEC 3), with the state m, v updated in place.
 *   ge = g / gnorm + pcoef * (x - x0)      (gnorm: MI/NI's mean |g|, else 1; pcoef: the
 *                                           rmse_loss term, else 0 -- has_pcoef says which)
 *   LAdam: ge -= lambda * x
 * then the rule of c->optimizer (see fa_backend.h). `opt` is c->optimizer, passed separately
 * so that a caller looping with a constant optimizer lets the compiler drop the switch.
 */
static inline FA_HD float fa_direction_value(const fa_direction_consts *c, int opt, float g,
                                             float gnorm, int has_pcoef, float pcoef, float x,
                                             float x0, float *m, float *v) {
    float ge = g / gnorm;
    if (has_pcoef)
        ge = ge + fa_mul(pcoef, x - x0);
    if (opt == FA_OPT_LADAM)
        ge = ge - fa_mul(c->lambda, x);
    float mm, vv, t, d;
    switch (opt) {
    case FA_OPT_GD:
        return ge;
    case FA_OPT_MGD:
    case FA_OPT_NAGD:
        mm = fa_mul(c->mu, *m) + ge;
        *m = mm;
        return mm;
    case FA_OPT_ADAM:
    case FA_OPT_LADAM:
    case FA_OPT_ADAMW:
        mm = fa_mul(c->b1, *m) + fa_mul(1.0f - c->b1, ge);
        vv = fa_mul(c->b2, *v) + fa_mul(1.0f - c->b2, fa_mul(ge, ge));
        *m = mm, *v = vv;
        d = mm / (sqrtf(vv) + c->delta);
        return opt == FA_OPT_ADAMW ? d + fa_mul(c->decay, x) : d;
    case FA_OPT_ADABELIEF:
        mm = fa_mul(c->b1, *m) + fa_mul(1.0f - c->b1, ge);
        t = ge - mm;
        vv = fa_mul(c->b2, *v) + fa_mul(1.0f - c->b2, fa_mul(t, t));
        *m = mm, *v = vv;
        return mm / (sqrtf(vv) + c->delta);
    case FA_OPT_MSVAG: {
        mm = fa_mul(c->msvag_beta, *m) + fa_mul(1.0f - c->msvag_beta, ge);
        vv = fa_mul(c->msvag_beta, *v) + fa_mul(1.0f - c->msvag_beta, fa_mul(ge, ge));
        *m = mm, *v = vv;
        t = fa_mul(mm, mm);
        const float den =
            fa_mul(1.0f - fa_mul(2.0f, c->msvag_rho), t) + fa_mul(c->msvag_rho, vv);
        return den == 0.0f ? 0.0f : fa_mul(fa_mul(1.0f - c->msvag_rho, t) / den, mm);
    }
    case FA_OPT_RMSPROP:
        vv = fa_mul(c->rmsprop_rho, *v) + fa_mul(1.0f - c->rmsprop_rho, fa_mul(ge, ge));
        *v = vv;
        return ge / sqrtf(vv + c->delta);
    case FA_OPT_YOGI:
        mm = fa_mul(c->b1, *m) + fa_mul(1.0f - c->b1, ge);
        t = fa_mul(ge, ge);
        vv = *v;
        vv = vv - fa_mul(fa_mul(1.0f - c->b2, t), fa_sign(vv - t));
        *m = mm, *v = vv;
        return mm / (sqrtf(vv) + c->delta);
    case FA_OPT_FGSM:
    case FA_OPT_PGD:
        return fa_sign(ge);
    default: /* FA_OPT_MIFGSM, FA_OPT_NIFGSM, and VMI/VNI on g + v (callers check the range) */
        mm = fa_mul(c->mu, *m) + ge;
        *m = mm;
        return fa_sign(mm);
    }
}

/* ---------------------------------------------------------------- the step-size search
 *
 * SPEC 4's calibration and stop_rmse's shortened step solve f(s) = target for one image, f(s) =
 * RMSE(P(x + s * d) - ref) non-decreasing in s, by a bracketing search whose every trial is one
 * evaluation of f. The search itself is this per-image state machine, so that the host loop
 * (calibrate.c, one batched step_rmse per round) and the CUDA kernel (one block per image) run
 * the same decisions. Deterministic: no clock, a fixed budget of trials.
 */
#define FA_REL_TOL 1e-4    /* |f(s) - target| <= target * FA_REL_TOL ends the search      */
#define FA_MAX_DOUBLING 64 /* bracket growth (f flat: the target cannot be reached)          */
#define FA_MAX_BISECT 60

typedef struct fa_bracket {
    double lo, hi;   /* f(lo) <= target; hi < 0: no upper bracket yet                      */
    float fprev;     /* f at the last doubling (a flat f means the target is out of reach) */
    int grow_left, bisect_left;
} fa_bracket;

static inline FA_HD void fa_bracket_init(fa_bracket *b, double lo, double hi) {
    b->lo = lo, b->hi = hi, b->fprev = -1.0f;
    b->grow_left = FA_MAX_DOUBLING, b->bisect_left = FA_MAX_BISECT;
}

/* 1 with *s the next scale to try; 0 when the search is over (the answer is b->lo: the
 * bracket's lower end when the tolerance was not met, so it never passes the target by more
 * than the tolerance). */
static inline FA_HD int fa_bracket_next(fa_bracket *b, float *s) {
    if (b->hi < 0.0) {
        if (b->grow_left > 0) {
            *s = (float)(2.0 * b->lo);
            return 1;
        }
        b->hi = b->lo; /* never reached the target: the largest RMSE is reached at lo */
    }
    if (b->bisect_left > 0 && b->hi > b->lo && (float)b->hi != (float)b->lo) {
        *s = (float)(0.5 * (b->lo + b->hi));
        return 1;
    }
    return 0;
}

/* f = f(s) for the s fa_bracket_next gave. */
static inline FA_HD void fa_bracket_update(fa_bracket *b, float s, float f, float target,
                                           double tol) {
    if (b->hi < 0.0) { /* growing: double lo until f reaches the target or stops growing */
        b->grow_left--;
        if ((double)f >= (double)target - tol)
            b->hi = 2.0 * b->lo;
        else if (!(f > b->fprev))
            b->hi = b->lo; /* flat (or NaN): keep lo */
        else
            b->fprev = f, b->lo = 2.0 * b->lo;
        return;
    }
    b->bisect_left--;
    const double fi = (double)f;
    if (fabs(fi - (double)target) <= tol)
        b->lo = b->hi = (double)s; /* done */
    else if (fi < (double)target)
        b->lo = (double)s;
    else
        b->hi = (double)s;
}

#endif /* FA_MATH_H */
