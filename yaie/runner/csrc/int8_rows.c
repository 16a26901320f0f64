/* The element-wise ends of the int8 (W8A8) linear in one pass each, instead of ~10 PyTorch ops per layer:
 *
 * yaie_quantize_rows:   x [M, K] float32 -> q [M, K] int8, scale [M] float32, per row (token):
 *                       scale = max(max|x|, 1e-12) / 127, q = round-half-even(x / scale).
 * yaie_dequantize_rows: acc [M, N] int32 (torch._int_mm's output) -> y [M, N] float32,
 *                       y = acc * x_scale[m] * w_scale[n] (+ bias[n]).
 *
 * Same arithmetic as the PyTorch expressions they replace (runner/quantization.py), rows split over OpenMP. */
#include <math.h>
#include <stdint.h>
#include <stddef.h>

/* The kernels are built with -ffast-math; here exact IEEE division and rounding are the point (x / scale and
 * amax / 127 as PyTorch computes them, not multiplications by reciprocals). Finite-math and no-trapping stay on
 * so fmaxf and nearbyintf become vector max and round instructions instead of libm calls per element. */
#pragma GCC optimize("no-fast-math", "finite-math-only", "no-trapping-math", "no-signed-zeros")

void yaie_quantize_rows(const float *x, int8_t *q, float *scale, int64_t m, int64_t k, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        float amax = 0.f;
        for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(row[i]));
        const float s = fmaxf(amax, 1e-12f) / 127.f;
        scale[r] = s;
        int8_t *out = q + r * k;
        for (int64_t i = 0; i < k; i++) out[i] = (int8_t)nearbyintf(row[i] / s);
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
