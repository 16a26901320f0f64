/* Paged decode attention for CPU: float32 queries and outputs, K/V cache in float32 or float16 (converted on
 * load with F16C), one query token per sequence, K/V read in place through the block table -- no gather copy. Work is split over (sequence, kv head) pairs with OpenMP; within a pair every
 * K/V row is loaded once and used by all the query heads of its GQA group.
 *
 * Layouts: q, out [B, Hq, D]; k_cache, v_cache [S, Hkv, D] (S = num_blocks * block_size);
 * block_table [B, max_blocks]; context_lens [B]. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GROUP 16

/* q . k_row over head_dim elements; K row in float32 or float16 (`is_f16` is a compile-time constant in every
 * specialisation). The float16 path widens 8 elements at a time with F16C. */
static inline __attribute__((always_inline)) float dot_kv(const float *q, const void *row, int head_dim,
                                                          const int is_f16) {
    if (!is_f16) {
        const float *k = (const float *)row;
        float dot = 0.f;
        for (int d = 0; d < head_dim; d++) dot += q[d] * k[d];
        return dot;
    }
    const uint16_t *k = (const uint16_t *)row;
    __m256 acc = _mm256_setzero_ps();
    int d = 0;
    for (; d + 8 <= head_dim; d += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d))), acc);
    __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    sum4 = _mm_hadd_ps(sum4, sum4);
    float dot = _mm_cvtss_f32(_mm_hadd_ps(sum4, sum4));
    for (; d < head_dim; d++) dot += q[d] * _cvtsh_ss(k[d]);
    return dot;
}

/* out += p * v_row over head_dim elements. */
static inline __attribute__((always_inline)) void axpy_kv(float *out, float p, const void *row, int head_dim,
                                                          const int is_f16) {
    if (!is_f16) {
        const float *v = (const float *)row;
        for (int d = 0; d < head_dim; d++) out[d] += p * v[d];
        return;
    }
    const uint16_t *v = (const uint16_t *)row;
    const __m256 pv = _mm256_set1_ps(p);
    int d = 0;
    for (; d + 8 <= head_dim; d += 8) {
        __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + d)));
        _mm256_storeu_ps(out + d, _mm256_fmadd_ps(pv, vv, _mm256_loadu_ps(out + d)));
    }
    for (; d < head_dim; d++) out[d] += p * _cvtsh_ss(v[d]);
}

static inline __attribute__((always_inline)) void attend_impl(
    const float *q, const void *k_cache, const void *v_cache, const int64_t *blocks, int64_t ctx, int group,
    int num_kv_heads, const int head_dim, int block_size, int kv_head, float scale, float *scores, float *out,
    const int is_f16) {
    const int64_t elem = is_f16 ? 2 : 4;
    const int64_t row_stride = (int64_t)num_kv_heads * head_dim;
    /* Pass 1: scores[g, t] = scale * q_g . k_t, each K row loaded once for the whole GQA group. */
    for (int64_t start = 0, blk = 0; start < ctx; start += block_size, blk++) {
        const int64_t n = ctx - start < block_size ? ctx - start : block_size;
        const char *k_row = (const char *)k_cache + (blocks[blk] * block_size * row_stride + (int64_t)kv_head * head_dim) * elem;
        for (int64_t o = 0; o < n; o++, k_row += row_stride * elem) {
            for (int g = 0; g < group; g++) {
                const float *qg = q + g * head_dim;
                scores[g * ctx + start + o] = dot_kv(qg, k_row, head_dim, is_f16) * scale;
            }
        }
    }
    /* Softmax per query head. */
    for (int g = 0; g < group; g++) {
        float *s = scores + g * ctx;
        float max_score = -INFINITY, sum = 0.f;
        for (int64_t t = 0; t < ctx; t++) max_score = s[t] > max_score ? s[t] : max_score;
        for (int64_t t = 0; t < ctx; t++) { s[t] = expf(s[t] - max_score); sum += s[t]; }
        const float inv = 1.f / sum;
        for (int64_t t = 0; t < ctx; t++) s[t] *= inv;
        memset(out + g * head_dim, 0, sizeof(float) * head_dim);
    }
    /* Pass 2: out_g = sum_t p[g, t] * v_t, each V row loaded once. */
    for (int64_t start = 0, blk = 0; start < ctx; start += block_size, blk++) {
        const int64_t n = ctx - start < block_size ? ctx - start : block_size;
        const char *v_row = (const char *)v_cache + (blocks[blk] * block_size * row_stride + (int64_t)kv_head * head_dim) * elem;
        for (int64_t o = 0; o < n; o++, v_row += row_stride * elem) {
            for (int g = 0; g < group; g++) {
                const float p = scores[g * ctx + start + o];
                float *og = out + g * head_dim;
                axpy_kv(og, p, v_row, head_dim, is_f16);
            }
        }
    }
}

/* Specialisations with a compile-time head_dim and K/V type let the compiler unroll and vectorise. */
typedef void (*attend_fn)(const float *, const void *, const void *, const int64_t *, int64_t, int, int, int, int,
                          int, float, float *, float *);
#define DEFINE_ATTEND(NAME, DIM, F16)                                                                         \
    static void NAME(const float *q, const void *k, const void *v, const int64_t *blocks, int64_t ctx,        \
                     int group, int hkv, int head_dim, int bs, int h, float scale, float *scores, float *out) { \
        attend_impl(q, k, v, blocks, ctx, group, hkv, DIM, bs, h, scale, scores, out, F16);                   \
    }
DEFINE_ATTEND(attend_64, 64, 0)
DEFINE_ATTEND(attend_128, 128, 0)
DEFINE_ATTEND(attend_any, head_dim, 0)
DEFINE_ATTEND(attend_64_f16, 64, 1)
DEFINE_ATTEND(attend_128_f16, 128, 1)
DEFINE_ATTEND(attend_any_f16, head_dim, 1)

static attend_fn pick_attend(int head_dim, int kv_is_f16) {
    if (kv_is_f16) return head_dim == 64 ? attend_64_f16 : head_dim == 128 ? attend_128_f16 : attend_any_f16;
    return head_dim == 64 ? attend_64 : head_dim == 128 ? attend_128 : attend_any;
}

/* k_cache / v_cache hold float32 (kv_is_f16 = 0) or float16 (kv_is_f16 = 1) elements. */
int yaie_paged_decode_attention(const float *q, const void *k_cache, const void *v_cache,
                                const int64_t *block_table, const int64_t *context_lens, float *out,
                                int num_seqs, int num_heads, int num_kv_heads, int head_dim, int block_size,
                                int max_blocks, float scale, int num_threads, int kv_is_f16) {
    int group = num_heads / num_kv_heads;
    if (group > MAX_GROUP || group * num_kv_heads != num_heads) return -1;
    int64_t max_ctx = 0;
    for (int b = 0; b < num_seqs; b++) max_ctx = context_lens[b] > max_ctx ? context_lens[b] : max_ctx;
    int failed = 0;
    attend_fn attend_one = pick_attend(head_dim, kv_is_f16);
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(sizeof(float) * group * (max_ctx > 0 ? max_ctx : 1));
        if (!scores) {
            failed = 1;
        } else {
#pragma omp for schedule(dynamic, 1) collapse(2)
            for (int b = 0; b < num_seqs; b++) {
                for (int h = 0; h < num_kv_heads; h++) {
                    const float *qb = q + ((int64_t)b * num_heads + (int64_t)h * group) * head_dim;
                    float *ob = out + ((int64_t)b * num_heads + (int64_t)h * group) * head_dim;
                    attend_one(qb, k_cache, v_cache, block_table + (int64_t)b * max_blocks, context_lens[b],
                               group, num_kv_heads, head_dim, block_size, h, scale, scores, ob);
                }
            }
            free(scores);
        }
    }
    return failed ? -2 : 0;
}
