/* The AVX-512 attention paths (head_dim 64 or 128), included by paged_attention.c in AVX-512 builds: attend_z16
 * (decode: one query token per sequence) and attend_chunk_z16 (a prompt chunk's tokens together); the same
 * contracts as paged_attention.c's attend_* functions. */
/* AVX-512 path for head_dim 64 or 128 (same contract as attend_vector). Pass 1 widens sixteen rows of all the
 * task's kv heads at a time into an L1 buffer, reading them in memory order (what lets the hardware prefetcher
 * keep up: 1.35x over attend_vector at batch 32 from DRAM), and folds each query head's sixteen dot products
 * into one vector by a transpose-add tree. Pass 2 reads V in the same order and converts each row in registers
 * for the group's query heads (accumulate_values). */
#define Z16 16

/* Row addresses of context positions [t0, t0 + 16) (past `ctx`: the last one again), first kv head `kv_head`. */
static inline void row_ptrs(const char **rows, const void *cache, const int64_t *blocks, int64_t t0, int64_t ctx,
                            int block_size, int64_t row_bytes, int kv_head, int64_t head_bytes) {
    int64_t blk = t0 / block_size, offset = t0 % block_size;
    const char *row = kv_row(cache, blocks, t0, block_size, row_bytes, kv_head, head_bytes);
    for (int r = 0; r < Z16; r++) {
        rows[r] = row;
        if (t0 + r + 1 >= ctx) continue;
        if (++offset < block_size) {
            row += row_bytes;
        } else {
            offset = 0;
            row = kv_row(cache, blocks, ++blk * block_size, block_size, row_bytes, kv_head, head_bytes);
        }
    }
}

/* Sixteen cached elements as float32 (KV_I8: the codes, unscaled). */
static inline __attribute__((always_inline)) __m512 load16(const char *p, const int kv_type) {
    if (kv_type == KV_I8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    if (kv_type == KV_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    if (kv_type == KV_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
    return _mm512_loadu_ps((const float *)p);
}

/* r[i] = sum of the 16 lanes of v[i], for i < 16. */
static inline __attribute__((always_inline)) __m512 reduce16(const __m512 *v) {
    __m512 z[4];
    for (int c = 0; c < 4; c++) {
        const __m512 *w = v + 4 * c;
        const __m512 u01 = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
        const __m512 u23 = _mm512_add_ps(_mm512_unpacklo_ps(w[2], w[3]), _mm512_unpackhi_ps(w[2], w[3]));
        /* per 128-bit chunk: u01 = [w0 w1 w0 w1], u23 = [w2 w3 w2 w3] partial sums */
        z[c] = _mm512_add_ps(_mm512_shuffle_ps(u01, u23, 0x44), _mm512_shuffle_ps(u01, u23, 0xEE));
    }
    /* z[c] chunk k holds the chunk-k partial sums of v[4c .. 4c + 3]: add the four chunks of each */
    const __m512 a = _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x44), _mm512_shuffle_f32x4(z[0], z[1], 0xEE));
    const __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(z[2], z[3], 0x44), _mm512_shuffle_f32x4(z[2], z[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}

/* Widens rows [t0, t0 + 16) of this task's kv heads (read in memory order) into buf [num_kv][16][D] float32. */
static inline __attribute__((always_inline)) void widen_block(float *buf, const char *const *rows, int num_kv,
                                                              const int D, const int kv_type) {
    const int64_t head_bytes = kv_head_bytes(kv_type, D), elem = kv_type == KV_F32 ? 4 : kv_type == KV_I8 ? 1 : 2;
    for (int r = 0; r < Z16; r++)
        for (int kv = 0; kv < num_kv; kv++) {
            const char *head = rows[r] + kv * head_bytes;
            const __m512 scale = _mm512_set1_ps(kv_type == KV_I8 ? i8_scale(head, D) : 1.f);
            for (int d = 0; d < D; d += 16) {
                __m512 v = load16(head + d * elem, kv_type);
                if (kv_type == KV_I8) v = _mm512_mul_ps(v, scale);
                _mm512_store_ps(buf + (kv * Z16 + r) * D + d, v);
            }
        }
}

#define Z16_HEADS(D) ((D) == 64 ? 6 : 2) /* output rows held in registers beside one converted V row */

/* out[h] += sum_r p[h, r] * v_r for h < nh (p rows ctx apart) over the n rows of one kv head (at `offset` in each
 * row), the output rows in registers. */
static inline __attribute__((always_inline)) void accumulate_values(const char *const *rows, int64_t offset,
                                                                    const float *p, int64_t ctx, int n, int nh,
                                                                    const int D, const int kv_type, float *out) {
    const int64_t elem = kv_type == KV_F32 ? 4 : kv_type == KV_I8 ? 1 : 2;
    __m512 acc[6][8];
    for (int h = 0; h < nh; h++)
        for (int c = 0; c < D / 16; c++) acc[h][c] = _mm512_loadu_ps(out + h * D + c * 16);
    for (int r = 0; r < n; r++) {
        const char *head = rows[r] + offset;
        const float vscale = kv_type == KV_I8 ? i8_scale(head, D) : 1.f;
        __m512 v[8];
        for (int c = 0; c < D / 16; c++) v[c] = load16(head + c * 16 * elem, kv_type);
        for (int h = 0; h < nh; h++) {
            const __m512 pr = _mm512_set1_ps(p[h * ctx + r] * vscale);
            for (int c = 0; c < D / 16; c++) acc[h][c] = _mm512_fmadd_ps(pr, v[c], acc[h][c]);
        }
    }
    for (int h = 0; h < nh; h++)
        for (int c = 0; c < D / 16; c++) _mm512_storeu_ps(out + h * D + c * 16, acc[h][c]);
}

static inline __attribute__((always_inline)) void attend_z16(
    const float *q, const void *k_cache, const void *v_cache, const int64_t *blocks, int64_t ctx, int group,
    int num_kv_heads, const int D, int block_size, int kv_head, int num_kv, float scale, float *scores, float *out,
    const int kv_type) {
    const int64_t head_bytes = kv_head_bytes(kv_type, D), row_bytes = num_kv_heads * head_bytes;
    const int num_q = num_kv * group;
    float buf[Z16 * MAX_WIDTH] __attribute__((aligned(64)));
    const char *rows[Z16];
    /* Pass 1: scores[j, t] = scale * q_j . k_t. (Software prefetching measured no gain on this path: the
     * hardware prefetcher follows the in-order reads.) */
    for (int64_t t0 = 0; t0 < ctx; t0 += Z16) {
        const int n = ctx - t0 < Z16 ? (int)(ctx - t0) : Z16;
        row_ptrs(rows, k_cache, blocks, t0, ctx, block_size, row_bytes, kv_head, head_bytes);
        widen_block(buf, rows, num_kv, D, kv_type);
        for (int j = 0; j < num_q; j++) {
            const float *kb = buf + j / group * Z16 * D;
            __m512 acc[Z16];
            for (int r = 0; r < Z16; r++) acc[r] = _mm512_mul_ps(_mm512_loadu_ps(q + j * D), _mm512_load_ps(kb + r * D));
            for (int d = 16; d < D; d += 16) {
                const __m512 qv = _mm512_loadu_ps(q + j * D + d);
                for (int r = 0; r < Z16; r++) acc[r] = _mm512_fmadd_ps(qv, _mm512_load_ps(kb + r * D + d), acc[r]);
            }
            const __m512 dots = _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale));
            _mm512_mask_storeu_ps(scores + j * ctx + t0, (__mmask16)((1u << n) - 1), dots);
        }
    }
    softmax_rows(scores, num_q, ctx, out, D);
    /* Pass 2: out_j = sum_t p[j, t] * v_t, sixteen rows at a time in memory order. Per block and kv head, up to
     * Z16_HEADS(D) of its query heads keep their output rows in registers, and each V row is converted once
     * in registers and used by all of them (no widened copy: 45% fewer instructions than widening first). */
    for (int64_t t0 = 0; t0 < ctx; t0 += Z16) {
        const int n = ctx - t0 < Z16 ? (int)(ctx - t0) : Z16;
        row_ptrs(rows, v_cache, blocks, t0, ctx, block_size, row_bytes, kv_head, head_bytes);
        for (int r = 0; r < n; r++) /* the block's rows requested in memory order before the per-head passes */
            for (int64_t line = 0; line < num_kv * head_bytes; line += 64) _mm_prefetch(rows[r] + line, _MM_HINT_T0);
        for (int kv = 0; kv < num_kv; kv++)
            for (int j0 = kv * group; j0 < (kv + 1) * group; j0 += Z16_HEADS(D)) {
                const int nh = (kv + 1) * group - j0 < Z16_HEADS(D) ? (kv + 1) * group - j0 : Z16_HEADS(D);
                accumulate_values(rows, kv * head_bytes, scores + (int64_t)j0 * ctx + t0, ctx, n, nh, D, kv_type,
                                  out + (int64_t)j0 * D);
            }
    }
}

/* 16 dot products q . kb[r] (rows D apart, r < 16), scaled, stored to dst[0, n). */
static inline __attribute__((always_inline)) void dots16(const float *q, const float *kb, const int D, float scale,
                                                         float *dst, int n) {
    __m512 acc[Z16];
    for (int r = 0; r < Z16; r++) acc[r] = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_load_ps(kb + r * D));
    for (int d = 16; d < D; d += 16) {
        const __m512 qv = _mm512_loadu_ps(q + d);
        for (int r = 0; r < Z16; r++) acc[r] = _mm512_fmadd_ps(qv, _mm512_load_ps(kb + r * D + d), acc[r]);
    }
    _mm512_mask_storeu_ps(dst, (__mmask16)((1u << n) - 1), _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
}

/* Causal attention for nq (<= CHUNK_TOKENS) consecutive tokens of one sequence at positions first_pos ..
 * first_pos + nq - 1 -- a prompt chunk -- against kv heads [kv_head, kv_head + num_kv): each K and V block is
 * widened once for all of them instead of once per token. q / out point at the first token's first query head,
 * tokens q_stride / out_stride floats apart; scores holds nq * num_kv * group rows of first_pos + nq floats. */
static inline __attribute__((always_inline)) void attend_chunk_z16(
    const float *q, int64_t q_stride, const void *k_cache, const void *v_cache, const int64_t *blocks,
    int64_t first_pos, int nq, int group, int num_kv_heads, const int D, int block_size, int kv_head, int num_kv,
    float scale, float *scores, float *out, int64_t out_stride, const int kv_type) {
    const int64_t head_bytes = kv_head_bytes(kv_type, D), row_bytes = num_kv_heads * head_bytes;
    const int64_t ctx = first_pos + nq, q_rows = (int64_t)num_kv * group;
    float buf[Z16 * MAX_WIDTH] __attribute__((aligned(64)));
    const char *rows[Z16];
    for (int64_t t0 = 0; t0 < ctx; t0 += Z16) {
        row_ptrs(rows, k_cache, blocks, t0, ctx, block_size, row_bytes, kv_head, head_bytes);
        widen_block(buf, rows, num_kv, D, kv_type);
        for (int i = 0; i < nq; i++) {
            const int64_t visible = first_pos + i + 1 - t0; /* keys of this block token i attends */
            if (visible <= 0) continue;
            for (int j = 0; j < q_rows; j++)
                dots16(q + i * q_stride + j * D, buf + j / group * Z16 * D, D, scale,
                       scores + (i * q_rows + j) * ctx + t0, visible < Z16 ? (int)visible : Z16);
        }
    }
    for (int i = 0; i < nq; i++)
        softmax_rows_strided(scores + i * q_rows * ctx, (int)q_rows, first_pos + i + 1, ctx, out + i * out_stride, D);
    for (int64_t t0 = 0; t0 < ctx; t0 += Z16) {
        row_ptrs(rows, v_cache, blocks, t0, ctx, block_size, row_bytes, kv_head, head_bytes);
        widen_block(buf, rows, num_kv, D, kv_type);
        for (int i = 0; i < nq; i++) {
            const int64_t visible = first_pos + i + 1 - t0;
            if (visible <= 0) continue;
            const int n = visible < Z16 ? (int)visible : Z16;
            for (int j = 0; j < q_rows; j++) {
                const float *p = scores + (i * q_rows + j) * ctx + t0, *vb = buf + j / group * Z16 * D;
                float *o = out + i * out_stride + j * D;
                __m512 acc[8];
                for (int c = 0; c < D / 16; c++) acc[c] = _mm512_loadu_ps(o + c * 16);
                for (int r = 0; r < n; r++) {
                    const __m512 pr = _mm512_set1_ps(p[r]);
                    for (int c = 0; c < D / 16; c++) acc[c] = _mm512_fmadd_ps(pr, _mm512_load_ps(vb + r * D + c * 16), acc[c]);
                }
                for (int c = 0; c < D / 16; c++) _mm512_storeu_ps(o + c * 16, acc[c]);
            }
        }
    }
}
