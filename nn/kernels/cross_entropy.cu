// cross_entropy.cu: softmax cross-entropy over rows of logits, forward and backward fused.
//
// For a row x (C logits) with target class t:
//
//     lse  = log sum_j exp(x_j)           (the log of softmax's denominator)
//     loss = lse - x_t                    (= -log softmax(x)_t)
//     d loss / d x_j = exp(x_j - lse) - [j == t]   (softmax minus one-hot)
//
// The forward pass saves only lse, one float per row; backward rebuilds each
// probability exp(x_j - lse) from the logits as it writes the gradient, so
// the (N, C) probabilities are never stored. Rows whose target equals
// ignore_index get loss 0 and gradient 0.
//
// Online log-sum-exp: each thread reads its share of the row once, keeping a
// running maximum m and s = sum exp(x_j - m). When a larger value arrives the
// old sum is rescaled by exp(m_old - m_new). Two partial results (m1, s1) and
// (m2, s2) combine the same way, first across a warp, then across the block.

#include "common.cuh"

struct MaxSum {
    float m;  // largest value seen (NEG_INF before any)
    float s;  // sum of exp(x - m) over the values seen
};

__device__ __forceinline__ void push(MaxSum& a, float x) {
    if (x > a.m) {
        a.s = a.s * expf(a.m - x) + 1.0f;  // exp(-inf) = 0 when this is the first value
        a.m = x;
    } else if (a.m != NEG_INF) {
        a.s += expf(x - a.m);
    }
}

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
    if (a.m == NEG_INF) return b;
    if (b.m == NEG_INF) return a;
    const float m = fmaxf(a.m, b.m);
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ MaxSum block_combine(MaxSum v) {
    __shared__ float scratch_m[32], scratch_s[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const MaxSum other = {__shfl_xor_sync(FULL_MASK, v.m, offset), __shfl_xor_sync(FULL_MASK, v.s, offset)};
        v = combine(v, other);
    }
    if (lane == 0) {
        scratch_m[warp] = v.m;
        scratch_s[warp] = v.s;
    }
    __syncthreads();
    v = lane < warps ? MaxSum{scratch_m[lane], scratch_s[lane]} : MaxSum{NEG_INF, 0.0f};
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const MaxSum other = {__shfl_xor_sync(FULL_MASK, v.m, offset), __shfl_xor_sync(FULL_MASK, v.s, offset)};
        v = combine(v, other);
    }
    return v;
}

// One block per row. Writes loss[row] and lse[row].
template <typename T>
__device__ __forceinline__ void cross_entropy_forward(const T* __restrict__ logits,
                                                      const long long* __restrict__ targets,
                                                      float* __restrict__ loss, float* __restrict__ lse, int classes,
                                                      long long ignore_index) {
    const long long row = blockIdx.x;
    const T* x = logits + row * classes;
    MaxSum acc = {NEG_INF, 0.0f};
    for (int j = threadIdx.x; j < classes; j += blockDim.x) push(acc, to_float(x[j]));
    acc = block_combine(acc);
    if (threadIdx.x == 0) {
        const float row_lse = acc.m + logf(acc.s);
        const long long t = targets[row];
        lse[row] = row_lse;
        loss[row] = t == ignore_index ? 0.0f : row_lse - to_float(x[t]);
    }
}

// One block per row. d logits = (softmax - onehot) * scale * row_grad[row]
// (row_grad is read only when has_row_grad; "mean" passes scale = g / count).
template <typename T>
__device__ __forceinline__ void cross_entropy_backward(const T* __restrict__ logits,
                                                       const long long* __restrict__ targets,
                                                       const float* __restrict__ lse,
                                                       const float* __restrict__ row_grad, int has_row_grad,
                                                       float scale, T* __restrict__ dlogits, int classes,
                                                       long long ignore_index) {
    const long long row = blockIdx.x;
    const long long t = targets[row];
    const bool ignored = t == ignore_index;
    const float g = scale * (has_row_grad ? row_grad[row] : 1.0f);
    const float shift = lse[row];
    const T* x = logits + row * classes;
    T* dx = dlogits + row * classes;
    for (int j = threadIdx.x; j < classes; j += blockDim.x) {
        const float p = expf(to_float(x[j]) - shift);
        dx[j] = from_float<T>(ignored ? 0.0f : (p - (j == t ? 1.0f : 0.0f)) * g);
    }
}

#define CROSS_ENTROPY_ENTRIES(T, S)                                                                          \
    extern "C" __global__ void cross_entropy_forward_##S(const T* logits, const long long* targets,          \
                                                         float* loss, float* lse, int classes,              \
                                                         long long ignore_index) {                          \
        cross_entropy_forward<T>(logits, targets, loss, lse, classes, ignore_index);                        \
    }                                                                                                        \
    extern "C" __global__ void cross_entropy_backward_##S(const T* logits, const long long* targets,         \
                                                          const float* lse, const float* row_grad,          \
                                                          int has_row_grad, float scale, T* dlogits,        \
                                                          int classes, long long ignore_index) {            \
        cross_entropy_backward<T>(logits, targets, lse, row_grad, has_row_grad, scale, dlogits, classes,    \
                                  ignore_index);                                                            \
    }

FOR_EACH_DTYPE(CROSS_ENTROPY_ENTRIES)
