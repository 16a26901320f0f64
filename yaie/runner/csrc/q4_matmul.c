/* The Q4_1 x int8 matmul of the fused step (KIND_Q4_1), included by fused_decode.c after its types: GGUF Q4_1
 * weight blocks of 32 (w = d * q + m), activations quantized per group of 32 to int8 as llama.cpp does for
 * Q4_1 x Q8_1, dot products on bytes (AVX-VNNI when the CPU has it, else AVX2 maddubs). */
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

static inline __m256i dot_u8s8(__m256i u, __m256i s) { /* 8 x int32 sums of 4 byte products */
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

static inline __m256i unpack_q4(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    const __m128i mask = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
}

static void quantize_row(const float *x, int64_t k, int8_t *q, float *d, float *dsum) {
    for (int64_t g = 0; g < k / QK; g++) {
        const float *xg = x + g * QK;
        float amax = 0.f;
        for (int i = 0; i < QK; i++) amax = fabsf(xg[i]) > amax ? fabsf(xg[i]) : amax;
        const float scale = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
        int sum = 0;
        for (int i = 0; i < QK; i++) {
            const int v = (int)lrintf(xg[i] * inv);
            q[g * QK + i] = (int8_t)v;
            sum += v;
        }
        d[g] = scale;
        dsum[g] = scale * (float)sum;
    }
}

static inline void store_out(float *out, float v, int accumulate) { *out = accumulate ? *out + v : v; }

/* W[n] . a[0] for one activation row: two accumulators, so consecutive groups' FMAs do not wait on each other. */
static inline float q4_dot_1(const block_q4_1 *blocks, int64_t ng, const q8_act *a) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float msum = 0.f;
    int64_t g = 0;
    for (; g + 1 < ng; g += 2) {
        const block_q4_1 *b0 = blocks + g, *b1 = blocks + g + 1;
        const __m256 p0 = _mm256_cvtepi32_ps(dot_u8s8(unpack_q4(b0->qs), _mm256_loadu_si256((const __m256i *)(a->q + g * QK))));
        const __m256 p1 = _mm256_cvtepi32_ps(dot_u8s8(unpack_q4(b1->qs), _mm256_loadu_si256((const __m256i *)(a->q + (g + 1) * QK))));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b0->d) * a->d[g]), p0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b1->d) * a->d[g + 1]), p1, acc1);
        msum += _cvtsh_ss(b0->m) * a->dsum[g] + _cvtsh_ss(b1->m) * a->dsum[g + 1];
    }
    for (; g < ng; g++) {
        const block_q4_1 *b0 = blocks + g;
        const __m256 p0 = _mm256_cvtepi32_ps(dot_u8s8(unpack_q4(b0->qs), _mm256_loadu_si256((const __m256i *)(a->q + g * QK))));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b0->d) * a->d[g]), p0, acc0);
        msum += _cvtsh_ss(b0->m) * a->dsum[g];
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) + msum;
}

/* W[n] . a[b0 + t] for t < NB (a compile-time constant at each call, so the accumulators live in registers):
 * each weight block is unpacked once for the whole tile. */
static inline __attribute__((always_inline)) void q4_dot_tile(const block_q4_1 *blocks, int64_t ng, const q8_act *a,
                                                              int64_t b0, float *sums, const int NB) {
    __m256 acc[TILE_B];
    float msum[TILE_B];
    for (int t = 0; t < NB; t++) { acc[t] = _mm256_setzero_ps(); msum[t] = 0.f; }
    for (int64_t g = 0; g < ng; g++) {
        const block_q4_1 *blk = blocks + g;
        const float wd = _cvtsh_ss(blk->d), wm = _cvtsh_ss(blk->m);
        const __m256i wq = unpack_q4(blk->qs);
        for (int t = 0; t < NB; t++) {
            const int64_t row = (b0 + t) * ng + g;
            const __m256 prod = _mm256_cvtepi32_ps(dot_u8s8(wq, _mm256_loadu_si256((const __m256i *)(a->q + row * QK))));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(wd * a->d[row]), prod, acc[t]);
            msum[t] += wm * a->dsum[row];
        }
    }
    for (int t = 0; t < NB; t++) sums[t] = hsum256(acc[t]) + msum[t];
}

/* y[b, n] (+)= W[n] . a[b] + bias[n] for rows n in [n0, n1) and every b < B (y row stride ldy). */
static void q4_rows(const weight_desc *w, const q8_act *a, int64_t B, int64_t n0, int64_t n1, float *y, int64_t ldy,
                    int accumulate) {
    const int64_t ng = w->k / QK;
    float sums[TILE_B];
    for (int64_t n = n0; n < n1; n++) {
        const block_q4_1 *blocks = w->blocks + n * ng;
        const float bias = w->bias ? w->bias[n] : 0.f;
        if (B == 1) {
            store_out(y + n, q4_dot_1(blocks, ng, a) + bias, accumulate);
            continue;
        }
        for (int64_t b0 = 0; b0 < B; b0 += TILE_B) {
            const int nb = B - b0 < TILE_B ? (int)(B - b0) : TILE_B;
            switch (nb) {
            case 1: q4_dot_tile(blocks, ng, a, b0, sums, 1); break;
            case 2: q4_dot_tile(blocks, ng, a, b0, sums, 2); break;
            case 3: q4_dot_tile(blocks, ng, a, b0, sums, 3); break;
            case 4: q4_dot_tile(blocks, ng, a, b0, sums, 4); break;
            case 5: q4_dot_tile(blocks, ng, a, b0, sums, 5); break;
            case 6: q4_dot_tile(blocks, ng, a, b0, sums, 6); break;
            case 7: q4_dot_tile(blocks, ng, a, b0, sums, 7); break;
            default: q4_dot_tile(blocks, ng, a, b0, sums, TILE_B); break;
            }
            for (int t = 0; t < nb; t++) store_out(y + (b0 + t) * ldy + n, sums[t] + bias, accumulate);
        }
    }
}

/* Inside a parallel region: this thread's share of the rows, then a barrier (end of omp for). */
static void q4_matmul(const weight_desc *w, const q8_act *a, int64_t B, float *y, int64_t ldy, int accumulate) {
    const int64_t num_chunks = (w->n + 15) / 16;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < num_chunks; c++) {
        const int64_t n1 = (c + 1) * 16 < w->n ? (c + 1) * 16 : w->n;
        q4_rows(w, a, B, c * 16, n1, y, ldy, accumulate);
    }
}
