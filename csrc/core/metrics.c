/*
 * metrics.c -- per-image distances between an adversarial and a clean image (SPEC 1): RMSE,
 * l-inf, l2, mean l1, l0 share, PSNR and SSIM. Host memory, double accumulation.
 *
 * SSIM follows skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
 * use_sample_covariance=False, data_range=255, channel_axis=-1): a separable Gaussian of
 * radius 5 (truncate 3.5), statistics on the valid region only (5 pixels in from every edge,
 * where skimage crops), mean over that region, then over channels. Images smaller than 11x11
 * get NaN.
 */
#include <math.h>
#include <stdlib.h>

#include "fairattack.h"

#define SSIM_RADIUS 5
#define SSIM_TAPS (2 * SSIM_RADIUS + 1)

static void gaussian_taps(double *w) {
    double sum = 0.0;
    for (int t = 0; t < SSIM_TAPS; t++) {
        const double x = (double)(t - SSIM_RADIUS);
        w[t] = exp(-0.5 * x * x / (1.5 * 1.5));
        sum += w[t];
    }
    for (int t = 0; t < SSIM_TAPS; t++)
        w[t] /= sum;
}

/* SSIM of one channel `ch` of one HWC image pair; tmp holds 5 * h * (w - 10) doubles. */
static double ssim_channel(int64_t h, int64_t w, int64_t c, int64_t ch, const float *a,
                           const float *b, const double *taps, double *tmp) {
    const int64_t wv = w - 2 * SSIM_RADIUS, hv = h - 2 * SSIM_RADIUS, plane = h * wv;
    /* horizontal pass: mean of a, b, a^2, b^2, ab along each row */
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < wv; x++) {
            double s[5] = {0, 0, 0, 0, 0};
            for (int t = 0; t < SSIM_TAPS; t++) {
                const int64_t e = (y * w + x + t) * c + ch;
                const double p = a[e], q = b[e], k = taps[t];
                s[0] += k * p, s[1] += k * q, s[2] += k * p * p, s[3] += k * q * q;
                s[4] += k * p * q;
            }
            for (int q = 0; q < 5; q++)
                tmp[q * plane + y * wv + x] = s[q];
        }
    /* vertical pass and the SSIM map, averaged */
    const double c1 = (0.01 * 255) * (0.01 * 255), c2 = (0.03 * 255) * (0.03 * 255);
    double total = 0.0;
    for (int64_t y = 0; y < hv; y++)
        for (int64_t x = 0; x < wv; x++) {
            double s[5] = {0, 0, 0, 0, 0};
            for (int t = 0; t < SSIM_TAPS; t++)
                for (int q = 0; q < 5; q++)
                    s[q] += taps[t] * tmp[q * plane + (y + t) * wv + x];
            const double ux = s[0], uy = s[1];
            const double vx = s[2] - ux * ux, vy = s[3] - uy * uy, vxy = s[4] - ux * uy;
            total += ((2 * ux * uy + c1) * (2 * vxy + c2)) /
                     ((ux * ux + uy * uy + c1) * (vx + vy + c2));
        }
    return total / (double)(hv * wv);
}

fa_status fa_metrics_compute(int64_t n, int64_t h, int64_t w, int64_t c, const float *adv,
                             const float *clean, fa_metrics *out) {
    fa_clear_error();
    if (n < 0 || h <= 0 || w <= 0 || c <= 0)
        return fa_set_error(FA_ERR_ARGUMENT, "metrics: n=%lld h=%lld w=%lld c=%lld must be > 0",
                            (long long)n, (long long)h, (long long)w, (long long)c);
    if (out == NULL || (n > 0 && (adv == NULL || clean == NULL)))
        return fa_set_error(FA_ERR_ARGUMENT, "metrics: adv, clean and out must not be NULL");
    const int64_t dim = h * w * c;
    const int ssim_ok = h >= SSIM_TAPS && w >= SSIM_TAPS;
    double *tmp = NULL, taps[SSIM_TAPS];
    if (out->ssim && ssim_ok) {
        tmp = malloc((size_t)(5 * h * (w - 2 * SSIM_RADIUS)) * sizeof(double));
        if (tmp == NULL)
            return fa_set_error(FA_ERR_MEMORY, "metrics: out of host memory");
        gaussian_taps(taps);
    }
    for (int64_t i = 0; i < n; i++) {
        const float *a = adv + i * dim, *b = clean + i * dim;
        double sq = 0.0, ab = 0.0, mx = 0.0;
        int64_t changed = 0;
        for (int64_t j = 0; j < dim; j++) {
            const double e = (double)a[j] - (double)b[j], ae = fabs(e);
            sq += e * e, ab += ae;
            mx = ae > mx || isnan(ae) ? ae : mx;
            changed += ae > 0.5;
        }
        const double mse = sq / (double)dim;
        if (out->rmse) out->rmse[i] = (float)sqrt(mse);
        if (out->linf) out->linf[i] = (float)mx;
        if (out->l2) out->l2[i] = (float)sqrt(sq);
        if (out->l1) out->l1[i] = (float)(ab / (double)dim);
        if (out->l0) out->l0[i] = (float)((double)changed / (double)dim);
        if (out->psnr) out->psnr[i] = mse == 0.0 ? INFINITY : (float)(10.0 * log10(255.0 * 255.0 / mse));
        if (out->ssim) {
            double s = 0.0;
            for (int64_t ch = 0; ch < c && ssim_ok; ch++)
                s += ssim_channel(h, w, c, ch, a, b, taps, tmp);
            out->ssim[i] = ssim_ok ? (float)(s / (double)c) : NAN;
        }
    }
    free(tmp);
    return FA_OK;
}
