/* Device helpers the CUDA kernel files share: block-wide sum and max, and
 * the launchers' status after a launch. Private to src/backend/cuda. */
#ifndef EXSA_CUDA_REDUCE_CUH
#define EXSA_CUDA_REDUCE_CUH

#include <math.h>

#include <cuda_runtime.h>

/* The last launch's error (0: none), what every launcher returns. */
static inline int launch_status(void)
{
    return (int)cudaGetLastError();
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
 * gets the result. red holds 32 floats; callers sync before reusing it. */
static __device__ __forceinline__ float block_sum(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < n_warps ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Max over the block, as block_sum. */
static __device__ __forceinline__ float block_max(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < n_warps ? red[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
