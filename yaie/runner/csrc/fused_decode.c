/* A whole decode step of a Llama-family model with 4-bit or int8 weights, in one call: every layer's RMSNorm, fused QKV
 * projection (+bias), optional per-head q/k RMSNorm, rotary embedding, K/V write into the paged cache, paged
 * attention (csrc/paged_attention.c), output projection, residuals and the SwiGLU MLP, then the final norm.
 *
 * Why: at batch 1 the PyTorch path spends more time issuing ~30 small ops per layer than computing; here one
 * OpenMP team runs the step with one barrier per phase.
 *
 * Weights ([N, K]) come in one of two kinds for the whole model (model_desc.weight_kind):
 * - KIND_Q4_1 (K a multiple of 32): GGUF Q4_1 blocks of 32 along K, w = d * q + m with q in 0..15; a block is
 *   20 bytes: d and m as float16, then 16 bytes whose byte j = q[j] | q[j + 16] << 4. Activations are quantized
 *   per group of 32 to int8 (scale = max|a| / 127), as llama.cpp does for Q4_1 x Q8_1, and the dot product runs
 *   on bytes (AVX-VNNI when the CPU has it, else AVX2 maddubs).
 * - KIND_INT8: per-output-channel int8 packed for csrc/int8_gemm.c (AVX-512 VNNI builds only), activations
 *   quantized per token (scale = max|a| / 127): the arithmetic of the runner's Int8Linear.
 *
 * Scratch memory is the caller's (yaie_fused_workspace_bytes), allocated once: a step allocates nothing large.
 *
 * x [B, H] float32 holds the token embeddings on entry and the final-normed hidden states on return.
 * positions, slots [B]; block_table [B, max_blocks]; context_lens [B] (= position + 1). */
#include "../../attention/csrc/paged_attention.c"
#include "int8_gemm.c"

#include <omp.h>

#define KIND_Q4_1 0
#define KIND_INT8 1

#define QK 32
#define TILE_B 8

typedef struct {
    uint16_t d, m; /* float16 */
    uint8_t qs[QK / 2];
} block_q4_1;

typedef struct {
    const block_q4_1 *blocks; /* KIND_Q4_1: [N, K / 32] */
    const int8_t *packed;     /* KIND_INT8: int8_gemm.c's packing, with its wsum [N] and w_scale [N] */
    const int32_t *wsum;
    const float *w_scale;
    const float *bias; /* [N] or NULL */
    int64_t n, k;
} weight_desc;

typedef struct {
    const float *input_norm, *post_norm; /* [H] */
    const float *q_norm, *k_norm;        /* [D] or NULL */
    weight_desc qkv, o, gate_up, down;
    void *k_cache, *v_cache; /* [S, Hkv, D] of the kv_type (KV_I8: [S, Hkv, D + 4] bytes, see paged_attention.c) */
} layer_desc;

typedef struct {
    int64_t num_layers, hidden, num_heads, num_kv_heads, head_dim, intermediate;
    float eps, scale;
    int64_t block_size, kv_type, weight_kind; /* kv_type: paged_attention.c's KV_F32, KV_F16 or KV_BF16 */
    const float *cos, *sin; /* [max_position, D] */
    const float *final_norm;
    const layer_desc *layers;
    double *phase_seconds; /* NULL, or [NUM_PHASES] seconds that thread 0 adds each phase's wall time to */
} model_desc;

enum { PHASE_ELEMENTWISE, PHASE_MATMUL, PHASE_ROPE_KV, PHASE_ATTENTION, NUM_PHASES };

/* After a phase's closing barrier: charge the time since the last mark to `phase` (profiling only). */
static inline void mark_phase(const model_desc *m, int phase, double *last) {
    if (!m->phase_seconds || omp_get_thread_num() != 0) return;
    const double now = omp_get_wtime();
    m->phase_seconds[phase] += now - *last;
    *last = now;
}

/* Activations of B rows of K elements. KIND_Q4_1, per group: q [B, K] int8, d and dsum (= d * sum q) [B, K/32].
 * KIND_INT8, per row: q [B, K] codes + 128 as uint8 (int8_gemm.c's input), d [B] scales. */
typedef struct {
    int8_t *q;
    float *d, *dsum;
} q8_act;

#include "q4_matmul.c"

/* IEEE arithmetic in a fixed order and round-half-even, as csrc/int8_rows.c (and so Int8Linear) computes the
 * codes. */
__attribute__((optimize("no-fast-math", "finite-math-only", "no-trapping-math", "no-signed-zeros")))
static void quantize_token(const float *x, int64_t k, uint8_t *q, float *scale) {
    float amax = 0.f;
    for (int64_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float s = fmaxf(amax, 1e-12f) / 127.f, inv = 1.f / s;
    for (int64_t i = 0; i < k; i++) q[i] = (uint8_t)(int8_t)nearbyintf(x[i] * inv) ^ 0x80;
    *scale = s;
}

/* y (+)= W a for B rows in the model's weight kind; inside a parallel region, ends on a barrier. */
static void matmul(int64_t kind, const weight_desc *w, const q8_act *a, int64_t B, float *y, int64_t ldy,
                   int accumulate) {
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
    if (kind == KIND_INT8) {
        const i8_gemm_args g = {.a = (const uint8_t *)a->q, .a_scale = a->d, .packed = w->packed, .wsum = w->wsum,
                                .w_scale = w->w_scale, .bias = w->bias, .y = y, .ldy = ldy, .m = B, .n = w->n,
                                .k = w->k, .accumulate = accumulate};
        i8_gemm_any_team(&g);
        return;
    }
#endif
    (void)kind;
    q4_matmul(w, a, B, y, ldy, accumulate);
}

static float silu(float g) { return g / (1.f + expf(-g)); }

/* h [B, I] = silu(x W_gate) * (x W_up) for the fused [gate | up] weights; inside a parallel region, ends on a
 * barrier. int8 runs it as the matmul's epilogue (no [B, 2I] intermediate); Q4_1 through gu [B, 2I]. */
static void gate_up_silu(int64_t kind, const weight_desc *w, const q8_act *a, int64_t B, float *gu, float *h,
                         int64_t I) {
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
    if (kind == KIND_INT8 && I % TILE_N == 0) {
        const i8_gemm_args g = {.a = (const uint8_t *)a->q, .a_scale = a->d, .packed = w->packed, .wsum = w->wsum,
                                .w_scale = w->w_scale, .y = h, .ldy = I, .m = B, .n = w->n, .k = w->k,
                                .up_tiles = I / TILE_N};
        i8_gemm_any_team(&g);
        return;
    }
#endif
    matmul(kind, w, a, B, gu, 2 * I, 0);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < I; i++) h[b * I + i] = silu(gu[b * 2 * I + i]) * gu[b * 2 * I + I + i];
}

static void rms_norm(const float *x, const float *weight, int64_t n, float eps, float *out) {
    float ss = 0.f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * inv * weight[i];
}

/* Normalize (optional) and quantize each of B rows for the weight kind: x [B, K] -> a. */
static void norm_quantize(int64_t kind, const float *x, const float *weight, int64_t B, int64_t k, float eps,
                          float *tmp, q8_act *a) {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) {
        const float *row = x + b * k;
        if (weight) {
            rms_norm(row, weight, k, eps, tmp + b * k);
            row = tmp + b * k;
        }
        if (kind == KIND_INT8) quantize_token(row, k, (uint8_t *)a->q + b * k, a->d + b);
        else quantize_row(row, k, a->q + b * k, a->d + b * (k / QK), a->dsum + b * (k / QK));
    }
}

static void rope_head(float *x, const float *cos, const float *sin, int64_t dim) {
    const int64_t half = dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cos[i] - x2 * sin[i];
        x[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
    }
}

/* One kv head's D values of src float32 -> the cache's element type at `dst` (round to nearest even, as
 * PyTorch's casts; KV_I8: codes round(x * (1 / scale)) with scale = max|x| / 127, as runner/kv_layout.py). */
__attribute__((optimize("no-fast-math", "finite-math-only", "no-trapping-math", "no-signed-zeros")))
static void store_head(char *dst, const float *src, int64_t D, int kv_type) {
    if (kv_type == KV_F32) {
        memcpy(dst, src, sizeof(float) * D);
        return;
    }
    uint16_t *half = (uint16_t *)dst;
    int64_t i = 0;
    if (kv_type == KV_F16) {
        for (; i + 8 <= D; i += 8)
            _mm_storeu_si128((__m128i *)(half + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
        for (; i < D; i++) half[i] = _cvtss_sh(src[i], 0);
    } else if (kv_type == KV_BF16) {
        for (; i < D; i++) {
            uint32_t bits;
            memcpy(&bits, src + i, sizeof bits);
            half[i] = (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
        }
    } else {
        float amax = 0.f;
        for (; i < D; i++) amax = fmaxf(amax, fabsf(src[i]));
        const float scale = fmaxf(amax, 1e-12f) / 127.f, inv = 1.f / scale;
        for (i = 0; i < D; i++) ((int8_t *)dst)[i] = (int8_t)nearbyintf(src[i] * inv);
        memcpy(dst + D, &scale, sizeof scale);
    }
}

/* q/k norm, rotary and the K/V write for token b; qkv row [Hq*D | Hkv*D | Hkv*D]. */
static void position_and_store(const model_desc *m, const layer_desc *l, float *qkv, int64_t pos, int64_t slot) {
    const int64_t D = m->head_dim, Hq = m->num_heads, Hkv = m->num_kv_heads;
    const float *cos = m->cos + pos * D, *sin = m->sin + pos * D;
    for (int64_t h = 0; h < Hq + Hkv; h++) {
        float *head = qkv + h * D;
        const float *norm = h < Hq ? l->q_norm : l->k_norm;
        if (norm) rms_norm(head, norm, D, m->eps, head);
        rope_head(head, cos, sin, D);
    }
    const int64_t head_bytes = kv_head_bytes((int)m->kv_type, (int)D), row = slot * Hkv * head_bytes;
    for (int64_t h = 0; h < Hkv; h++) {
        store_head((char *)l->k_cache + row + h * head_bytes, qkv + (Hq + h) * D, D, (int)m->kv_type);
        store_head((char *)l->v_cache + row + h * head_bytes, qkv + (Hq + Hkv + h) * D, D, (int)m->kv_type);
    }
}


/* The step's scratch, carved from one caller-owned buffer (64-byte aligned pieces). */
typedef struct {
    float *tmp, *qkv, *attn, *gu;
    q8_act a;
} workspace;

static int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Lays the pieces out from `base` (NULL: only sizes them); returns the bytes needed for B rows. */
static int64_t carve(const model_desc *m, int64_t B, char *base, workspace *w) {
    const int64_t H = m->hidden, Hq = m->num_heads, D = m->head_dim, I = m->intermediate;
    const int64_t qkv_dim = (Hq + 2 * m->num_kv_heads) * D, kmax = max3(H, Hq * D, I);
    const int64_t sizes[7] = {4 * B * (kmax > qkv_dim ? kmax : qkv_dim), 4 * B * qkv_dim, 4 * B * Hq * D,
                              4 * B * 2 * I, B * kmax, 4 * B * (kmax / QK + 1), 4 * B * (kmax / QK + 1)};
    void *parts[7];
    int64_t offset = 0;
    for (int i = 0; i < 7; i++) {
        parts[i] = base ? base + offset : NULL;
        offset += (sizes[i] + 63) / 64 * 64;
    }
    *w = (workspace){parts[0], parts[1], parts[2], parts[3], {parts[4], parts[5], parts[6]}};
    return offset;
}

int64_t yaie_fused_workspace_bytes(const model_desc *m, int64_t B) {
    workspace w;
    return carve(m, B, NULL, &w);
}

/* One step's token metadata. Runs: tokens [run_start[i], run_start[i + 1]) belong to one sequence (the same
 * block-table row, consecutive positions: a prompt chunk, at most CHUNK_TOKENS) -- a decode is a run of one. */
typedef struct {
    int64_t B, max_blocks, num_runs;
    const int64_t *positions, *slots, *block_table, *context_lens, *run_start;
    int num_kv; /* kv heads per attention task: all of them when there are enough tasks to share out, else one */
} step_desc;

static int64_t find_runs(int64_t B, const int64_t *positions, const int64_t *block_table, int64_t max_blocks,
                         int64_t *run_start) {
    int64_t num_runs = 0;
    for (int64_t b = 0; b < B; b++) {
        const int joins = b > 0 && b - run_start[num_runs - 1] < CHUNK_TOKENS && positions[b] == positions[b - 1] + 1 &&
                          !memcmp(block_table + b * max_blocks, block_table + (b - 1) * max_blocks,
                                  sizeof(int64_t) * max_blocks);
        if (!joins) run_start[num_runs++] = b;
    }
    run_start[num_runs] = B;
    return num_runs;
}

/* Attention for every run: a prompt chunk's tokens together (each K/V block widened once for all of them), a
 * decode alone; per task all kv heads or one (step_desc.num_kv). `scores` is this thread's. */
static void attend_all(const model_desc *m, const layer_desc *l, const float *qkv, float *attn, const step_desc *s,
                       float *scores) {
    const int64_t D = m->head_dim, Hq = m->num_heads, Hkv = m->num_kv_heads, group = Hq / Hkv;
    const int64_t qkv_dim = (Hq + 2 * Hkv) * D, tasks_per_run = Hkv / s->num_kv;
    const attend_fn attend_one = pick_attend((int)D, (int)m->kv_type);
    const attend_chunk_fn attend_chunk = pick_attend_chunk((int)D, (int)m->kv_type);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < s->num_runs * tasks_per_run; task++) {
        const int64_t run = task / tasks_per_run, h = task % tasks_per_run * s->num_kv;
        const int64_t first = s->run_start[run], nq = s->run_start[run + 1] - first;
        const float *q = qkv + first * qkv_dim + h * group * D;
        float *out = attn + (first * Hq + h * group) * D;
        if (nq > 1 && attend_chunk) {
            attend_chunk(q, qkv_dim, l->k_cache, l->v_cache, s->block_table + first * s->max_blocks,
                         s->positions[first], (int)nq, (int)group, (int)Hkv, (int)m->block_size, (int)h, s->num_kv,
                         m->scale, scores, out, Hq * D);
            continue;
        }
        for (int64_t b = first; b < first + nq; b++)
            attend_one(q + (b - first) * qkv_dim, l->k_cache, l->v_cache, s->block_table + b * s->max_blocks,
                       s->context_lens[b], (int)group, (int)Hkv, (int)D, (int)m->block_size, (int)h, s->num_kv,
                       m->scale, scores, out + (b - first) * Hq * D);
    }
}

/* One decoder layer for the step's tokens, inside the parallel region: x [B, H] updated in place. */
static void decoder_layer(const model_desc *m, const layer_desc *l, float *x, const step_desc *s, const workspace *w,
                          float *scores) {
    const int64_t H = m->hidden, D = m->head_dim, Hq = m->num_heads, I = m->intermediate, kind = m->weight_kind;
    const int64_t qkv_dim = (Hq + 2 * m->num_kv_heads) * D, B = s->B;
    q8_act a = w->a;
    double mark = m->phase_seconds ? omp_get_wtime() : 0.;
    norm_quantize(kind, x, l->input_norm, B, H, m->eps, w->tmp, &a);
    mark_phase(m, PHASE_ELEMENTWISE, &mark);
    matmul(kind, &l->qkv, &a, B, w->qkv, qkv_dim, 0);
    mark_phase(m, PHASE_MATMUL, &mark);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) position_and_store(m, l, w->qkv + b * qkv_dim, s->positions[b], s->slots[b]);
    mark_phase(m, PHASE_ROPE_KV, &mark);
    attend_all(m, l, w->qkv, w->attn, s, scores);
    mark_phase(m, PHASE_ATTENTION, &mark);
    norm_quantize(kind, w->attn, NULL, B, Hq * D, m->eps, w->tmp, &a);
    mark_phase(m, PHASE_ELEMENTWISE, &mark);
    matmul(kind, &l->o, &a, B, x, H, 1);
    mark_phase(m, PHASE_MATMUL, &mark);
    norm_quantize(kind, x, l->post_norm, B, H, m->eps, w->tmp, &a);
    mark_phase(m, PHASE_ELEMENTWISE, &mark);
    gate_up_silu(kind, &l->gate_up, &a, B, w->gu, w->tmp, I);
    mark_phase(m, PHASE_MATMUL, &mark);
    norm_quantize(kind, w->tmp, NULL, B, I, m->eps, w->tmp, &a);
    mark_phase(m, PHASE_ELEMENTWISE, &mark);
    matmul(kind, &l->down, &a, B, x, H, 1);
    mark_phase(m, PHASE_MATMUL, &mark);
}

/* Returns 0; -1 for a model shape or weight kind this build cannot run; -2 when out of memory; -3 when the
 * workspace is smaller than yaie_fused_workspace_bytes(m, B). */
int yaie_fused_decode(const model_desc *m, float *x, int64_t B, const int64_t *positions, const int64_t *slots,
                      const int64_t *block_table, int64_t max_blocks, const int64_t *context_lens, void *scratch,
                      int64_t scratch_bytes, int num_threads) {
    const int64_t H = m->hidden, D = m->head_dim, Hq = m->num_heads, Hkv = m->num_kv_heads, I = m->intermediate;
    const int64_t group = Hq / Hkv;
    if (group > MAX_GROUP || group * Hkv != Hq) return -1;
    if (m->weight_kind == KIND_Q4_1 && (H % QK || (Hq * D) % QK || I % QK)) return -1;
    if (m->weight_kind == KIND_INT8 && !yaie_i8_gemm_available()) return -1;
    if (m->kv_type < KV_F32 || m->kv_type > KV_I8) return -1;
    workspace w;
    if (carve(m, B, (char *)scratch, &w) > scratch_bytes) return -3;
    int64_t max_ctx = 1;
    for (int64_t b = 0; b < B; b++) max_ctx = context_lens[b] > max_ctx ? context_lens[b] : max_ctx;
    int64_t *run_start = malloc(sizeof(int64_t) * (B + 1));
    if (!run_start) return -2;
    step_desc s = {B, max_blocks, 0, positions, slots, block_table, context_lens, run_start, 1};
    s.num_runs = find_runs(B, positions, block_table, max_blocks, run_start);
    if (s.num_runs >= 4 * num_threads && Hkv * D <= MAX_WIDTH) s.num_kv = (int)Hkv;
    /* Per thread: a decode's scores or a chunk task's scratch, over the longest context. */
    const size_t decode_bytes = attend_scratch_bytes(s.num_kv, (int)group, max_ctx);
    const size_t chunk_bytes = chunk_scratch_bytes(s.num_kv, (int)group, (int)D, max_ctx);
    const size_t scratch_per_thread = ((decode_bytes > chunk_bytes ? decode_bytes : chunk_bytes) + 63) / 64 * 64;
    char *scores_all = malloc(scratch_per_thread * num_threads);
    if (!scores_all) {
        free(run_start);
        return -2;
    }
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = (float *)(scores_all + omp_get_thread_num() * scratch_per_thread);
        for (int64_t li = 0; li < m->num_layers; li++) decoder_layer(m, &m->layers[li], x, &s, &w, scores);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) rms_norm(x + b * H, m->final_norm, H, m->eps, x + b * H);
    }
    free(scores_all);
    free(run_start);
    return 0;
}
