/* The int8 matmul on AMX tiles, included by int8_gemm.c in AVX-512 VNNI builds (see its header): the same
 * packed weights, codes, rescale and modes; yaie_i8_set_amx switches it on where the CPU has AMX-INT8 and the
 * OS grants the tile state. */
#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
#define HAVE_AMX 1

/* 0: off; 1: on (the OS granted the tile state to this process). Set once by yaie_i8_set_amx, before any
 * matmul runs; read by every call. */
static int amx_enabled = 0;

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0-3: int32 sums (16 channels each); 4-5: activation rows (16 x 64 codes); 6-7: weights (64 x 16).
 * rows: how many activation rows the A and C tiles hold (16, or all of M when M < 16). */
static void amx_configure(int rows) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = t < 6 ? (uint8_t)rows : 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* C tile `sums` (rows x 16 int32) -> rescaled floats for rows [first, rows) of the block at row r0. */
/* Rows [first, rows) of a stored C tile (buf [16][16] int32) -> rescaled floats at rows r0 + r, columns col..+16:
 * the columns' constants loaded once, the rows' scales read directly. */
static inline __attribute__((always_inline)) void amx_store(const i8_gemm_args *g, const int32_t *buf, int64_t r0,
                                                            int first, int rows, int64_t col) {
    const __m512i wsum = _mm512_loadu_si512(g->wsum + col);
    const __m512 w_scale = _mm512_loadu_ps(g->w_scale + col);
    const __m512 bias = g->bias ? _mm512_loadu_ps(g->bias + col) : _mm512_setzero_ps();
    const float *a_scale = g->a_scale + r0;
    float *y = g->y + r0 * g->ldy + col;
    const int64_t ldy = g->ldy;
    for (int r = first; r < rows; r++) {
        const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(buf + r * 16), wsum));
        __m512 out = _mm512_fmadd_ps(_mm512_mul_ps(v, _mm512_set1_ps(a_scale[r])), w_scale, bias);
        if (g->best_value) {
            argmax_update(g, out, r0 + r, col);
            continue;
        }
        if (g->accumulate) out = _mm512_add_ps(_mm512_loadu_ps(y + r * ldy), out);
        _mm512_storeu_ps(y + r * ldy, out);
    }
}

/* SwiGLU mode: rows [first, rows) of a gate tile's and its up tile's stored sums -> silu(gate) * up. */
static inline __attribute__((always_inline)) void amx_store_swiglu(const i8_gemm_args *g, const int32_t *gate,
                                                                   const int32_t *up, int64_t r0, int first,
                                                                   int rows, int64_t col) {
    for (int r = first; r < rows; r++)
        store_swiglu(g, _mm512_load_si512(gate + r * 16), _mm512_load_si512(up + r * 16), r0 + r, col);
}

/* Row blocks at r0 (and r1 when MB == 2) x NT 16-channel tiles from t0, over all of K. MB == 2 pairs with
 * NT <= 2 (4 sum tiles); MB == 1 takes up to 4 channel tiles. skip0/skip1: leading rows of a block that an
 * earlier block already produced (the last block of an M that is not a multiple of 16 overlaps its neighbour). */
static inline __attribute__((always_inline)) void amx_kernel(const i8_gemm_args *g, int64_t r0, int skip0,
                                                             int64_t r1, int skip1, int rows, int64_t t0,
                                                             const int MB, const int NT, const int prefetch) {
    const int64_t k4s = g->k / 4, tile_bytes = k4s * 64;
    const uint8_t *a0 = g->a + r0 * g->k, *a1 = g->a + r1 * g->k;
    const int8_t *w = g->packed + t0 * tile_bytes;
    const int64_t second = (g->up_tiles ? g->up_tiles : 1) * tile_bytes; /* the panel's second tile (SwiGLU: up) */
    /* The next panel's weights, requested while this one computes: tile loads that miss the cache stall the
     * tile unit, so weights streamed from memory must arrive early. SwiGLU: the next gate tile and its up tile. */
    const int has_next = g->up_tiles ? t0 + 1 < g->up_tiles : t0 + 2 * NT <= g->n / TILE_N;
    const int8_t *next = has_next ? w + (g->up_tiles ? 1 : NT) * tile_bytes : NULL;
    _tile_zero(0);
    if (NT > 1 || MB > 1) _tile_zero(1);
    if (NT > 2 || MB > 1) _tile_zero(2);
    if (NT > 3 || (MB > 1 && NT > 1)) _tile_zero(3);
    for (int64_t kb = 0; kb < g->k / 64; kb++) {
        const int8_t *b = w + kb * 1024;
        if (prefetch && next)
            for (int j = 0; j < NT; j++)
                for (int line = 0; line < 1024; line += 64)
                    _mm_prefetch((const char *)next + (j ? second + (j - 1) * tile_bytes : 0) + kb * 1024 + line,
                                 _MM_HINT_T0);
        _tile_loadd(4, a0 + kb * 64, g->k);
        if (MB > 1) _tile_loadd(5, a1 + kb * 64, g->k);
        _tile_loadd(6, b, 64);
        _tile_dpbusd(0, 4, 6);
        if (MB > 1) _tile_dpbusd(2, 5, 6);
        if (NT > 1) {
            _tile_loadd(7, b + second, 64);
            _tile_dpbusd(1, 4, 7);
            if (MB > 1) _tile_dpbusd(3, 5, 7);
        }
        if (NT > 2) {
            _tile_loadd(6, b + 2 * tile_bytes, 64);
            _tile_dpbusd(2, 4, 6);
        }
        if (NT > 3) {
            _tile_loadd(7, b + 3 * tile_bytes, 64);
            _tile_dpbusd(3, 4, 7);
        }
    }
    /* Every sum tile is stored before any is read back: a load right behind a tile store waits for it. */
    int32_t buf[4][16 * 16] __attribute__((aligned(64)));
    const int64_t col = t0 * TILE_N;
    _tile_stored(0, buf[0], 64);
    if (NT > 1 || MB > 1) _tile_stored(1, buf[1], 64);
    if (NT > 2 || MB > 1) _tile_stored(2, buf[2], 64);
    if (NT > 3 || (MB > 1 && NT > 1)) _tile_stored(3, buf[3], 64);
    if (g->up_tiles) { /* NT == 2: tiles 0 / 2 gate, 1 / 3 up */
        amx_store_swiglu(g, buf[0], buf[1], r0, skip0, rows, col);
        if (MB > 1) amx_store_swiglu(g, buf[2], buf[3], r1, skip1, rows, col);
        return;
    }
    amx_store(g, buf[0], r0, skip0, rows, col);
    if (MB > 1) {
        amx_store(g, buf[2], r1, skip1, rows, col);
        if (NT > 1) {
            amx_store(g, buf[1], r0, skip0, rows, col + TILE_N);
            amx_store(g, buf[3], r1, skip1, rows, col + TILE_N);
        }
    } else {
        if (NT > 1) amx_store(g, buf[1], r0, skip0, rows, col + TILE_N);
        if (NT > 2) amx_store(g, buf[2], r0, skip0, rows, col + 2 * TILE_N);
        if (NT > 3) amx_store(g, buf[3], r0, skip0, rows, col + 3 * TILE_N);
    }
}

/* Row blocks of 16: start of block i, and how many of its leading rows an earlier block already covered. */
static inline void row_block(int64_t m, int64_t i, int64_t *r0, int *skip) {
    *r0 = i * 16;
    *skip = 0;
    if (*r0 + 16 > m && m > 16) { /* the overlapping last block */
        *skip = (int)(*r0 - (m - 16));
        *r0 = m - 16;
    }
}

/* Inside a parallel region: this thread's channel panels, then the barrier at the end of the omp for. A panel
 * is 4 channel tiles when M fits one row block (weights streamed once, 4 sums per activation tile), else 2,
 * with row blocks taken in pairs. */
static void amx_gemm_team(const i8_gemm_args *g) {
    const int rows = g->m < 16 ? (int)g->m : 16;
    const int64_t num_blocks = (g->m + 15) / 16;
    /* SwiGLU: panel t is gate tile t and its up tile (two tiles, whatever M) */
    const int64_t num_tiles = g->up_tiles ? 2 * g->up_tiles : g->n / TILE_N;
    const int64_t panel_tiles = num_blocks == 1 && !g->up_tiles ? 4 : 2;
    const int64_t num_panels = g->up_tiles ? g->up_tiles : (num_tiles + panel_tiles - 1) / panel_tiles;
    amx_configure(rows);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < num_panels; p++) {
        const int64_t t0 = g->up_tiles ? p : p * panel_tiles;
        const int nt = g->up_tiles ? 2 : (int)(num_tiles - t0 < panel_tiles ? num_tiles - t0 : panel_tiles);
        int64_t r0, r1;
        int skip0, skip1;
        if (num_blocks == 1) {
            switch (nt) {
            case 1: amx_kernel(g, 0, 0, 0, 0, rows, t0, 1, 1, 1); break;
            case 2: amx_kernel(g, 0, 0, 0, 0, rows, t0, 1, 2, 1); break;
            case 3: amx_kernel(g, 0, 0, 0, 0, rows, t0, 1, 3, 1); break;
            default: amx_kernel(g, 0, 0, 0, 0, rows, t0, 1, 4, 1); break;
            }
            continue;
        }
        int64_t i = 0;
        for (; i + 1 < num_blocks; i += 2) {
            row_block(g->m, i, &r0, &skip0);
            row_block(g->m, i + 1, &r1, &skip1);
            if (nt == 2) amx_kernel(g, r0, skip0, r1, skip1, rows, t0, 2, 2, i == 0);
            else amx_kernel(g, r0, skip0, r1, skip1, rows, t0, 2, 1, i == 0);
        }
        if (i < num_blocks) {
            row_block(g->m, i, &r0, &skip0);
            if (nt == 2) amx_kernel(g, r0, skip0, r0, skip0, rows, t0, 1, 2, i == 0);
            else amx_kernel(g, r0, skip0, r0, skip0, rows, t0, 1, 1, i == 0);
        }
    }
}

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int yaie_i8_set_amx(int on) {
    if (on && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) on = 0;
    amx_enabled = on;
    return amx_enabled;
}

#else

int yaie_i8_set_amx(int on) {
    (void)on;
    return 0;
}

#endif
