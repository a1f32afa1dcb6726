// Shared by every kernel file: an fp16 storage type without cuda_fp16.h (NVRTC has no CUDA
// headers on its include path), loads that return fp32, stores that round to the element type.
#pragma once

struct __align__(2) f16 {
    unsigned short bits;
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}
__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load(const f16* p) {
    f16 v;
    v.bits = __ldg(reinterpret_cast<const unsigned short*>(p));
    return to_float(v);
}
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(f16* p, float v) {
    unsigned short b;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(b) : "f"(v));
    p->bits = b;
}
