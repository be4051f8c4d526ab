// multigate's own CUDA kernels: fused Adam, sparse (embedding) Adam, dropout masks, gate noise.
// Compiled to PTX by build.rs with nvcc when the `cuda` feature is on, loaded by
// src/backend/candle/device_ops.rs. Each kernel mirrors a CPU function, named beside it.

#include <stdint.h>

// The Adam update of one value; the same arithmetic as `Coefficients::apply` in
// src/train/adam.rs.
__device__ __forceinline__ void adam_one(float* p, float g, float* m, float* v, float b1, float b2,
                                         float eps, float step_size, float inv_bc2_sqrt, float keep) {
  float mi = b1 * *m + (1.0f - b1) * g;
  float vi = b2 * *v + (1.0f - b2) * g * g;
  *m = mi;
  *v = vi;
  *p = *p * keep - step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
}

// Dense Adam over n values: parameter, gradient and both moments in one pass.
extern "C" __global__ void mg_adam(float* p, const float* g, float* m, float* v, uint64_t n, float b1,
                                   float b2, float eps, float step_size, float inv_bc2_sqrt, float keep) {
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    adam_one(p + i, g[i], m + i, v + i, b1, b2, eps, step_size, inv_bc2_sqrt, keep);
  }
}

// Whether lookup i is a lookup: a bag's padding slots (slot weight 0) are not. `slots`
// is null for a one-value feature. The same rule as the CPU's `SparseStep` parts.
__device__ __forceinline__ bool looked_up(const float* slots, uint64_t i) {
  return slots == nullptr || slots[i] != 0.0f;
}

// Adds b gradient rows of width d to the rows `ids` of a table-sized gradient buffer
// (several lookups of one row add up), skipping padding slots.
extern "C" __global__ void mg_scatter_rows(float* table_grad, const uint32_t* ids, const float* rows,
                                           const float* slots, uint64_t b, uint64_t d) {
  for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < b * d;
       k += (uint64_t)blockDim.x * gridDim.x) {
    uint64_t i = k / d, j = k % d;
    if (looked_up(slots, i)) atomicAdd(table_grad + (uint64_t)ids[i] * d + j, rows[k]);
  }
}

// Lazy Adam: updates the looked-up rows alone, each once, from their summed gradient in
// `scratch` (mg_scatter_rows), and clears those scratch rows again. A row looked up
// several times is claimed by the first block that raises its `owner` to this step;
// padding slots claim nothing, so a row seen only as padding does not move.
// One block per lookup; the block's threads walk the row's d values.
extern "C" __global__ void mg_lazy_adam(float* p, float* m, float* v, float* scratch, uint32_t* owner,
                                        const uint32_t* ids, const float* slots, uint64_t b, uint64_t d,
                                        uint32_t step,
                                        float b1, float b2, float eps, float step_size, float inv_bc2_sqrt,
                                        float keep) {
  __shared__ int mine;
  for (uint64_t i = blockIdx.x; i < b; i += gridDim.x) {
    uint64_t r = ids[i];
    if (threadIdx.x == 0) mine = looked_up(slots, i) && atomicMax(owner + r, step) < step;
    __syncthreads();
    if (mine) {
      for (uint64_t j = threadIdx.x; j < d; j += blockDim.x) {
        uint64_t at = r * d + j;
        float g = scratch[at];
        scratch[at] = 0.0f;
        adam_one(p + at, g, m + at, v + at, b1, b2, eps, step_size, inv_bc2_sqrt, keep);
      }
    }
    __syncthreads();
  }
}

// The counter-based hash of `dropout_mask_value` in src/backend/candle/device_ops.rs
// (splitmix64 of seed + index): the same mask on every device for one seed.
__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Inverted-dropout mask of n values: `scale` where kept (hash below `threshold`), else 0.
extern "C" __global__ void mg_dropout_mask(float* out, uint64_t n, uint64_t seed, uint32_t threshold,
                                           float scale) {
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    uint32_t h = (uint32_t)(splitmix64(seed + i) >> 32);
    out[i] = h < threshold ? scale : 0.0f;
  }
}

// Standard normal values (Box-Muller over the same hash); `StandardNormal::value` in
// src/backend/candle/device_ops.rs.
extern "C" __global__ void mg_normal(float* out, uint64_t n, uint64_t seed) {
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (uint64_t)blockDim.x * gridDim.x) {
    uint64_t h = splitmix64(seed + i);
    float u1 = (float)((h >> 40) + 1) * (1.0f / 16777216.0f);
    float u2 = (float)((h >> 16) & 0xFFFFFFull) * (1.0f / 16777216.0f);
    out[i] = sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
  }
}
