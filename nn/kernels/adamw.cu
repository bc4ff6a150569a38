// adamw.cu: the AdamW update and the global gradient norm over flat buffers.
//
// The optimizer keeps every parameter (float32 master weights), its gradient
// and both moments as views into a few flat buffers, so one launch updates
// the whole model. Per element, with t the step number (torch.optim.AdamW):
//
//     g  = grad * grad_scale                  (grad_scale: gradient clipping folded in)
//     p *= 1 - lr * weight_decay              (decoupled weight decay)
//     m  = beta1 m + (1 - beta1) g            (first moment)
//     v  = beta2 v + (1 - beta2) g^2          (second moment)
//     p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// eps is added after the square root of the bias-corrected v, as in PyTorch.
// The host computes the per-step constants (decay, step_size,
// bias_correction2_sqrt) once in double precision.

#include "common.cuh"

template <typename G>
__device__ __forceinline__ void adamw_step(float* __restrict__ param, const G* __restrict__ grad,
                                           float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                           long long n, float decay, float beta1, float beta2, float step_size,
                                           float bias_correction2_sqrt, float eps, float grad_scale) {
    GRID_STRIDE_LOOP(i, n) {
        const float g = to_float(grad[i]) * grad_scale;
        const float m = beta1 * exp_avg[i] + (1.0f - beta1) * g;
        const float v = beta2 * exp_avg_sq[i] + (1.0f - beta2) * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        const float denominator = sqrtf(v) / bias_correction2_sqrt + eps;
        param[i] = param[i] * decay - step_size * m / denominator;
    }
}

// Sum of squares, the first half of the global gradient norm. Each thread
// sums its grid-stride share, each block reduces its threads, and block b
// writes partial[b]; the host adds the gridDim.x partials. Squares and sums are in double:
// a model's worth of float squares would otherwise lose digits, and the
// fixed order makes the result the same on every run (no atomics).
template <typename T>
__device__ __forceinline__ void sum_squares(const T* __restrict__ x, long long n, double* __restrict__ partial) {
    __shared__ double scratch[32];
    double acc = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const double xi = to_float(x[i]);
        acc += xi * xi;
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// x *= factor in place: the second half of clipping (factor = max_norm / norm).
template <typename T>
__device__ __forceinline__ void scale_inplace(T* __restrict__ x, long long n, float factor) {
    GRID_STRIDE_LOOP(i, n) { x[i] = from_float<T>(to_float(x[i]) * factor); }
}

#define ADAMW_ENTRIES(T, S)                                                                                   \
    extern "C" __global__ void adamw_step_##S(float* param, const T* grad, float* exp_avg, float* exp_avg_sq, \
                                              long long n, float decay, float beta1, float beta2,           \
                                              float step_size, float bias_correction2_sqrt, float eps,      \
                                              float grad_scale) {                                           \
        adamw_step<T>(param, grad, exp_avg, exp_avg_sq, n, decay, beta1, beta2, step_size,                   \
                      bias_correction2_sqrt, eps, grad_scale);                                              \
    }                                                                                                         \
    extern "C" __global__ void sum_squares_##S(const T* x, long long n, double* partial) {                    \
        sum_squares<T>(x, n, partial);                                                                        \
    }                                                                                                         \
    extern "C" __global__ void scale_##S(T* x, long long n, float factor) { scale_inplace<T>(x, n, factor); }

FOR_EACH_DTYPE(ADAMW_ENTRIES)
