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

/* Chunk attention works on the transposed problem: the queries of one kv head (m = nq * group rows, j = token *
 * group + head) sit in the lanes of nvec = ceil(m / 16) vectors, so each key row's scores for sixteen queries come
 * from D broadcast-FMAs with no horizontal sums, the softmax over keys runs down columns, and each V row is
 * broadcast into a tile of output rows held in registers. */
#define CHUNK_QV 3 /* query vectors per register tile of the score pass (x CHUNK_KR key rows accumulators) */
#define CHUNK_KR 8

/* st[r, v * 16 + l] = k[r] . qt[:, v * 16 + l] for r < CHUNK_KR, v < nv (qt, st rows mp floats apart). */
static inline __attribute__((always_inline)) void score_tile(const float *qt, int64_t mp, const float *k, const int D,
                                                             float *st, const int nv) {
    __m512 acc[CHUNK_QV][CHUNK_KR];
    for (int v = 0; v < nv; v++)
        for (int r = 0; r < CHUNK_KR; r++) acc[v][r] = _mm512_setzero_ps();
    for (int d = 0; d < D; d++) {
        __m512 qv[CHUNK_QV];
        for (int v = 0; v < nv; v++) qv[v] = _mm512_loadu_ps(qt + d * mp + v * 16);
        for (int r = 0; r < CHUNK_KR; r++) {
            const __m512 kb = _mm512_set1_ps(k[r * D + d]);
            for (int v = 0; v < nv; v++) acc[v][r] = _mm512_fmadd_ps(kb, qv[v], acc[v][r]);
        }
    }
    for (int r = 0; r < CHUNK_KR; r++)
        for (int v = 0; v < nv; v++) _mm512_storeu_ps(st + r * mp + v * 16, acc[v][r]);
}

/* orow[h] += sum_r p[r, h] * vb[r] for h < nh, r < n (p rows mp apart, vb rows D apart), in registers. */
static inline __attribute__((always_inline)) void value_tile(const float *p, int64_t mp, const float *vb, int n,
                                                             const int D, float *const *orow, const int nh) {
    __m512 acc[6][8];
    for (int h = 0; h < nh; h++)
        for (int c = 0; c < D / 16; c++) acc[h][c] = _mm512_loadu_ps(orow[h] + c * 16);
    for (int r = 0; r < n; r++) {
        __m512 v[8];
        for (int c = 0; c < D / 16; c++) v[c] = _mm512_load_ps(vb + r * D + c * 16);
        for (int h = 0; h < nh; h++) {
            const __m512 pr = _mm512_set1_ps(p[r * mp + h]);
            for (int c = 0; c < D / 16; c++) acc[h][c] = _mm512_fmadd_ps(pr, v[c], acc[h][c]);
        }
    }
    for (int h = 0; h < nh; h++)
        for (int c = 0; c < D / 16; c++) _mm512_storeu_ps(orow[h] + c * 16, acc[h][c]);
}

/* The lanes (queries j = lane) that see key t: query j (token j / group, at position first_pos + j / group) sees
 * keys t <= first_pos + j / group. */
static inline __mmask16 sees_key(__m512i lane, int64_t t, int64_t first_pos, int group) {
    return t <= first_pos ? 0xFFFF : _mm512_cmpge_epi32_mask(lane, _mm512_set1_epi32((int)((t - first_pos) * group)));
}

/* Each column (query) of st [ctx, mp] -> its causal softmax over keys, unnormalised; inv[j] = 1 / its sum. */
static void softmax_columns(float *st, int64_t mp, int64_t ctx, int64_t first_pos, int group, float *inv) {
    for (int64_t v = 0; v < mp / 16; v++) {
        float *col = st + v * 16;
        const __m512i lane = _mm512_add_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                              _mm512_set1_epi32((int)v * 16));
        __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
        for (int64_t t = 0; t < ctx; t++)
            mx = _mm512_mask_max_ps(mx, sees_key(lane, t, first_pos, group), mx, _mm512_loadu_ps(col + t * mp));
        for (int64_t t = 0; t < ctx; t++) {
            const __mmask16 seen = sees_key(lane, t, first_pos, group);
            const __m512 e = _mm512_maskz_mov_ps(seen, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(col + t * mp), mx)));
            _mm512_storeu_ps(col + t * mp, e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_storeu_ps(inv + v * 16, _mm512_div_ps(_mm512_set1_ps(1.f), sum));
    }
}

/* qt [num_kv, D, mp] <- the m query rows of each kv head (row j: token j / group, head j % group of the group;
 * tokens q_stride floats apart) transposed and times scale; lanes m..mp-1 zero. */
static void transpose_queries(const float *q, int64_t q_stride, int m, int64_t mp, int group, int num_kv, int D,
                              float scale, float *qt) {
    for (int kv = 0; kv < num_kv; kv++)
        for (int j = 0; j < mp; j++) {
            const float *qrow = q + (j / group) * q_stride + (kv * group + j % group) * D;
            for (int d = 0; d < D; d++) qt[((int64_t)kv * D + d) * mp + j] = j < m ? qrow[d] * scale : 0.f;
        }
}

/* row[0:D] *= s (D a multiple of 16). */
static inline void scale_row(float *row, float s, int D) {
    for (int c = 0; c < D / 16; c++) _mm512_storeu_ps(row + c * 16, _mm512_mul_ps(_mm512_loadu_ps(row + c * 16), _mm512_set1_ps(s)));
}

/* Causal attention for nq (<= CHUNK_TOKENS) consecutive tokens of one sequence at positions first_pos ..
 * first_pos + nq - 1 -- a prompt chunk -- against kv heads [kv_head, kv_head + num_kv): each K and V block is
 * widened once for all of them. q / out point at the first token's first query head, tokens q_stride / out_stride
 * floats apart; scratch holds chunk_scratch_bytes(num_kv, group, D, first_pos + nq). */
static inline __attribute__((always_inline)) void attend_chunk_z16(
    const float *q, int64_t q_stride, const void *k_cache, const void *v_cache, const int64_t *blocks,
    int64_t first_pos, int nq, int group, int num_kv_heads, const int D, int block_size, int kv_head, int num_kv,
    float scale, float *scratch, float *out, int64_t out_stride, const int kv_type) {
    const int64_t head_bytes = kv_head_bytes(kv_type, D), row_bytes = num_kv_heads * head_bytes;
    const int64_t ctx = first_pos + nq, ctx16 = (ctx + Z16 - 1) / Z16 * Z16;
    const int m = nq * group, nvec = (m + 15) / 16;
    const int64_t mp = (int64_t)nvec * 16;
    float *qt = scratch;                     /* [num_kv, D, mp]: the queries transposed, times scale */
    float *st = qt + (int64_t)num_kv * D * mp; /* [num_kv, ctx16, mp]: scores, then softmax weights */
    float *inv = st + (int64_t)num_kv * ctx16 * mp; /* [num_kv, mp] */
    float buf[Z16 * MAX_WIDTH] __attribute__((aligned(64)));
    const char *rows[Z16];
    float *orow[6];
    transpose_queries(q, q_stride, m, mp, group, num_kv, D, scale, qt);
    for (int64_t t0 = 0; t0 < ctx; t0 += Z16) {
        row_ptrs(rows, k_cache, blocks, t0, ctx, block_size, row_bytes, kv_head, head_bytes);
        widen_block(buf, rows, num_kv, D, kv_type);
        for (int kv = 0; kv < num_kv; kv++)
            for (int v0 = 0; v0 < nvec; v0 += CHUNK_QV)
                for (int r0 = 0; r0 < Z16; r0 += CHUNK_KR) {
                    const float *qk = qt + (int64_t)kv * D * mp + v0 * 16, *kb = buf + (kv * Z16 + r0) * D;
                    float *s = st + ((int64_t)kv * ctx16 + t0 + r0) * mp + v0 * 16;
                    switch (nvec - v0) {
                    case 1: score_tile(qk, mp, kb, D, s, 1); break;
                    case 2: score_tile(qk, mp, kb, D, s, 2); break;
                    default: score_tile(qk, mp, kb, D, s, CHUNK_QV);
                    }
                }
    }
    for (int kv = 0; kv < num_kv; kv++) {
        softmax_columns(st + (int64_t)kv * ctx16 * mp, mp, ctx, first_pos, group, inv + kv * mp);
        for (int j = 0; j < m; j++)
            memset(out + (j / group) * out_stride + (kv * group + j % group) * D, 0, sizeof(float) * D);
    }
    for (int64_t t0 = 0; t0 < ctx; t0 += Z16) {
        const int n = ctx - t0 < Z16 ? (int)(ctx - t0) : Z16;
        row_ptrs(rows, v_cache, blocks, t0, ctx, block_size, row_bytes, kv_head, head_bytes);
        widen_block(buf, rows, num_kv, D, kv_type);
        for (int kv = 0; kv < num_kv; kv++)
            for (int j0 = 0; j0 < m; j0 += Z16_HEADS(D)) {
                const int nh = m - j0 < Z16_HEADS(D) ? m - j0 : Z16_HEADS(D);
                for (int h = 0; h < nh; h++)
                    orow[h] = out + (j0 + h) / group * out_stride + (kv * group + (j0 + h) % group) * D;
                const float *p = st + ((int64_t)kv * ctx16 + t0) * mp + j0, *vb = buf + kv * Z16 * D;
                switch (nh) {
                case 1: value_tile(p, mp, vb, n, D, orow, 1); break;
                case 2: value_tile(p, mp, vb, n, D, orow, 2); break;
                case 3: value_tile(p, mp, vb, n, D, orow, 3); break;
                case 4: value_tile(p, mp, vb, n, D, orow, 4); break;
                case 5: value_tile(p, mp, vb, n, D, orow, 5); break;
                default: value_tile(p, mp, vb, n, D, orow, Z16_HEADS(D));
                }
            }
    }
    for (int kv = 0; kv < num_kv; kv++)
        for (int j = 0; j < m; j++)
            scale_row(out + (j / group) * out_stride + (kv * group + j % group) * D, inv[kv * mp + j], D);
}
