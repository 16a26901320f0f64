/* The element-wise ends of the int8 (W8A8) linear in one pass each, instead of ~10 PyTorch ops per layer:
 *
 * yaie_quantize_rows:   x [M, K] float32 -> q [M, K] int8, scale [M] float32, per row (token):
 *                       scale = max(max|x|, 1e-12) / 127, q = round-half-even(x * (1 / scale)); with `flip` = 0x80 the
 *                       codes are stored as q + 128 in uint8 (what csrc/int8_gemm.c reads), with 0 as int8.
 * yaie_norm_quantize_rows: the same after an RMSNorm, y = weight * (x * 1 / sqrt(mean(x^2) + eps)), for a linear
 *                       whose only input is that norm's output (the norm is not written out).
 * yaie_dequantize_rows: acc [M, N] int32 (torch._int_mm's output) -> y [M, N] float32,
 *                       y = acc * x_scale[m] * w_scale[n] (+ bias[n]).
 *
 * Same arithmetic as the PyTorch expressions they replace (runner/quantization.py), rows split over OpenMP. */
#include <math.h>
#include <stdint.h>
#include <stddef.h>

/* The kernels are built with -ffast-math; here IEEE arithmetic in a fixed order is the point: amax / 127, its
 * reciprocal, and x times that, each rounded as PyTorch rounds them (a multiplication by the reciprocal, not a
 * division per element: a vector division costs ~1 cycle per element, a fifth of a batch-32 int8 step's
 * element-wise time). Finite-math and no-trapping stay on so fmaxf and nearbyintf become vector max and round
 * instructions instead of libm calls per element. */
#pragma GCC optimize("no-fast-math", "finite-math-only", "no-trapping-math", "no-signed-zeros")

void yaie_quantize_rows(const float *x, uint8_t *q, float *scale, int64_t m, int64_t k, int flip, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        float amax = 0.f;
        for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(row[i]));
        const float s = fmaxf(amax, 1e-12f) / 127.f, inv = 1.f / s;
        scale[r] = s;
        uint8_t *out = q + r * k;
        for (int64_t i = 0; i < k; i++) out[i] = (uint8_t)(int8_t)nearbyintf(row[i] * inv) ^ (uint8_t)flip;
    }
}

/* mean(row^2) with eight running sums (a fixed order, so the compiler can still vectorise it exactly). */
static float mean_square(const float *row, int64_t k) {
    float sums[8] = {0.f};
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        for (int j = 0; j < 8; j++) sums[j] += row[i + j] * row[i + j];
    float total = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]));
    for (; i < k; i++) total += row[i] * row[i];
    return total / (float)k;
}

void yaie_norm_quantize_rows(const float *x, const float *weight, float eps, uint8_t *q, float *scale, int64_t m,
                             int64_t k, int flip, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        const float inv_rms = 1.f / sqrtf(mean_square(row, k) + eps);
        float amax = 0.f;
        for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(weight[i] * (row[i] * inv_rms)));
        const float s = fmaxf(amax, 1e-12f) / 127.f, inv = 1.f / s;
        scale[r] = s;
        uint8_t *out = q + r * k;
        for (int64_t i = 0; i < k; i++)
            out[i] = (uint8_t)(int8_t)nearbyintf(weight[i] * (row[i] * inv_rms) * inv) ^ (uint8_t)flip;
    }
}

void yaie_dequantize_rows(const int32_t *acc, const float *x_scale, const float *w_scale, const float *bias,
                          float *y, int64_t m, int64_t n, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t r = 0; r < m; r++) {
        const int32_t *in = acc + r * n;
        float *out = y + r * n;
        const float xs = x_scale[r];
        for (int64_t c = 0; c < n; c++) out[c] = (float)in[c] * xs * w_scale[c] + (bias ? bias[c] : 0.f);
    }
}
