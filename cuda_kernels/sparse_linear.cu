// Sparse linear layer y = x W^T + b with W (N x K) in CSR, for pruned FC and GRU/RNN matrices
// (Han et al. 2015; Narang et al. 2017: sparse GEMV/GEMM at ~90% sparsity).
//
//     y[m, n] = b[n] + sum_{j in row n} value[j] * x[m, colidx[j]]
//
// Two kernels, picked by the batch size M (rows of x):
//   * spmm_rowvec<T, MV> (M <= MV <= 8, GEMV-like): one warp per row n, lanes split the row's
//     nonzeros (CSR-vector SpMV), each lane keeps M partial sums, a shuffle reduction finishes.
//     Launch: grid (ceil(N / 8)), block (256).
//   * spmm_tile<T, P> (M > 8): one warp per row n and a tile of 32*P batch rows; lane l owns
//     m = m0 + l + 32p. The row's (col, value) pairs are loaded 32 at a time (one per lane) and
//     broadcast with warp shuffles; x is read transposed, xt (K x M), so each nonzero is P
//     coalesced loads and P FMAs. CTAs along grid.x share the same xt strip in L2.
//     Launch: grid (ceil(N / 8), ceil(M / (32 P))), block (256).
// fp16 inputs accumulate in fp32.

#include "common.cuh"  // f16 storage type; loads return fp32, stores round to the element type

constexpr unsigned kFull = 0xffffffffu;

template <typename T, int MV>
__global__ void __launch_bounds__(256)
spmm_rowvec(const T* __restrict__ x,             // (M, K)
            const int* __restrict__ rowptr,      // (N + 1,)
            const int* __restrict__ colidx,      // (nnz,)
            const T* __restrict__ values,        // (nnz,)
            const float* __restrict__ bias,      // (N,) or nullptr
            T* __restrict__ y,                   // (M, N)
            int M, int N, int K) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= N) return;                                  // whole warp leaves together
    float acc[MV];
#pragma unroll
    for (int m = 0; m < MV; ++m) acc[m] = 0.f;
    const int end = rowptr[row + 1];
    for (int j = rowptr[row] + lane; j < end; j += 32) {
        const int c = __ldg(colidx + j);
        const float w = load(values + j);
#pragma unroll
        for (int m = 0; m < MV; ++m)
            if (m < M) acc[m] = fmaf(w, load(x + (long long)m * K + c), acc[m]);
    }
#pragma unroll
    for (int m = 0; m < MV; ++m)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(kFull, acc[m], o);
    const float bv = bias != nullptr ? bias[row] : 0.f;
#pragma unroll
    for (int m = 0; m < MV; ++m)
        if (m < M && lane == m) store(y + (long long)m * N + row, acc[m] + bv);
}

template <typename T, int P>
__global__ void __launch_bounds__(256)
spmm_tile(const T* __restrict__ xt,              // (K, M): x transposed
          const int* __restrict__ rowptr,        // (N + 1,)
          const int* __restrict__ colidx,        // (nnz,)
          const T* __restrict__ values,          // (nnz,)
          const float* __restrict__ bias,        // (N,) or nullptr
          T* __restrict__ y,                     // (M, N)
          int M, int N) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= N) return;
    const int m0 = blockIdx.y * 32 * P + lane;
    bool valid[P];
#pragma unroll
    for (int p = 0; p < P; ++p) valid[p] = m0 + 32 * p < M;
    float acc[P];
#pragma unroll
    for (int p = 0; p < P; ++p) acc[p] = 0.f;
    const int end = rowptr[row + 1];
    for (int j = rowptr[row]; j < end; j += 32) {
        const int count = min(32, end - j);
        int c = 0;
        float w = 0.f;
        if (lane < count) {
            c = __ldg(colidx + j + lane);
            w = load(values + j + lane);
        }
#pragma unroll 4
        for (int k = 0; k < count; ++k) {
            const int ck = __shfl_sync(kFull, c, k);
            const float wk = __shfl_sync(kFull, w, k);
            const T* src = xt + (long long)ck * M + m0;
#pragma unroll
            for (int p = 0; p < P; ++p)
                if (valid[p]) acc[p] = fmaf(wk, load(src + 32 * p), acc[p]);
        }
    }
    const float bv = bias != nullptr ? bias[row] : 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p)
        if (valid[p]) store(y + (long long)(m0 + 32 * p) * N + row, acc[p] + bv);
}
