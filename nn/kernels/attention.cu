// attention.cu: causal scaled dot-product attention that never stores the (T, T) score matrix.
//
// For one head with queries Q, keys K, values V (each T x D) and scale c:
//
//     S = c Q K^T,  S_ij = -inf for j > i (causal mask),  P = softmax(S) row-wise,  O = P V
//
// Forward ("flash attention"): a block owns TILE query rows and walks over
// the key/value tiles at or before its diagonal. Each query row keeps a
// running maximum m, a running denominator l = sum_j exp(S_ij - m) and an
// unnormalised output acc = sum_j exp(S_ij - m) V_j. When a tile raises the
// maximum to m', what is already summed is rescaled by exp(m - m'), so after
// the last tile O_i = acc / l exactly, having seen each score once and kept
// only one tile of them. It also saves lse_i = m + log l, the log of the
// softmax denominator, which is all backward needs to rebuild P.
//
// Backward: with dO the output gradient,
//     P_ij = exp(S_ij - lse_i)                      (recomputed per tile)
//     dV = P^T dO,   dP = dO V^T
//     dS_ij = P_ij (dP_ij - D_i),   D_i = sum_j P_ij dP_ij = dO_i . O_i
//     dQ = c dS K,   dK = c dS^T Q
// D (row_dot) is one dot product per row, computed first. Then two kernels
// recompute the scores: one owns query tiles and sums dQ over key tiles, the
// other owns key tiles and sums dK and dV over query tiles. Each output has
// exactly one writer, so there are no atomics and results are reproducible.
//
// Threads: GROUP = 4 neighbouring threads share one row. Thread `part` of a
// group holds head-dim elements part, part + 4, part + 8, ... in registers,
// so a dot product is 4 partial sums added with two warp shuffles. The head
// dim D is at most DMAX, a compile-time size (32, 64 or 128) that fixes the
// register arrays; elements D..DMAX-1 are zero. Tiles in shared memory are
// float, whatever the storage type. T need not be a multiple of TILE: rows
// and keys past the end are masked.
//
// Layout: q, k, v, out and their gradients are (heads, T, D) contiguous,
// heads = batch * n_heads on gridDim.y; lse and row_dot are (heads, T) float.

#include "common.cuh"

#define TILE 32
#define GROUP 4
#define THREADS (TILE * GROUP)

// The sum of v over this thread's group of 4 neighbouring lanes.
__device__ __forceinline__ float group_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    v += __shfl_xor_sync(FULL_MASK, v, 2);
    return v;
}

// Rows row0 .. row0 + TILE - 1 of one head into shared memory as float,
// zero past the sequence end and past the head dim.
template <typename T, int DMAX>
__device__ __forceinline__ void load_tile(float (*tile)[DMAX], const T* __restrict__ src, long long head,
                                          int row0, int seq, int dim) {
    for (int e = threadIdx.x; e < TILE * DMAX; e += blockDim.x) {
        const int r = e / DMAX, d = e % DMAX, row = row0 + r;
        tile[r][d] = (row < seq && d < dim) ? to_float(src[head + static_cast<long long>(row) * dim + d]) : 0.0f;
    }
}

// This thread's share (every GROUP-th element) of one row, as float, times `factor`.
template <typename T, int PER>
__device__ __forceinline__ void load_row(float (&dst)[PER], const T* __restrict__ src, long long head, int row,
                                         int seq, int dim, int part, float factor) {
#pragma unroll
    for (int c = 0; c < PER; ++c) {
        const int d = c * GROUP + part;
        dst[c] = (row < seq && d < dim) ? to_float(src[head + static_cast<long long>(row) * dim + d]) * factor : 0.0f;
    }
}

template <typename T, int PER>
__device__ __forceinline__ void store_row(T* __restrict__ dst, const float (&src)[PER], long long head, int row,
                                          int seq, int dim, int part, float factor) {
    if (row >= seq) return;
#pragma unroll
    for (int c = 0; c < PER; ++c) {
        const int d = c * GROUP + part;
        if (d < dim) dst[head + static_cast<long long>(row) * dim + d] = from_float<T>(src[c] * factor);
    }
}

// The dot product of this group's row (held in registers) with row r of a shared tile.
template <int DMAX>
__device__ __forceinline__ float row_dot_tile(const float (&reg)[DMAX / GROUP], const float (*tile)[DMAX], int r,
                                              int part) {
    float dot = 0.0f;
#pragma unroll
    for (int c = 0; c < DMAX / GROUP; ++c) dot += reg[c] * tile[r][c * GROUP + part];
    return group_sum(dot);
}

template <typename T, int DMAX>
__device__ __forceinline__ void attention_forward(const T* __restrict__ q, const T* __restrict__ k,
                                                  const T* __restrict__ v, T* __restrict__ out,
                                                  float* __restrict__ lse, int seq, int dim, float scale) {
    constexpr int PER = DMAX / GROUP;
    __shared__ float k_tile[TILE][DMAX];
    __shared__ float v_tile[TILE][DMAX];
    const int part = threadIdx.x % GROUP;
    const int i = blockIdx.x * TILE + threadIdx.x / GROUP;  // this group's query row
    const long long head = static_cast<long long>(blockIdx.y) * seq * dim;

    float q_reg[PER], acc[PER];
    load_row<T, PER>(q_reg, q, head, i, seq, dim, part, scale);  // scaled once here, so S_ij = q_reg . k_j
#pragma unroll
    for (int c = 0; c < PER; ++c) acc[c] = 0.0f;
    float m = NEG_INF, l = 0.0f;

    // Keys after this tile's last query are masked for every row: stop at the diagonal.
    const int key_end = min(seq, static_cast<int>(blockIdx.x + 1) * TILE);
    for (int k0 = 0; k0 < key_end; k0 += TILE) {
        load_tile<T, DMAX>(k_tile, k, head, k0, seq, dim);
        load_tile<T, DMAX>(v_tile, v, head, k0, seq, dim);
        __syncthreads();

        float s[TILE];
        float tile_max = NEG_INF;
#pragma unroll
        for (int j = 0; j < TILE; ++j) {
            const float dot = row_dot_tile<DMAX>(q_reg, k_tile, j, part);
            const int key = k0 + j;
            s[j] = (key <= i && key < seq) ? dot : NEG_INF;
            tile_max = fmaxf(tile_max, s[j]);
        }
        // Key 0 lies in the first tile and is visible to every row, so m_new is
        // finite from the first tile on; the guard only keeps -inf - -inf out.
        const float m_new = fmaxf(m, tile_max);
        const float shift = m_new == NEG_INF ? 0.0f : m_new;
        const float rescale = expf(m - shift);  // 0 on the first tile (m = -inf)
        l *= rescale;
#pragma unroll
        for (int c = 0; c < PER; ++c) acc[c] *= rescale;
#pragma unroll
        for (int j = 0; j < TILE; ++j) {
            const float p = expf(s[j] - shift);  // 0 for masked keys
            l += p;
#pragma unroll
            for (int c = 0; c < PER; ++c) acc[c] += p * v_tile[j][c * GROUP + part];
        }
        m = m_new;
        __syncthreads();  // everyone is done with this tile before the next load overwrites it
    }

    store_row<T, PER>(out, acc, head, i, seq, dim, part, 1.0f / l);
    if (i < seq && part == 0) lse[static_cast<long long>(blockIdx.y) * seq + i] = m + logf(l);
}

// D_i = dO_i . O_i for every row (backward's first step).
template <typename T>
__device__ __forceinline__ void attention_row_dot(const T* __restrict__ out, const T* __restrict__ dout,
                                                  float* __restrict__ row_dot, int seq, int dim) {
    const int part = threadIdx.x % GROUP;
    const int i = blockIdx.x * TILE + threadIdx.x / GROUP;
    const long long at = (static_cast<long long>(blockIdx.y) * seq + i) * dim;
    float sum = 0.0f;
    if (i < seq) {
        for (int d = part; d < dim; d += GROUP) sum += to_float(out[at + d]) * to_float(dout[at + d]);
    }
    sum = group_sum(sum);
    if (i < seq && part == 0) row_dot[static_cast<long long>(blockIdx.y) * seq + i] = sum;
}

// dQ for one tile of query rows: dQ_i = c sum_j dS_ij K_j over the keys j <= i.
template <typename T, int DMAX>
__device__ __forceinline__ void attention_backward_dq(const T* __restrict__ q, const T* __restrict__ k,
                                                      const T* __restrict__ v, const T* __restrict__ dout,
                                                      const float* __restrict__ lse,
                                                      const float* __restrict__ row_dot, T* __restrict__ dq, int seq,
                                                      int dim, float scale) {
    constexpr int PER = DMAX / GROUP;
    __shared__ float k_tile[TILE][DMAX];
    __shared__ float v_tile[TILE][DMAX];
    const int part = threadIdx.x % GROUP;
    const int i = blockIdx.x * TILE + threadIdx.x / GROUP;
    const long long head = static_cast<long long>(blockIdx.y) * seq * dim;
    const bool row_ok = i < seq;
    const float row_lse = row_ok ? lse[static_cast<long long>(blockIdx.y) * seq + i] : 0.0f;
    const float row_d = row_ok ? row_dot[static_cast<long long>(blockIdx.y) * seq + i] : 0.0f;

    float q_reg[PER], do_reg[PER], acc[PER];
    load_row<T, PER>(q_reg, q, head, i, seq, dim, part, scale);
    load_row<T, PER>(do_reg, dout, head, i, seq, dim, part, 1.0f);
#pragma unroll
    for (int c = 0; c < PER; ++c) acc[c] = 0.0f;

    const int key_end = min(seq, static_cast<int>(blockIdx.x + 1) * TILE);
    for (int k0 = 0; k0 < key_end; k0 += TILE) {
        load_tile<T, DMAX>(k_tile, k, head, k0, seq, dim);
        load_tile<T, DMAX>(v_tile, v, head, k0, seq, dim);
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < TILE; ++j) {
            const float s = row_dot_tile<DMAX>(q_reg, k_tile, j, part);
            const float dp = row_dot_tile<DMAX>(do_reg, v_tile, j, part);
            const int key = k0 + j;
            const float p = (row_ok && key <= i && key < seq) ? expf(s - row_lse) : 0.0f;
            const float ds = p * (dp - row_d);
#pragma unroll
            for (int c = 0; c < PER; ++c) acc[c] += ds * k_tile[j][c * GROUP + part];
        }
        __syncthreads();
    }
    store_row<T, PER>(dq, acc, head, i, seq, dim, part, scale);
}

// dK and dV for one tile of key rows, summed over the query rows i >= j.
template <typename T, int DMAX>
__device__ __forceinline__ void attention_backward_dkdv(const T* __restrict__ q, const T* __restrict__ k,
                                                        const T* __restrict__ v, const T* __restrict__ dout,
                                                        const float* __restrict__ lse,
                                                        const float* __restrict__ row_dot, T* __restrict__ dk,
                                                        T* __restrict__ dv, int seq, int dim, float scale) {
    constexpr int PER = DMAX / GROUP;
    __shared__ float q_tile[TILE][DMAX];
    __shared__ float do_tile[TILE][DMAX];
    __shared__ float lse_tile[TILE], d_tile[TILE];
    const int part = threadIdx.x % GROUP;
    const int j = blockIdx.x * TILE + threadIdx.x / GROUP;  // this group's key row
    const long long head = static_cast<long long>(blockIdx.y) * seq * dim;
    const long long stats = static_cast<long long>(blockIdx.y) * seq;

    float k_reg[PER], v_reg[PER], dk_acc[PER], dv_acc[PER];
    load_row<T, PER>(k_reg, k, head, j, seq, dim, part, scale);
    load_row<T, PER>(v_reg, v, head, j, seq, dim, part, 1.0f);
#pragma unroll
    for (int c = 0; c < PER; ++c) dk_acc[c] = dv_acc[c] = 0.0f;

    // Queries before this key tile cannot see its keys: start at the diagonal.
    for (int q0 = blockIdx.x * TILE; q0 < seq; q0 += TILE) {
        load_tile<T, DMAX>(q_tile, q, head, q0, seq, dim);
        load_tile<T, DMAX>(do_tile, dout, head, q0, seq, dim);
        if (threadIdx.x < TILE) {
            const int row = q0 + threadIdx.x;
            lse_tile[threadIdx.x] = row < seq ? lse[stats + row] : 0.0f;
            d_tile[threadIdx.x] = row < seq ? row_dot[stats + row] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int r = 0; r < TILE; ++r) {
            const int i = q0 + r;
            const float s = row_dot_tile<DMAX>(k_reg, q_tile, r, part);
            const float dp = row_dot_tile<DMAX>(v_reg, do_tile, r, part);
            const float p = (j < seq && j <= i && i < seq) ? expf(s - lse_tile[r]) : 0.0f;
            const float ds = p * (dp - d_tile[r]);
#pragma unroll
            for (int c = 0; c < PER; ++c) {
                dv_acc[c] += p * do_tile[r][c * GROUP + part];
                dk_acc[c] += ds * q_tile[r][c * GROUP + part];
            }
        }
        __syncthreads();
    }
    store_row<T, PER>(dk, dk_acc, head, j, seq, dim, part, scale);
    store_row<T, PER>(dv, dv_acc, head, j, seq, dim, part, 1.0f);
}

// Entry points: attention_forward_f32_d64, attention_backward_dq_bf16_d128, ...
// (grid: (ceil(T / TILE), heads), block: THREADS) and attention_row_dot_f32, ...
#define ATTENTION_ENTRIES_DIM(T, S, DMAX)                                                                      \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_forward_##S##_d##DMAX(                     \
        const T* q, const T* k, const T* v, T* out, float* lse, int seq, int dim, float scale) {               \
        attention_forward<T, DMAX>(q, k, v, out, lse, seq, dim, scale);                                        \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_backward_dq_##S##_d##DMAX(                 \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* row_dot, T* dq,      \
        int seq, int dim, float scale) {                                                                       \
        attention_backward_dq<T, DMAX>(q, k, v, dout, lse, row_dot, dq, seq, dim, scale);                      \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_backward_dkdv_##S##_d##DMAX(               \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* row_dot, T* dk,      \
        T* dv, int seq, int dim, float scale) {                                                                \
        attention_backward_dkdv<T, DMAX>(q, k, v, dout, lse, row_dot, dk, dv, seq, dim, scale);                \
    }

#define ATTENTION_ENTRIES(T, S)                                                                                \
    ATTENTION_ENTRIES_DIM(T, S, 32)                                                                            \
    ATTENTION_ENTRIES_DIM(T, S, 64)                                                                            \
    ATTENTION_ENTRIES_DIM(T, S, 128)                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                      \
        attention_row_dot_##S(const T* out, const T* dout, float* row_dot, int seq, int dim) {                 \
        attention_row_dot<T>(out, dout, row_dot, seq, dim);                                                    \
    }

FOR_EACH_DTYPE(ATTENTION_ENTRIES)
