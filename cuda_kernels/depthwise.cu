// Depthwise convolution, dense and pruned (DEPrune, C. Park et al., NeurIPS 2024), fp32 and
// fp16 (fp32 accumulation).
//
//     O[b, c, y, x] = bias[c] + sum_{r,s} W[c, r, s] * I[b, c, y*sh - pt + r*dh, x*sw - pl + s*dw]
//
// Depthwise layers do ~2*k*k FLOPs per 8 bytes moved, so they are memory-bound: the kernels read
// the input once (bounds-checked, no padded copy) and write the output once.
//
// dw_dense_nchw<T, K, ST>  square K x K, stride ST, dilation 1. A thread owns RB output rows of one
//   column; it walks the (RB-1)*ST+K input rows once and applies each loaded value to every output
//   row that uses it (register sliding window: K=5 needs 7.5 loads per output instead of 25).
//   Lanes run along x, so loads and stores are coalesced. Launch: grid (ceil(total/256)), block 256,
//   total = B*C*ceil(Hout/RB)*Wout.
// dw_dense_nhwc<T, K, ST>  channels_last, same sliding window; lanes run along channels (coalesced),
//   the CTA's 32 channels' taps are staged transposed in shared memory, then held in registers while
//   the thread loops over pixel columns. Launch: grid (ceil(C/32), gy), block (32, 8).
// dw_generic<T>  any kernel size, stride, dilation, either layout; one output per thread.
// dw_pruned_nchw<T, P>  the pruned kernel, in the balanced format of formats.py: channels in groups
//   of 32 (DEPrune's diagonal-wise refactorization groups), each group's kept taps packed as
//   (c_local << 16 | r << 8 | s, w), sorted by (c_local, r, s). This is a *direct per-channel
//   pruned-tap* kernel (METHODS.md 5, the extension to DR's implicit GEMM): it does no redundant
//   MACs. One CTA = (image b, tile of 32*P output pixels, channel group g); the group's kept taps
//   are split evenly over the 8 warps, so every warp does the same work whatever the per-channel
//   counts are, and with BWT (equal kept count per group) every CTA does the same work too. A warp
//   accumulates P pixels per lane in registers while the channel is unchanged, then adds them into
//   the CTA's shared (32 channels x 32P pixels) tile; the tile is stored once, coalesced.
//   Launch: grid (B * ceil(Hout*Wout / (32P)), ceil(C/32)), block 256.

#include "common.cuh"  // f16 storage type; loads return fp32, stores round to the element type

constexpr unsigned kFull = 0xffffffffu;

template <int K>
struct RowsPerThread {
    static constexpr int value = K >= 5 ? 8 : 4;
};

// acc[rb] += sum_{r,s} w[r, s] * src[(iy0 + rb*ST + r) * rs + (ix0 + s) * cs], zero outside H x W.
template <typename T, int K, int ST, int RB>
__device__ __forceinline__ void sliding_window(const T* __restrict__ src, int rs, int cs, int H,
                                               int W, int iy0, int ix0, const float (&w)[K * K],
                                               float (&acc)[RB]) {
    constexpr int kInputRows = (RB - 1) * ST + K;
#pragma unroll
    for (int i = 0; i < kInputRows; ++i) {
        const int iy = iy0 + i;
        const bool row_ok = (unsigned)iy < (unsigned)H;
        float v[K];
#pragma unroll
        for (int s = 0; s < K; ++s) {
            const int ix = ix0 + s;
            v[s] = (row_ok && (unsigned)ix < (unsigned)W) ? load(src + iy * rs + ix * cs) : 0.f;
        }
#pragma unroll
        for (int rb = 0; rb < RB; ++rb) {
            const int r = i - rb * ST;                      // resolved at compile time
            if (r >= 0 && r < K) {
#pragma unroll
                for (int s = 0; s < K; ++s) acc[rb] = fmaf(w[r * K + s], v[s], acc[rb]);
            }
        }
    }
}

template <typename T, int K, int ST>
__global__ void __launch_bounds__(256)
dw_dense_nchw(const T* __restrict__ x,           // (B, C, H, W)
              const T* __restrict__ weight,      // (C, K*K)
              const float* __restrict__ bias,    // (C,) or nullptr
              T* __restrict__ y,                 // (B, C, Hout, Wout)
              int C, int H, int W, int Hout, int Wout, int pt, int pl, long long total) {
    constexpr int RB = RowsPerThread<K>::value;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int n_rb = (Hout + RB - 1) / RB;
    const int xo = (int)(idx % Wout);
    const long long t = idx / Wout;
    const int yb = (int)(t % n_rb);
    const long long plane = t / n_rb;                       // b*C + c
    const int c = (int)(plane % C);
    float w[K * K];
#pragma unroll
    for (int k = 0; k < K * K; ++k) w[k] = load(weight + c * K * K + k);
    float acc[RB];
#pragma unroll
    for (int rb = 0; rb < RB; ++rb) acc[rb] = 0.f;
    sliding_window<T, K, ST, RB>(x + plane * H * W, W, 1, H, W, yb * RB * ST - pt, xo * ST - pl, w, acc);
    const float bv = bias != nullptr ? bias[c] : 0.f;
    T* o = y + plane * Hout * Wout + xo;
#pragma unroll
    for (int rb = 0; rb < RB; ++rb) {
        const int yo = yb * RB + rb;
        if (yo < Hout) store(o + (long long)yo * Wout, acc[rb] + bv);
    }
}

template <typename T, int K, int ST>
__global__ void __launch_bounds__(256)
dw_dense_nhwc(const T* __restrict__ x,           // (B, H, W, C) memory order (channels_last)
              const T* __restrict__ weight,      // (C, K*K)
              const float* __restrict__ bias,    // (C,) or nullptr
              T* __restrict__ y,                 // (B, Hout, Wout, C) memory order
              int B, int C, int H, int W, int Hout, int Wout, int pt, int pl) {
    constexpr int RB = RowsPerThread<K>::value;
    __shared__ float s_w[K * K][32];
    const int c0 = blockIdx.x * 32;
    const int tid = threadIdx.y * 32 + threadIdx.x;
    for (int e = tid; e < 32 * K * K; e += 256) {           // coalesced read of 32 channels' taps
        const int cl = e / (K * K), k = e - cl * (K * K);
        s_w[k][cl] = c0 + cl < C ? load(weight + (long long)c0 * K * K + e) : 0.f;
    }
    __syncthreads();
    const int c = c0 + threadIdx.x;
    if (c >= C) return;
    float w[K * K];
#pragma unroll
    for (int k = 0; k < K * K; ++k) w[k] = s_w[k][threadIdx.x];
    const float bv = bias != nullptr ? bias[c] : 0.f;
    const int n_rb = (Hout + RB - 1) / RB;
    const long long columns = (long long)B * n_rb * Wout;
    for (long long col = (long long)blockIdx.y * 8 + threadIdx.y; col < columns;
         col += (long long)gridDim.y * 8) {
        const int xo = (int)(col % Wout);
        const long long t = col / Wout;
        const int yb = (int)(t % n_rb);
        const long long b = t / n_rb;
        float acc[RB];
#pragma unroll
        for (int rb = 0; rb < RB; ++rb) acc[rb] = 0.f;
        sliding_window<T, K, ST, RB>(x + b * H * W * C + c, W * C, C, H, W, yb * RB * ST - pt,
                                     xo * ST - pl, w, acc);
        T* o = y + ((b * Hout) * Wout + xo) * C + c;
#pragma unroll
        for (int rb = 0; rb < RB; ++rb) {
            const int yo = yb * RB + rb;
            if (yo < Hout) store(o + (long long)yo * Wout * C, acc[rb] + bv);
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(256)
dw_generic(const T* __restrict__ x, const T* __restrict__ weight,   // weight (C, kh*kw)
           const float* __restrict__ bias, T* __restrict__ y, int C, int H, int W, int Hout,
           int Wout, int kh, int kw, int sh, int sw, int pt, int pl, int dh, int dw,
           int channels_last, long long total) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    int c, yo, xo;
    long long b, t;
    if (channels_last) {                                    // idx = ((b*Hout + yo)*Wout + xo)*C + c
        c = (int)(idx % C); t = idx / C;
        xo = (int)(t % Wout); t /= Wout;
        yo = (int)(t % Hout); b = t / Hout;
    } else {                                                // idx = ((b*C + c)*Hout + yo)*Wout + xo
        xo = (int)(idx % Wout); t = idx / Wout;
        yo = (int)(t % Hout); t /= Hout;
        c = (int)(t % C); b = t / C;
    }
    const T* src = channels_last ? x + b * H * W * C + c : x + (b * C + c) * H * W;
    const int rs = channels_last ? W * C : W, cs = channels_last ? C : 1;
    float acc = bias != nullptr ? bias[c] : 0.f;
    for (int r = 0; r < kh; ++r) {
        const int iy = yo * sh - pt + r * dh;
        if ((unsigned)iy >= (unsigned)H) continue;
        for (int s = 0; s < kw; ++s) {
            const int ix = xo * sw - pl + s * dw;
            if ((unsigned)ix < (unsigned)W)
                acc = fmaf(load(weight + (c * kh + r) * kw + s), load(src + iy * rs + ix * cs), acc);
        }
    }
    store(y + idx, acc);
}

template <typename T, int P>
__global__ void __launch_bounds__(256)
dw_pruned_nchw(const T* __restrict__ x,          // (B, C, H, W)
               const int* __restrict__ group_ptr,// (G + 1,) kept taps of group g: [gp[g], gp[g+1])
               const int* __restrict__ taps,     // (E,) c_local << 16 | r << 8 | s
               const T* __restrict__ values,     // (E,)
               const float* __restrict__ bias,   // (C,) or nullptr
               T* __restrict__ y,                // (B, C, Hout, Wout)
               int C, int H, int W, int Hout, int Wout, int sh, int sw, int pt, int pl, int dh,
               int dw) {
    constexpr int kTile = 32 * P;
    __shared__ float s_out[32 * kTile];                     // (32 channels, kTile pixels)
    const int hw = Hout * Wout;
    const int tiles = (hw + kTile - 1) / kTile;
    const int b = blockIdx.x / tiles;
    const int q0 = (blockIdx.x - b * tiles) * kTile;
    const int g = blockIdx.y, cbase = g * 32, nch = min(32, C - cbase);
    for (int e = threadIdx.x; e < 32 * kTile; e += blockDim.x) s_out[e] = 0.f;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    int iy0[P], ix0[P];
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int q = q0 + lane + 32 * p;
        const int yo = q / Wout;
        iy0[p] = q < hw ? yo * sh - pt : -(1 << 28);        // never in [0, H): contributes 0
        ix0[p] = (q - yo * Wout) * sw - pl;
    }
    __syncthreads();

    const int e0 = group_ptr[g], len = group_ptr[g + 1] - e0;
    const int wb = e0 + (int)((long long)len * warp / nwarps);
    const int we = e0 + (int)((long long)len * (warp + 1) / nwarps);
    int cur = -1;                                           // channel being accumulated
    const T* src = x;
    float acc[P];
#pragma unroll
    for (int p = 0; p < P; ++p) acc[p] = 0.f;
    for (int j = wb; j < we; j += 32) {
        const int count = min(32, we - j);
        int meta = 0;
        float wv = 0.f;
        if (lane < count) {
            meta = __ldg(taps + j + lane);
            wv = load(values + j + lane);
        }
        for (int k = 0; k < count; ++k) {
            const int m = __shfl_sync(kFull, meta, k);
            const float wk = __shfl_sync(kFull, wv, k);
            const int cl = m >> 16;                         // uniform over the warp
            if (cl != cur) {
                if (cur >= 0) {
#pragma unroll
                    for (int p = 0; p < P; ++p) {
                        atomicAdd(&s_out[cur * kTile + lane + 32 * p], acc[p]);
                        acc[p] = 0.f;
                    }
                }
                cur = cl;
                src = x + ((long long)b * C + cbase + cl) * H * W;
            }
            const int dy = ((m >> 8) & 255) * dh, dx = (m & 255) * dw;
#pragma unroll
            for (int p = 0; p < P; ++p) {
                const int iy = iy0[p] + dy, ix = ix0[p] + dx;
                const float v = ((unsigned)iy < (unsigned)H && (unsigned)ix < (unsigned)W)
                                    ? load(src + iy * W + ix) : 0.f;
                acc[p] = fmaf(wk, v, acc[p]);
            }
        }
    }
    if (cur >= 0) {
#pragma unroll
        for (int p = 0; p < P; ++p) atomicAdd(&s_out[cur * kTile + lane + 32 * p], acc[p]);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nch * kTile; e += blockDim.x) {
        const int cl = e / kTile, q = q0 + (e - cl * kTile);
        if (q < hw) {
            const float bv = bias != nullptr ? bias[cbase + cl] : 0.f;
            store(y + ((long long)b * C + cbase + cl) * hw + q, s_out[e] + bv);
        }
    }
}
