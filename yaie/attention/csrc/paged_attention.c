/* Paged decode attention for CPU: float32 queries and outputs, K/V cache in float32, float16 (widened with
 * F16C), bfloat16 or int8 (kv_type: KV_F32, KV_F16, KV_BF16, KV_I8), one query token per sequence, K/V read in
 * place through the block table -- no gather copy. Work is split over (sequence, kv head) pairs with OpenMP;
 * within a pair every K/V row is read from memory once and used by all the query heads of its GQA group.
 *
 * Layouts: q, out [B, Hq, D]; k_cache, v_cache [S, Hkv, D] (S = num_blocks * block_size), for KV_I8
 * [S, Hkv, D + 4] bytes: each head's D codes followed by their float32 scale (value = code * scale);
 * block_table [B, max_blocks]; context_lens [B].
 *
 * The vector path (head_dim a multiple of 8, at most MAX_DIM) takes rows eight at a time: they are widened to
 * float32 once into an L1 buffer, each query head's eight dot products run as eight independent FMA chains
 * folded by one transpose-add, and the weighted V sum keeps a whole head's output row in registers. Other
 * head sizes take a plain scalar loop. Built for a CPU with AVX-512, head sizes 64 and 128 take attend_z16
 * instead (sixteen rows per step; bench/attention_kernel.py: 1.35-1.5x). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec_math.h"

#define MAX_GROUP 16
#define MAX_DIM 256
#define MAX_WIDTH 1024 /* widest K/V row slice one task reads: num_kv * head_dim */
#define ROWS 8
#define CHUNK_TOKENS 16 /* most query tokens one chunk-attention call takes */
#define PREFETCH_ROWS 32 /* rows ahead of the one being widened that are requested from memory */

enum { KV_F32 = 0, KV_F16 = 1, KV_BF16 = 2, KV_I8 = 3 }; /* kv_type: the cache's element type */
#define I8_SCALE_BYTES 4

/* Bytes one kv head takes in a cache row. */
static inline int64_t kv_head_bytes(int kv_type, int D) {
    return kv_type == KV_I8 ? D + I8_SCALE_BYTES : (int64_t)D * (kv_type == KV_F32 ? 4 : 2);
}

/* KV_I8: the scale stored after a head's D codes. */
static inline float i8_scale(const char *head, int D) {
    float s;
    memcpy(&s, head + D, sizeof s);
    return s;
}

static inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Context position t's cache row (row_bytes long), from kv head `kv_head` (head_bytes each) on, addressed through
 * the sequence's block table. */
static inline const char *kv_row(const void *cache, const int64_t *blocks, int64_t t, int block_size,
                                 int64_t row_bytes, int kv_head, int64_t head_bytes) {
    const int64_t slot = blocks[t / block_size] * block_size + t % block_size;
    return (const char *)cache + slot * row_bytes + kv_head * head_bytes;
}

/* dst [D] float32 <- one kv head's D cached elements (eight at a time; D a multiple of 8). */
static inline __attribute__((always_inline)) void widen_head8(float *dst, const char *src, const int D,
                                                              const int kv_type) {
    if (kv_type == KV_F32) {
        memcpy(dst, src, sizeof(float) * D);
        return;
    }
    const __m256 scale = _mm256_set1_ps(kv_type == KV_I8 ? i8_scale(src, D) : 1.f);
    for (int d = 0; d < D; d += 8) {
        __m256 v;
        if (kv_type == KV_F16) {
            v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + d)));
        } else if (kv_type == KV_BF16) {
            const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + d)));
            v = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        } else {
            v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src + d)))),
                              scale);
        }
        _mm256_storeu_ps(dst + d, v);
    }
}

/* Widen `n` (<= ROWS) rows starting at context position t0 -- `width` elements each, from kv head `kv_head` on --
 * into buf [ROWS, width] float32; missing rows repeat the last one so the eight-row kernels never read garbage.
 * Rows PREFETCH_ROWS ahead (up to `ctx`) are prefetched: rows are strided and split over blocks, so the
 * hardware prefetcher alone leaves each row's first load waiting on memory. */
static inline __attribute__((always_inline)) void load_rows(
    float *buf, const void *cache, const int64_t *blocks, int64_t t0, int n, int64_t ctx, int block_size,
    int64_t row_bytes, int kv_head, const int D, const int width, const int kv_type) {
    const int64_t head_bytes = kv_head_bytes(kv_type, D), num_kv = width / D;
    for (int r = 0; r < n && t0 + r + PREFETCH_ROWS < ctx; r++) {
        const char *ahead = kv_row(cache, blocks, t0 + r + PREFETCH_ROWS, block_size, row_bytes, kv_head, head_bytes);
        for (int64_t line = 0; line < num_kv * head_bytes; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    }
    int64_t blk = t0 / block_size, offset = t0 % block_size;
    const char *row = kv_row(cache, blocks, t0, block_size, row_bytes, kv_head, head_bytes);
    for (int r = 0; r < ROWS; r++) {
        for (int64_t kv = 0; kv < num_kv; kv++) widen_head8(buf + r * width + kv * D, row + kv * head_bytes, D, kv_type);
        if (r + 1 >= n) continue; /* the remaining rows repeat this one */
        if (++offset < block_size) {
            row += row_bytes;
        } else {
            offset = 0;
            row = kv_row(cache, blocks, ++blk * block_size, block_size, row_bytes, kv_head, head_bytes);
        }
    }
}

/* The eight dot products q . buf[r, 0:D] (r < ROWS, rows `width` apart) as one vector: eight FMA chains, then a transpose-add. */
static inline __attribute__((always_inline)) __m256 dot8(const float *q, const float *buf, const int D,
                                                          const int width) {
    __m256 acc[ROWS];
    for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();
    for (int d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        for (int r = 0; r < ROWS; r++) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(buf + r * width + d), acc[r]);
    }
    const __m256 s01 = _mm256_hadd_ps(acc[0], acc[1]), s23 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 s45 = _mm256_hadd_ps(acc[4], acc[5]), s67 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    /* lanes: s0123 = [r0 r1 r2 r3 | r0 r1 r2 r3] (low / high halves of each sum), likewise s4567 */
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

/* out[0:D] += sum_r p[r] * buf[r, 0:D] over n rows `width` apart, the output row held in registers. */
static inline __attribute__((always_inline)) void weighted_sum(float *out, const float *p, const float *buf, int n,
                                                               const int D, const int width) {
    for (int d0 = 0; d0 < D; d0 += 64) {
        const int num_vecs = (D - d0 < 64 ? D - d0 : 64) / 8;
        __m256 acc[8];
        for (int c = 0; c < num_vecs; c++) acc[c] = _mm256_loadu_ps(out + d0 + c * 8);
        for (int r = 0; r < n; r++) {
            const __m256 pr = _mm256_set1_ps(p[r]);
            for (int c = 0; c < num_vecs; c++)
                acc[c] = _mm256_fmadd_ps(pr, _mm256_loadu_ps(buf + r * width + d0 + c * 8), acc[c]);
        }
        for (int c = 0; c < num_vecs; c++) _mm256_storeu_ps(out + d0 + c * 8, acc[c]);
    }
}


/* Each of `group` rows of ctx scores -> its softmax, in place; the matching output rows are zeroed. */
static void softmax_rows(float *scores, int group, int64_t ctx, float *out, int head_dim) {
    for (int g = 0; g < group; g++) {
        float *s = scores + g * ctx;
        float max_score = -INFINITY, sum = 0.f;
        for (int64_t t = 0; t < ctx; t++) max_score = s[t] > max_score ? s[t] : max_score;
        int64_t t = 0;
#if defined(__AVX512F__)
        __m512 sums = _mm512_setzero_ps();
        for (; t + 16 <= ctx; t += 16) {
            const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + t), _mm512_set1_ps(max_score)));
            _mm512_storeu_ps(s + t, e);
            sums = _mm512_add_ps(sums, e);
        }
        sum = _mm512_reduce_add_ps(sums);
#endif
        for (; t < ctx; t++) { s[t] = expf(s[t] - max_score); sum += s[t]; }
        const float inv = 1.f / sum;
        for (t = 0; t < ctx; t++) s[t] *= inv;
        memset(out + g * head_dim, 0, sizeof(float) * head_dim);
    }
}

/* Query heads [kv_head * group, (kv_head + num_kv) * group) against kv heads [kv_head, kv_head + num_kv): q, out
 * point at the first of those query heads; scores holds num_kv * group rows of ctx. */
static inline __attribute__((always_inline)) void attend_vector(
    const float *q, const void *k_cache, const void *v_cache, const int64_t *blocks, int64_t ctx, int group,
    int num_kv_heads, const int D, int block_size, int kv_head, int num_kv, float scale, float *scores, float *out,
    const int kv_type) {
    const int64_t row_bytes = num_kv_heads * kv_head_bytes(kv_type, D);
    const int width = num_kv * D, num_q = num_kv * group;
    float buf[ROWS * MAX_WIDTH] __attribute__((aligned(64)));
    float lanes[ROWS];
    /* Pass 1: scores[j, t] = scale * q_j . k_t for query head j of kv head j / group. */
    for (int64_t t0 = 0; t0 < ctx; t0 += ROWS) {
        const int n = ctx - t0 < ROWS ? (int)(ctx - t0) : ROWS;
        load_rows(buf, k_cache, blocks, t0, n, ctx, block_size, row_bytes, kv_head, D, width, kv_type);
        for (int j = 0; j < num_q; j++) {
            const __m256 dots = _mm256_mul_ps(dot8(q + j * D, buf + j / group * D, D, width), _mm256_set1_ps(scale));
            if (n == ROWS) {
                _mm256_storeu_ps(scores + j * ctx + t0, dots);
            } else {
                _mm256_storeu_ps(lanes, dots);
                memcpy(scores + j * ctx + t0, lanes, sizeof(float) * n);
            }
        }
    }
    softmax_rows(scores, num_q, ctx, out, D);
    /* Pass 2: out_j = sum_t p[j, t] * v_t. */
    for (int64_t t0 = 0; t0 < ctx; t0 += ROWS) {
        const int n = ctx - t0 < ROWS ? (int)(ctx - t0) : ROWS;
        load_rows(buf, v_cache, blocks, t0, n, ctx, block_size, row_bytes, kv_head, D, width, kv_type);
        for (int j = 0; j < num_q; j++)
            weighted_sum(out + j * D, scores + j * ctx + t0, buf + j / group * D, n, D, width);
    }
}

#if defined(__AVX512F__)
#include "attention_avx512.c"
#endif

/* Element d of one kv head's cached row, as float32. */
static inline float kv_element(const char *head, int d, int D, int kv_type) {
    switch (kv_type) {
    case KV_F16: return _cvtsh_ss(((const uint16_t *)head)[d]);
    case KV_BF16: return bf16_to_float(((const uint16_t *)head)[d]);
    case KV_I8: return (float)((const int8_t *)head)[d] * i8_scale(head, D);
    default: return ((const float *)head)[d];
    }
}

/* Any head size: one row at a time, scalar (same contract as attend_vector). */
static void attend_scalar(const float *q, const void *k_cache, const void *v_cache, const int64_t *blocks,
                          int64_t ctx, int group, int num_kv_heads, int D, int block_size, int kv_head, int num_kv,
                          float scale, float *scores, float *out, int kv_type) {
    const int64_t head_bytes = kv_head_bytes(kv_type, D), row_bytes = num_kv_heads * head_bytes;
    const int num_q = num_kv * group;
#define KV_AT(row, j, d) kv_element((row) + (j) / group * head_bytes, d, D, kv_type)
    for (int64_t t = 0; t < ctx; t++) {
        const char *row = kv_row(k_cache, blocks, t, block_size, row_bytes, kv_head, head_bytes);
        for (int j = 0; j < num_q; j++) {
            float dot = 0.f;
            for (int d = 0; d < D; d++) dot += q[j * D + d] * KV_AT(row, j, d);
            scores[j * ctx + t] = dot * scale;
        }
    }
    softmax_rows(scores, num_q, ctx, out, D);
    for (int64_t t = 0; t < ctx; t++) {
        const char *row = kv_row(v_cache, blocks, t, block_size, row_bytes, kv_head, head_bytes);
        for (int j = 0; j < num_q; j++)
            for (int d = 0; d < D; d++) out[j * D + d] += scores[j * ctx + t] * KV_AT(row, j, d);
    }
#undef KV_AT
}

/* Specialisations with a compile-time head_dim and K/V type let the compiler unroll and keep rows in registers. */
typedef void (*attend_fn)(const float *, const void *, const void *, const int64_t *, int64_t, int, int, int, int,
                          int, int, float, float *, float *);
#define DEFINE_ATTEND(NAME, IMPL, DIM, KV)                                                                    \
    static void NAME(const float *q, const void *k, const void *v, const int64_t *blocks, int64_t ctx,        \
                     int group, int hkv, int head_dim, int bs, int h, int num_kv, float scale, float *scores,  \
                     float *out) {                                                                            \
        IMPL(q, k, v, blocks, ctx, group, hkv, DIM, bs, h, num_kv, scale, scores, out, KV);                   \
    }
#define DEFINE_ATTEND_TYPES(NAME, IMPL, DIM)                \
    DEFINE_ATTEND(NAME##_f32, IMPL, DIM, KV_F32)            \
    DEFINE_ATTEND(NAME##_f16, IMPL, DIM, KV_F16)            \
    DEFINE_ATTEND(NAME##_bf16, IMPL, DIM, KV_BF16)          \
    DEFINE_ATTEND(NAME##_i8, IMPL, DIM, KV_I8)              \
    static const attend_fn NAME[4] = {NAME##_f32, NAME##_f16, NAME##_bf16, NAME##_i8};
DEFINE_ATTEND_TYPES(attend_64, attend_vector, 64)
DEFINE_ATTEND_TYPES(attend_128, attend_vector, 128)
DEFINE_ATTEND_TYPES(attend_any, attend_vector, head_dim)
#if defined(__AVX512F__)
DEFINE_ATTEND_TYPES(attend_z16_64, attend_z16, 64)
DEFINE_ATTEND_TYPES(attend_z16_128, attend_z16, 128)
#endif
DEFINE_ATTEND_TYPES(attend_scalar_any, attend_scalar, head_dim)

/* Chunk attention (attend_chunk_z16's contract), where this build has it. */
typedef void (*attend_chunk_fn)(const float *, int64_t, const void *, const void *, const int64_t *, int64_t, int,
                                int, int, int, int, int, float, float *, float *, int64_t);
#define DEFINE_CHUNK(NAME, DIM, KV)                                                                                  static void NAME(const float *q, int64_t qs, const void *k, const void *v, const int64_t *blocks,                               int64_t first, int nq, int group, int hkv, int bs, int h, int num_kv, float scale,                               float *scores, float *out, int64_t os) {                                                           attend_chunk_z16(q, qs, k, v, blocks, first, nq, group, hkv, DIM, bs, h, num_kv, scale, scores, out, os,                          KV);                                                                                       }
#if defined(__AVX512F__)
DEFINE_CHUNK(chunk_64_f32, 64, KV_F32)
DEFINE_CHUNK(chunk_64_f16, 64, KV_F16)
DEFINE_CHUNK(chunk_64_bf16, 64, KV_BF16)
DEFINE_CHUNK(chunk_64_i8, 64, KV_I8)
DEFINE_CHUNK(chunk_128_f32, 128, KV_F32)
DEFINE_CHUNK(chunk_128_f16, 128, KV_F16)
DEFINE_CHUNK(chunk_128_bf16, 128, KV_BF16)
DEFINE_CHUNK(chunk_128_i8, 128, KV_I8)
static const attend_chunk_fn attend_chunk_64[4] = {chunk_64_f32, chunk_64_f16, chunk_64_bf16, chunk_64_i8};
static const attend_chunk_fn attend_chunk_128[4] = {chunk_128_f32, chunk_128_f16, chunk_128_bf16, chunk_128_i8};
#endif

/* The chunk kernel for this head size and cache type, or NULL (then chunks are attended token by token). */
static inline attend_chunk_fn pick_attend_chunk(int head_dim, int kv_type) {
#if defined(__AVX512F__)
    if (head_dim == 64) return attend_chunk_64[kv_type];
    if (head_dim == 128) return attend_chunk_128[kv_type];
#endif
    (void)head_dim, (void)kv_type;
    return NULL;
}

/* Scratch one attention task needs: float32 scores [num_kv * group, ctx]. */
static size_t attend_scratch_bytes(int num_kv, int group, int64_t max_ctx) {
    return sizeof(float) * (size_t)num_kv * (size_t)group * (size_t)max_ctx;
}

/* Scratch one chunk-attention task needs (up to CHUNK_TOKENS tokens over contexts up to max_ctx): the queries
 * transposed [num_kv, D, mp], the scores [num_kv, ctx rounded up to 16, mp] and [num_kv, mp] sums' inverses,
 * mp = CHUNK_TOKENS * group rounded up to 16. */
static size_t chunk_scratch_bytes(int num_kv, int group, int head_dim, int64_t max_ctx) {
    const size_t mp = ((size_t)CHUNK_TOKENS * (size_t)group + 15) / 16 * 16;
    return sizeof(float) * (size_t)num_kv * mp * ((size_t)head_dim + ((size_t)max_ctx + 15) / 16 * 16 + 1);
}

/* The kernel for this head size and cache type. */
static attend_fn pick_attend(int head_dim, int kv_type) {
#if defined(__AVX512F__)
    if (head_dim == 64) return attend_z16_64[kv_type];
    if (head_dim == 128) return attend_z16_128[kv_type];
#endif
    if (head_dim % 8 || head_dim > MAX_DIM) return attend_scalar_any[kv_type];
    return head_dim == 64 ? attend_64[kv_type] : head_dim == 128 ? attend_128[kv_type] : attend_any[kv_type];
}

/* k_cache / v_cache hold elements of kv_type (KV_F32, KV_F16, KV_BF16, KV_I8). With enough sequences to
 * keep every thread busy, one task takes a whole sequence (each K/V row read as one contiguous slice of all its
 * kv heads); otherwise one task per (sequence, kv head). */
int yaie_paged_decode_attention(const float *q, const void *k_cache, const void *v_cache,
                                const int64_t *block_table, const int64_t *context_lens, float *out,
                                int num_seqs, int num_heads, int num_kv_heads, int head_dim, int block_size,
                                int max_blocks, float scale, int num_threads, int kv_type) {
    const int group = num_heads / num_kv_heads;
    if (group > MAX_GROUP || group * num_kv_heads != num_heads) return -1;
    int64_t max_ctx = 0;
    for (int b = 0; b < num_seqs; b++) max_ctx = context_lens[b] > max_ctx ? context_lens[b] : max_ctx;
    const int whole_seqs = num_seqs >= 4 * num_threads && num_kv_heads * head_dim <= MAX_WIDTH;
    const int num_kv = whole_seqs ? num_kv_heads : 1, tasks_per_seq = num_kv_heads / num_kv;
    if (kv_type < KV_F32 || kv_type > KV_I8) return -1;
    const attend_fn attend_one = pick_attend(head_dim, kv_type);
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)malloc(attend_scratch_bytes(num_kv, group, max_ctx > 0 ? max_ctx : 1));
        if (!scores) {
            failed = 1;
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int task = 0; task < num_seqs * tasks_per_seq; task++) {
                const int b = task / tasks_per_seq, h = task % tasks_per_seq * num_kv;
                const int64_t first = ((int64_t)b * num_heads + (int64_t)h * group) * head_dim;
                attend_one(q + first, k_cache, v_cache, block_table + (int64_t)b * max_blocks, context_lens[b],
                           group, num_kv_heads, head_dim, block_size, h, num_kv, scale, scores, out + first);
            }
            free(scores);
        }
    }
    return failed ? -2 : 0;
}
