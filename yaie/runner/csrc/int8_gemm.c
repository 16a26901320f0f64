/* int8 x int8 -> float matmul for the W8A8 linears on CPUs with AVX-512 VNNI, the rescale fused in.
 *
 * y[m, n] (+)= (sum_k a[m, k] * w[n, k]) * a_scale[m] * w_scale[n] (+ bias[n])
 *
 * Activations arrive as signed int8 codes stored with their top bit flipped (a + 128 as uint8: VNNI's vpdpbusd
 * multiplies unsigned by signed bytes); the 128 * sum_k w[n, k] this adds is taken off through `wsum`.
 * Weights are packed once (yaie_i8_pack) into tiles of 16 output channels: [N / 16][K / 4][16][4] bytes, so one
 * 64-byte load feeds one vpdpbusd for 16 channels x 4 inputs. A micro-kernel holds MR x 2 tiles of int32 sums
 * in registers (MR rows, 32 channels) while it walks K; a thread owns whole 32-channel panels, so the panel's
 * weights (K * 32 bytes) stay in L1/L2 while every row block streams past them.
 *
 * Why our own: torch._int_mm (oneDNN) costs ~25-40 us of set-up per call at decode shapes, which at 120
 * decoder linears per step is a fifth of the step, and it needs a separate int32 -> float pass.
 *
 * On CPUs with AMX (Intel Sapphire Rapids and later), when the OS grants the tile state (yaie_i8_set_amx) and
 * K % 64 == 0, the same packed weights feed AMX tiles instead: one 16-channel x 64-input slice of a packed tile
 * is exactly one 16 x 64-byte B tile (rows = groups of 4 inputs, 16 channels x 4 bytes each), and tdpbusd also
 * multiplies unsigned by signed bytes, so codes, wsum and the rescale are shared with the VNNI path.
 *
 * SwiGLU mode (up_tiles > 0, the fused step's gate/up projection): the weights' output channels are [gate | up],
 * each half N / 2; every panel pairs gate tile t with up tile t + up_tiles, and the epilogue writes
 * y[m, c] = silu(gate[m, c]) * up[m, c] for c < N / 2 -- half the output, no separate SiLU pass.
 *
 * Argmax mode (best_value != NULL, greedy sampling through the lm_head): nothing is written to y; each row's
 * largest output and its first column are tracked per thread (best_value / best_index [threads, M]) and merged
 * after the matmul -- the [M, N] logits never go to memory.
 *
 * Requires K % 4 == 0 and N % 16 == 0 (callers check). Built with -march=native; without AVX-512 VNNI the
 * entry points return -1 and callers keep torch._int_mm. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../attention/csrc/vec_math.h"

#define TILE_N 16
#define MR 8

int yaie_i8_gemm_available(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}

/* w [N, K] int8 -> packed [N / 16][K / 4][16][4]; wsum[n] = 128 * sum_k w[n, k]. */
int yaie_i8_pack(const int8_t *w, int64_t n, int64_t k, int8_t *packed, int32_t *wsum) {
    if (n % TILE_N || k % 4) return -1;
    for (int64_t c = 0; c < n; c++) {
        int32_t sum = 0;
        for (int64_t i = 0; i < k; i++) sum += w[c * k + i];
        wsum[c] = 128 * sum;
    }
    for (int64_t t = 0; t < n / TILE_N; t++)
        for (int64_t k4 = 0; k4 < k / 4; k4++)
            for (int64_t lane = 0; lane < TILE_N; lane++)
                memcpy(packed + ((t * (k / 4) + k4) * TILE_N + lane) * 4, w + (t * TILE_N + lane) * k + k4 * 4, 4);
    return 0;
}

#if defined(__AVX512VNNI__) && defined(__AVX512F__)

typedef struct {
    const uint8_t *a;      /* [M, K] activation codes, top bit flipped */
    const float *a_scale;  /* [M] */
    const int8_t *packed;  /* yaie_i8_pack's layout */
    const int32_t *wsum;   /* [N] */
    const float *w_scale;  /* [N] */
    const float *bias;     /* [N] or NULL */
    float *y;              /* [M, ldy] */
    int64_t ldy, m, n, k;
    int accumulate;
    int64_t up_tiles;      /* 0, or SwiGLU mode: the distance from a gate tile to its up tile (N / 32) */
    float *best_value;     /* NULL, or argmax mode: [threads, M] each thread's best value per row (start: -inf) */
    int64_t *best_index;   /* argmax mode: [threads, M] its column */
} i8_gemm_args;

/* Argmax mode: a row's 16 outputs from column col compete for that row's best in this thread; a tie keeps the
 * earlier column (a thread walks its columns in increasing order). */
static inline void argmax_update(const i8_gemm_args *g, __m512 out, int64_t row, int64_t col) {
    const int64_t at = omp_get_thread_num() * g->m + row;
    const float top = _mm512_reduce_max_ps(out);
    if (!(top > g->best_value[at])) return;
    g->best_value[at] = top;
    g->best_index[at] = col + __builtin_ctz(_mm512_cmp_ps_mask(out, _mm512_set1_ps(top), _CMP_EQ_OQ));
}

/* Channel block `col`'s sums for one row, rescaled to the linear's float output (before bias). */
static inline __attribute__((always_inline)) __m512 rescale(const i8_gemm_args *g, __m512i acc, float a_scale,
                                                            int64_t col) {
    const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_loadu_si512(g->wsum + col)));
    return _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(a_scale)), _mm512_loadu_ps(g->w_scale + col));
}

/* SwiGLU mode: y[row, col..+16] = silu(gate) * up from the gate tile's and the up tile's sums (no bias). */
static inline __attribute__((always_inline)) void store_swiglu(const i8_gemm_args *g, __m512i gate, __m512i up,
                                                               int64_t row, int64_t col) {
    const float a_scale = g->a_scale[row];
    const __m512 out = _mm512_mul_ps(silu16(rescale(g, gate, a_scale, col)),
                                     rescale(g, up, a_scale, col + g->up_tiles * TILE_N));
    _mm512_storeu_ps(g->y + row * g->ldy + col, out);
}

static inline __attribute__((always_inline)) void store_tile(const i8_gemm_args *g, __m512i acc, int64_t row,
                                                             int64_t col) {
    __m512 out = rescale(g, acc, g->a_scale[row], col);
    if (g->bias) out = _mm512_add_ps(out, _mm512_loadu_ps(g->bias + col));
    if (g->best_value) {
        argmax_update(g, out, row, col);
        return;
    }
    float *dst = g->y + row * g->ldy + col;
    if (g->accumulate) out = _mm512_add_ps(_mm512_loadu_ps(dst), out);
    _mm512_storeu_ps(dst, out);
}

/* Rows [r0, r0 + R) x tiles [t0, t0 + NT): R and NT compile-time at each call, so the sums live in registers. */
static inline __attribute__((always_inline)) void micro_kernel(const i8_gemm_args *g, int64_t r0, int64_t t0,
                                                               const int R, const int NT, const int prefetch) {
    const int64_t k4s = g->k / 4;
    __m512i acc[MR][2];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_si512();
    const int8_t *w0 = g->packed + t0 * k4s * 64, *w1 = w0 + (g->up_tiles ? g->up_tiles : 1) * k4s * 64;
    const uint8_t *a = g->a + r0 * g->k;
    const int8_t *next = w0 + NT * k4s * 64; /* the next panel: requested during the first row block's walk */
    for (int64_t k4 = 0; k4 < k4s; k4++) {
        if (prefetch) {
            _mm_prefetch((const char *)next + k4 * 128, _MM_HINT_T0);
            _mm_prefetch((const char *)next + k4 * 128 + 64, _MM_HINT_T0);
        }
        const __m512i b0 = _mm512_loadu_si512(w0 + k4 * 64);
        const __m512i b1 = NT > 1 ? _mm512_loadu_si512(w1 + k4 * 64) : b0;
        for (int r = 0; r < R; r++) {
            int32_t word;
            memcpy(&word, a + r * g->k + k4 * 4, 4);
            const __m512i av = _mm512_set1_epi32(word);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
            if (NT > 1) acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
        }
    }
    for (int r = 0; r < R; r++) {
        if (g->up_tiles && NT > 1) {
            store_swiglu(g, acc[r][0], acc[r][1], r0 + r, t0 * TILE_N);
            continue;
        }
        for (int t = 0; t < NT; t++) store_tile(g, acc[r][t], r0 + r, (t0 + t) * TILE_N);
    }
}

static void panel(const i8_gemm_args *g, int64_t t0, const int NT) {
    int64_t r0 = 0;
    for (; r0 + MR <= g->m; r0 += MR) micro_kernel(g, r0, t0, MR, NT, r0 == 0);
    const int first = r0 == 0;
    switch (g->m - r0) {
    case 1: micro_kernel(g, r0, t0, 1, NT, first); break;
    case 2: micro_kernel(g, r0, t0, 2, NT, first); break;
    case 3: micro_kernel(g, r0, t0, 3, NT, first); break;
    case 4: micro_kernel(g, r0, t0, 4, NT, first); break;
    case 5: micro_kernel(g, r0, t0, 5, NT, first); break;
    case 6: micro_kernel(g, r0, t0, 6, NT, first); break;
    case 7: micro_kernel(g, r0, t0, 7, NT, first); break;
    default: break;
    }
}

/* Inside a parallel region: this thread's 32-channel panels, then the barrier at the end of the omp for. */
static void i8_gemm_team(const i8_gemm_args *g) {
    const int64_t num_tiles = g->n / TILE_N;
    if (g->up_tiles) { /* SwiGLU: panel t = gate tile t with its up tile */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < g->up_tiles; t++) panel(g, t, 2);
        return;
    }
    const int64_t num_panels = (num_tiles + 1) / 2;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < num_panels; p++) {
        if (2 * p + 1 < num_tiles) panel(g, 2 * p, 2);
        else panel(g, 2 * p, 1);
    }
}


#include "int8_gemm_amx.c"

/* Below this many rows VNNI is as fast: a tile computes 16 rows whatever M is, and both stream the weights. */
#define AMX_MIN_ROWS 5

/* Inside a parallel region: the whole matmul, on AMX tiles when enabled and the shape suits, else VNNI. */
static void i8_gemm_any_team(const i8_gemm_args *g) {
#ifdef HAVE_AMX
    if (amx_enabled && g->k % 64 == 0 && g->m >= AMX_MIN_ROWS) {
        amx_gemm_team(g);
        return;
    }
#endif
    i8_gemm_team(g);
}

int yaie_i8_gemm(const uint8_t *a, const float *a_scale, const int8_t *packed, const int32_t *wsum,
                 const float *w_scale, const float *bias, float *y, int64_t ldy, int64_t m, int64_t n, int64_t k,
                 int accumulate, int num_threads) {
    if (n % TILE_N || k % 4) return -1;
    const i8_gemm_args g = {.a = a, .a_scale = a_scale, .packed = packed, .wsum = wsum, .w_scale = w_scale,
                            .bias = bias, .y = y, .ldy = ldy, .m = m, .n = n, .k = k, .accumulate = accumulate};
#pragma omp parallel num_threads(num_threads)
    i8_gemm_any_team(&g);
    return 0;
}

/* SwiGLU mode (see the top): packed holds [gate | up] (N channels); y [M, ldy] gets silu(gate) * up, N / 2 wide. */
int yaie_i8_gemm_swiglu(const uint8_t *a, const float *a_scale, const int8_t *packed, const int32_t *wsum,
                        const float *w_scale, float *y, int64_t ldy, int64_t m, int64_t n, int64_t k, int num_threads) {
    if (n % (2 * TILE_N) || k % 4) return -1;
    const i8_gemm_args g = {.a = a, .a_scale = a_scale, .packed = packed, .wsum = wsum, .w_scale = w_scale,
                            .y = y, .ldy = ldy, .m = m, .n = n, .k = k, .up_tiles = n / 2 / TILE_N};
#pragma omp parallel num_threads(num_threads)
    i8_gemm_any_team(&g);
    return 0;
}

/* Argmax mode (see the top): index [M] <- each row's first column holding its largest output. Returns -2 when out
 * of memory. */
int yaie_i8_gemm_argmax(const uint8_t *a, const float *a_scale, const int8_t *packed, const int32_t *wsum,
                        const float *w_scale, const float *bias, int64_t *index, int64_t m, int64_t n, int64_t k,
                        int num_threads) {
    if (n % TILE_N || k % 4) return -1;
    float *best_value = malloc(sizeof(float) * num_threads * (m > 0 ? m : 1));
    int64_t *best_index = malloc(sizeof(int64_t) * num_threads * (m > 0 ? m : 1));
    if (!best_value || !best_index) {
        free(best_value);
        free(best_index);
        return -2;
    }
    for (int64_t i = 0; i < num_threads * m; i++) {
        best_value[i] = -INFINITY;
        best_index[i] = 0;
    }
    const i8_gemm_args g = {.a = a, .a_scale = a_scale, .packed = packed, .wsum = wsum, .w_scale = w_scale,
                            .bias = bias, .m = m, .n = n, .k = k, .best_value = best_value, .best_index = best_index};
#pragma omp parallel num_threads(num_threads)
    i8_gemm_any_team(&g);
    for (int64_t r = 0; r < m; r++) { /* threads hold increasing column ranges: a tie keeps the lower thread */
        int64_t best = r;
        for (int t = 1; t < num_threads; t++) {
            const int64_t at = t * m + r;
            if (best_value[at] > best_value[best] ||
                (best_value[at] == best_value[best] && best_index[at] < best_index[best]))
                best = at;
        }
        index[r] = best_index[best];
    }
    free(best_value);
    free(best_index);
    return 0;
}

#else

int yaie_i8_set_amx(int on) {
    (void)on;
    return 0;
}

int yaie_i8_gemm_argmax(const uint8_t *a, const float *a_scale, const int8_t *packed, const int32_t *wsum,
                        const float *w_scale, const float *bias, int64_t *index, int64_t m, int64_t n, int64_t k,
                        int num_threads) {
    (void)a; (void)a_scale; (void)packed; (void)wsum; (void)w_scale; (void)bias; (void)index; (void)m; (void)n;
    (void)k; (void)num_threads;
    return -1;
}

int yaie_i8_gemm_swiglu(const uint8_t *a, const float *a_scale, const int8_t *packed, const int32_t *wsum,
                        const float *w_scale, float *y, int64_t ldy, int64_t m, int64_t n, int64_t k, int num_threads) {
    (void)a; (void)a_scale; (void)packed; (void)wsum; (void)w_scale; (void)y; (void)ldy; (void)m; (void)n; (void)k;
    (void)num_threads;
    return -1;
}

int yaie_i8_gemm(const uint8_t *a, const float *a_scale, const int8_t *packed, const int32_t *wsum,
                 const float *w_scale, const float *bias, float *y, int64_t ldy, int64_t m, int64_t n, int64_t k,
                 int accumulate, int num_threads) {
    (void)a; (void)a_scale; (void)packed; (void)wsum; (void)w_scale; (void)bias; (void)y; (void)ldy;
    (void)m; (void)n; (void)k; (void)accumulate; (void)num_threads;
    return -1;
}

#endif
