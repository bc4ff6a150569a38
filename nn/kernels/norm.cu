// norm.cu: layer norm and RMS norm over the last axis of a (rows, n) array, forward and backward.
//
// forward (one block per row, statistics in float):
//     layer norm:  mean = sum(x) / n,  var = sum((x - mean)^2) / n,  xhat = (x - mean) * rstd
//     RMS norm:    var = sum(x^2) / n (no centring),                 xhat = x * rstd
//     rstd = 1 / sqrt(var + eps),  y = xhat * weight + bias
// The variance is taken around the mean in a second pass over the row (the
// row is still in cache) rather than as E[x^2] - mean^2, which cancels
// catastrophically when the mean is large against the spread.
//
// backward, with gh = g * weight:
//     dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))    (RMS norm drops mean(gh))
//     d weight = sum over rows of g * xhat,   d bias = sum over rows of g
// The two subtracted means come from differentiating through mean and rstd:
// d xhat_j / d x_i = rstd (delta_ij - 1/n - xhat_i xhat_j / n).
//
// xhat (float) and rstd are what forward saves for backward, as the NumPy
// version in norm.py does. weight and bias are float32 (the host converts).

#include "common.cuh"

template <typename T>
__device__ __forceinline__ void norm_forward(const T* __restrict__ x, const float* __restrict__ weight,
                                             const float* __restrict__ bias, T* __restrict__ y,
                                             float* __restrict__ xhat, float* __restrict__ rstd, int n, float eps,
                                             int has_weight, int has_bias, int centre) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * n;
    float mean = 0.0f;
    if (centre) {
        float sum = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) sum += to_float(xr[j]);
        mean = block_sum(sum, scratch) / n;
    }
    float squares = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float d = to_float(xr[j]) - mean;
        squares += d * d;
    }
    const float r = 1.0f / sqrtf(block_sum(squares, scratch) / n + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float h = (to_float(xr[j]) - mean) * r;
        xhat[row * n + j] = h;
        y[row * n + j] = from_float<T>(h * (has_weight ? weight[j] : 1.0f) + (has_bias ? bias[j] : 0.0f));
    }
    if (threadIdx.x == 0) rstd[row] = r;
}

// One block per row: the two row means, then dx (float, like xhat).
template <typename T>
__device__ __forceinline__ void norm_backward_input(const T* __restrict__ g, const float* __restrict__ xhat,
                                                    const float* __restrict__ rstd, const float* __restrict__ weight,
                                                    float* __restrict__ dx, int n, int has_weight, int centre) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const T* gr = g + row * n;
    const float* hr = xhat + row * n;
    float sum_gh = 0.0f, sum_gh_xhat = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float gh = to_float(gr[j]) * (has_weight ? weight[j] : 1.0f);
        sum_gh += gh;
        sum_gh_xhat += gh * hr[j];
    }
    const float mean_gh = centre ? block_sum(sum_gh, scratch) / n : 0.0f;
    const float mean_gh_xhat = block_sum(sum_gh_xhat, scratch) / n;
    const float r = rstd[row];
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float gh = to_float(gr[j]) * (has_weight ? weight[j] : 1.0f);
        dx[row * n + j] = r * (gh - mean_gh - hr[j] * mean_gh_xhat);
    }
}

// Weight and bias gradients: column sums over all rows, in two stages.
// Block (bx, by) has 32 x PARAM_ROWS threads; it owns the 32 columns from
// 32 bx and the rows by * PARAM_ROWS + ty, stepping by gridDim.y * PARAM_ROWS.
// Neighbouring threads (tx) read neighbouring columns, so every row read is
// one coalesced 128-byte transaction. The PARAM_ROWS per-thread sums are
// added in shared memory and block row `by` writes its 32 partial sums to
// partial_*[by, column]; the host sums those gridDim.y rows.
#define PARAM_ROWS 8

template <typename T>
__device__ __forceinline__ void norm_backward_params(const T* __restrict__ g, const float* __restrict__ xhat,
                                                     float* __restrict__ partial_weight,
                                                     float* __restrict__ partial_bias, long long rows, int n) {
    __shared__ float sum_w[PARAM_ROWS][33], sum_b[PARAM_ROWS][33];  // 33: no bank conflicts on the column read
    const int column = blockIdx.x * 32 + threadIdx.x;
    float acc_w = 0.0f, acc_b = 0.0f;
    if (column < n) {
        for (long long row = static_cast<long long>(blockIdx.y) * PARAM_ROWS + threadIdx.y; row < rows;
             row += static_cast<long long>(gridDim.y) * PARAM_ROWS) {
            const float gv = to_float(g[row * n + column]);
            acc_w += gv * xhat[row * n + column];
            acc_b += gv;
        }
    }
    sum_w[threadIdx.y][threadIdx.x] = acc_w;
    sum_b[threadIdx.y][threadIdx.x] = acc_b;
    __syncthreads();
    if (threadIdx.y == 0 && column < n) {
        float total_w = 0.0f, total_b = 0.0f;
#pragma unroll
        for (int k = 0; k < PARAM_ROWS; ++k) {
            total_w += sum_w[k][threadIdx.x];
            total_b += sum_b[k][threadIdx.x];
        }
        partial_weight[static_cast<long long>(blockIdx.y) * n + column] = total_w;
        partial_bias[static_cast<long long>(blockIdx.y) * n + column] = total_b;
    }
}

#define NORM_ENTRIES(T, S)                                                                                    \
    extern "C" __global__ void norm_forward_##S(const T* x, const float* weight, const float* bias, T* y,     \
                                                float* xhat, float* rstd, int n, float eps, int has_weight,  \
                                                int has_bias, int centre) {                                  \
        norm_forward<T>(x, weight, bias, y, xhat, rstd, n, eps, has_weight, has_bias, centre);               \
    }                                                                                                         \
    extern "C" __global__ void norm_backward_input_##S(const T* g, const float* xhat, const float* rstd,      \
                                                       const float* weight, float* dx, int n, int has_weight, \
                                                       int centre) {                                          \
        norm_backward_input<T>(g, xhat, rstd, weight, dx, n, has_weight, centre);                            \
    }                                                                                                         \
    extern "C" __global__ void norm_backward_params_##S(const T* g, const float* xhat, float* partial_weight, \
                                                        float* partial_bias, long long rows, int n) {        \
        norm_backward_params<T>(g, xhat, partial_weight, partial_bias, rows, n);                             \
    }

FOR_EACH_DTYPE(NORM_ENTRIES)
