// gelu.cu: GELU forward and backward, exact (erf) or with GPT-2's tanh approximation.
//
// GELU(x) = x Phi(x), Phi the standard normal CDF, so GELU'(x) = Phi(x) + x phi(x).
//   exact:  Phi(x) = (1 + erf(x / sqrt 2)) / 2,   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//   tanh:   Phi(x) ~ (1 + tanh u) / 2 with u = sqrt(2/pi) (x + 0.044715 x^3), and
//           d/dx [x (1 + tanh u) / 2] = (1 + t) / 2 + x (1 - t^2) u'(x) / 2,  t = tanh u,
//           u'(x) = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
// One thread per element (grid-stride); only x is kept for backward, the rest
// is recomputed, which costs less than reading a saved Phi from memory.

#include "common.cuh"

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f
#define GELU_CUBIC 0.044715f

template <typename T>
__device__ __forceinline__ void gelu_forward(const T* __restrict__ x, T* __restrict__ y, long long n, int tanh_approx) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = to_float(x[i]);
        const float cdf = tanh_approx ? 0.5f * (1.0f + tanhf(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v)))
                                      : 0.5f * (1.0f + erff(v * INV_SQRT_2));
        y[i] = from_float<T>(v * cdf);
    }
}

template <typename T>
__device__ __forceinline__ void gelu_backward(const T* __restrict__ x, const T* __restrict__ g, T* __restrict__ dx,
                                              long long n, int tanh_approx) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = to_float(x[i]);
        float slope;
        if (tanh_approx) {
            const float t = tanhf(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v));
            const float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_CUBIC * v * v);
            slope = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
        } else {
            const float cdf = 0.5f * (1.0f + erff(v * INV_SQRT_2));
            const float density = expf(-0.5f * v * v) * INV_SQRT_2PI;
            slope = cdf + v * density;
        }
        dx[i] = from_float<T>(to_float(g[i]) * slope);
    }
}

#define GELU_ENTRIES(T, S)                                                                                \
    extern "C" __global__ void gelu_forward_##S(const T* x, T* y, long long n, int tanh_approx) {          \
        gelu_forward<T>(x, y, n, tanh_approx);                                                            \
    }                                                                                                     \
    extern "C" __global__ void gelu_backward_##S(const T* x, const T* g, T* dx, long long n, int tanh_approx) { \
        gelu_backward<T>(x, g, dx, n, tanh_approx);                                                       \
    }

FOR_EACH_DTYPE(GELU_ENTRIES)
