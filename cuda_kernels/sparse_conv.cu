// Direct sparse convolution (Park et al., "Faster CNNs with Direct Sparse Convolutions", ICLR 2017).
//
// The weights W[N][Cg][R][S] are a CSR matrix with one row per output channel. Instead of a column
// number, each nonzero carries a precomputed input offset into the zero-padded input of its group
// (Hp = H + pad_top + pad_bottom, Wp = W + pad_left + pad_right):
//
//     colidx[j] = f(c, r*dh, s*dw) = (c*Hp + r*dh)*Wp + s*dw            c < Cg = C / groups
//     O[b, n, y, x] = bias[n] + sum_j value[j] * Xp[b, g(n)*Cg*Hp*Wp + colidx[j] + y*sh*Wp + x*sw]
//
// so the input is read as a *virtual* dense matrix whose column (y, x) is vec(Xp) shifted by
// y*sh*Wp + x*sw: no im2col, and every (value, offset) pair is reused for all H_out*W_out outputs.
//
// GPU mapping (METHODS.md 4a):
//   * one CTA = a block of `rows_per_cta` CSR rows (output channels, sorted by nnz so that the warps
//     of a CTA get similar work; perm[row] is the output channel) x a run of `items_per_cta` work
//     items; a work item is (image b, tile of 32*P consecutive flattened output pixels);
//   * the CTA stages its rows' (offset, value) pairs in shared memory once and reuses them for all
//     its items (rows whose slice is larger than the shared buffer read the pairs from global/L1);
//   * a warp owns one row at a time, a lane owns P pixels q = tile + lane + 32p with P fp32
//     accumulators in registers: each nonzero is one broadcast shared-memory read, then P input
//     loads that are coalesced along x (stride 1) and P FMAs; when a CTA has fewer rows than
//     warps (batch-1 layers need more CTAs), 8 / rows_per_cta warps split each row's nonzeros
//     and add their partial sums through shared memory;
//   * fp16 inputs/weights/outputs accumulate in fp32 (T = f16 below).
//
// Launch: grid (ceil(N / rows_per_cta), ceil(items / items_per_cta)), block (256), dynamic
//         shared memory smem_pairs * 8 bytes (+ 8 * P * 32 * 4 bytes when rows_per_cta < 8);
//         rows_per_cta is 1, 2, 4, 8 or 16.

#include "common.cuh"  // f16 storage type; loads return fp32, stores round to the element type

// acc[p] += sum_k w_k * xg[off_k + pix[p]], the (offset, value) pairs read from shared memory.
template <int P, typename T>
__device__ __forceinline__ void row_dot_staged(const int2* __restrict__ pairs, int count,
                                               const T* __restrict__ xg, const int (&pix)[P],
                                               float (&acc)[P]) {
#pragma unroll 4
    for (int k = 0; k < count; ++k) {
        const int2 e = pairs[k];                           // same address in all lanes: broadcast
        const float w = __int_as_float(e.y);
        const T* src = xg + e.x;
#pragma unroll
        for (int p = 0; p < P; ++p) acc[p] = fmaf(w, load(src + pix[p]), acc[p]);
    }
}

// Same, the pairs read from global memory (rows too large to stage).
template <int P, typename T>
__device__ __forceinline__ void row_dot_global(const int* __restrict__ colidx,
                                               const T* __restrict__ values, int count,
                                               const T* __restrict__ xg, const int (&pix)[P],
                                               float (&acc)[P]) {
#pragma unroll 4
    for (int k = 0; k < count; ++k) {
        const float w = load(values + k);
        const T* src = xg + __ldg(colidx + k);
#pragma unroll
        for (int p = 0; p < P; ++p) acc[p] = fmaf(w, load(src + pix[p]), acc[p]);
    }
}

template <typename T, int P>
__global__ void __launch_bounds__(256)
sparse_conv2d(const T* __restrict__ xp,          // (B, C, Hp, Wp) zero-padded input
              const int* __restrict__ rowptr,    // (N + 1,) CSR rows in schedule order
              const int* __restrict__ colidx,    // (nnz,) input offsets f(c, r*dh, s*dw)
              const T* __restrict__ values,      // (nnz,)
              const int* __restrict__ perm,      // (N,) CSR row -> output channel
              const float* __restrict__ bias,    // (N,) or nullptr
              T* __restrict__ out,               // (B, N, Hout, Wout)
              int C, int Hp, int Wp, int N, int Hout, int Wout, int sh, int sw,
              int out_per_group, int in_per_group, int rows_per_cta, int items,
              int items_per_cta, int smem_pairs) {
    extern __shared__ int2 s_pairs[];                      // (smem_pairs,) then split-K partials
    const int row0 = blockIdx.x * rows_per_cta;
    const int row1 = min(row0 + rows_per_cta, N);
    const int j0 = rowptr[row0];
    const int j1 = rowptr[row1];
    const bool staged = (j1 - j0) <= smem_pairs;           // uniform over the CTA
    if (staged) {
        for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x)
            s_pairs[j - j0] = make_int2(__ldg(colidx + j), __float_as_int(load(values + j)));
        __syncthreads();
    }

    // Fewer rows than warps (small layers, batch 1): `split` warps share a row, each takes a
    // contiguous part of its nonzeros, and the parts are summed through shared memory.
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    const int split = max(1, nwarps / rows_per_cta);
    const int rows_per_pass = nwarps / split;
    const int part = warp % split, slot = warp / split;
    float* s_part = reinterpret_cast<float*>(s_pairs + smem_pairs);   // (nwarps, P, 32)

    const int hw = Hout * Wout;
    const int tiles = (hw + 32 * P - 1) / (32 * P);
    const long long plane = (long long)Hp * Wp;
    const int item_end = min(items, (int)(blockIdx.y + 1) * items_per_cta);

    for (int item = blockIdx.y * items_per_cta; item < item_end; ++item) {
        const int b = item / tiles;
        const int q0 = (item - b * tiles) * 32 * P;
        int pix[P];                                        // offset of output pixel q in Xp
        bool valid[P];
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int q = q0 + lane + 32 * p;
            valid[p] = q < hw;
            const int y = q / Wout, x = q - (q / Wout) * Wout;
            pix[p] = valid[p] ? y * sh * Wp + x * sw : 0;
        }
        for (int first = row0; first < row1; first += rows_per_pass) {   // same trip count CTA-wide
            const int row = first + slot;
            float acc[P];
#pragma unroll
            for (int p = 0; p < P; ++p) acc[p] = 0.f;
            int n = 0;
            if (row < row1) {
                n = perm[row];
                const T* xg = xp + ((long long)b * C + (long long)(n / out_per_group) * in_per_group) * plane;
                const int beg = rowptr[row], len = rowptr[row + 1] - beg;
                const int kb = beg + len * part / split, ke = beg + len * (part + 1) / split;
                if (staged)
                    row_dot_staged<P>(s_pairs + (kb - j0), ke - kb, xg, pix, acc);
                else
                    row_dot_global<P>(colidx + kb, values + kb, ke - kb, xg, pix, acc);
            }
            if (split > 1) {
#pragma unroll
                for (int p = 0; p < P; ++p) s_part[(warp * P + p) * 32 + lane] = acc[p];
                __syncthreads();
                if (part == 0)
                    for (int k = 1; k < split; ++k)
#pragma unroll
                        for (int p = 0; p < P; ++p) acc[p] += s_part[((warp + k) * P + p) * 32 + lane];
                __syncthreads();
            }
            if (part == 0 && row < row1) {
                const float bv = bias != nullptr ? bias[n] : 0.f;
                T* o = out + ((long long)b * N + n) * hw + q0 + lane;
#pragma unroll
                for (int p = 0; p < P; ++p)
                    if (valid[p]) store(o + 32 * p, acc[p] + bv);
            }
        }
    }
}
