// common.cuh: what every kernel in this folder shares.
//
// nn/kernels/cuda.py pastes this file in place of `#include "common.cuh"`
// before compiling, so each .cu file is one self-contained NVRTC program and
// no CUDA header or include path is needed.
//
// Storage types
// -------------
// Tensors arrive as float32, float16 or bfloat16. Every kernel loads its
// inputs into float registers, does all arithmetic and every sum in float
// (fp32 accumulation), and rounds only when it stores a result. The two
// 16-bit types travel as their raw bits:
//   - bfloat16 is the upper half of a float32 (same exponent, 7 mantissa
//     bits), so widening is a 16-bit shift; narrowing rounds to nearest even
//     with PTX's cvt.rn.bf16.f32 (sm_80 and later);
//   - float16 converts both ways with PTX's cvt instructions.
// A kernel written once as a template over T is instantiated for all three.

struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

__device__ __forceinline__ float to_float(float x) { return x; }

__device__ __forceinline__ float to_float(half_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

__device__ __forceinline__ float to_float(bf16_t x) {
    return __uint_as_float(static_cast<unsigned int>(x.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_float(float x);

template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

template <> __device__ __forceinline__ half_t from_float<half_t>(float x) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
    return h;
}

template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float x) {
    bf16_t b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b.bits) : "f"(x));
    return b;
}

// Entry points: one extern "C" kernel per storage type, named NAME_f32,
// NAME_f16 and NAME_bf16, so CuPy finds them by a plain, unmangled name.
// FOR_EACH_DTYPE(M) expands M(T, suffix) once per type.
#define FOR_EACH_DTYPE(M) M(float, f32) M(half_t, f16) M(bf16_t, bf16)

// -inf without <math.h> (NVRTC has the math functions built in, not the macros).
#define NEG_INF (-__int_as_float(0x7f800000))

#define FULL_MASK 0xffffffffu

// A grid-stride loop: thread t of G threads visits t, t + G, t + 2G, ...
// so any grid size covers any n, and one launch size serves every array.
#define GRID_STRIDE_LOOP(i, n)                                                     \
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; \
         i < (n); i += static_cast<long long>(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------- reductions
// A warp's 32 lanes combine values through registers (shuffles): after the
// butterfly of XOR distances 16, 8, 4, 2, 1 every lane holds the total.

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over the whole (1-D) block; every thread gets the result. Each warp
// reduces in registers, lane 0 of each warp leaves its total in `scratch`
// (shared memory, 32 slots), and every warp then reduces those totals.
// blockDim.x must be a multiple of 32 and every thread must call it.
template <typename A> __device__ A block_sum(A v, A* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by the previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? scratch[lane] : A(0));
}
