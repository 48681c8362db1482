// NeRF ray marching on the GPU, one thread per ray (launchers in ray_marching.cuh). The traversal
// mirrors csrc/cpu/ray_marching.cpp step for step; products and sums that feed positions use the
// _rn intrinsics so nvcc cannot contract them into FMAs that round differently from the reference.
#include "ray_marching.cuh"

#include <cmath>

namespace fastgen {
namespace {

constexpr int kThreads = 256;
constexpr double kMaxStep = 1e10;

__host__ __device__ inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void ray_aabb_intersect_kernel(const T* __restrict__ rays_o, const T* __restrict__ rays_d,
                                          const T* __restrict__ aabbs, int64_t n, int64_t m, T near_plane,
                                          T far_plane, T miss_value, T* t_mins, T* t_maxs, bool* hits) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pair >= n * m) return;
  const int64_t i = pair / m, j = pair % m;
  const T* o = rays_o + 3 * i;
  const T* d = rays_d + 3 * i;
  const T* box = aabbs + 6 * j;
  const T inf = static_cast<T>(INFINITY);
  T enter = -inf, exit = inf;
  for (int a = 0; a < 3; ++a) {
    T lo, hi;
    if (d[a] == T(0)) {
      const bool inside = o[a] >= box[a] && o[a] <= box[a + 3];
      lo = inside ? -inf : inf;
      hi = -lo;
    } else {
      const T t1 = (box[a] - o[a]) / d[a], t2 = (box[a + 3] - o[a]) / d[a];
      lo = t1 < t2 ? t1 : t2;
      hi = t1 < t2 ? t2 : t1;
    }
    enter = enter > lo ? enter : lo;
    exit = exit < hi ? exit : hi;
  }
  const bool hit = exit > enter && exit > T(0);
  const T clipped_min = enter < near_plane ? near_plane : (enter > far_plane ? far_plane : enter);
  const T clipped_max = exit < near_plane ? near_plane : (exit > far_plane ? far_plane : exit);
  t_mins[pair] = hit ? clipped_min : miss_value;
  t_maxs[pair] = hit ? clipped_max : miss_value;
  hits[pair] = hit;
}

__device__ inline void level_box(const OccupancyGridView& g, int64_t level, int a, double* lo, double* ext) {
  const double scale = ldexp(1.0, static_cast<int>(level));
  const double center = (g.roi[a] + g.roi[a + 3]) * 0.5, half = (g.roi[a + 3] - g.roi[a]) * 0.5;
  const double l = __dsub_rn(center, __dmul_rn(half, scale)), h = __dadd_rn(center, __dmul_rn(half, scale));
  *lo = l;
  *ext = h - l;
}

// The finest level whose box holds p, and p's cell there; false outside every level.
__device__ bool locate(const OccupancyGridView& g, const double* p, int64_t* level, int64_t* idx) {
  for (int64_t l = 0; l < g.levels; ++l) {
    double c[3];
    bool inside = true;
    for (int a = 0; a < 3; ++a) {
      double lo, ext;
      level_box(g, l, a, &lo, &ext);
      c[a] = __dmul_rn(p[a] - lo, static_cast<double>(g.res[a]) / ext);
      inside = inside && c[a] >= 0.0 && c[a] <= static_cast<double>(g.res[a]);
    }
    if (!inside) continue;
    for (int a = 0; a < 3; ++a) {
      const int64_t cell = static_cast<int64_t>(floor(c[a]));
      idx[a] = cell < g.res[a] - 1 ? cell : g.res[a] - 1;
    }
    *level = l;
    return true;
  }
  return false;
}

__device__ inline bool occupied(const OccupancyGridView& g, int64_t level, const int64_t* idx) {
  return g.binaries[((level * g.res[0] + idx[0]) * g.res[1] + idx[1]) * g.res[2] + idx[2]];
}

__device__ inline bool clear_of_finer(const OccupancyGridView& g, const int64_t* lo_idx, const int64_t* hi_idx) {
  for (int a = 0; a < 3; ++a)
    if (4 * hi_idx[a] <= g.res[a] || 4 * lo_idx[a] >= 3 * g.res[a]) return true;
  return false;
}

// The empty region around an empty cell crossed in one jump, cells [lo_idx, hi_idx): its block when
// wholly empty, else the cell; false when it touches the next finer level's box (as the CPU kernel).
__device__ bool empty_region(const OccupancyGridView& g, int64_t level, const int64_t* idx, int64_t* lo_idx,
                             int64_t* hi_idx) {
  const int64_t b[3] = {idx[0] / kOccupancyBlock, idx[1] / kOccupancyBlock, idx[2] / kOccupancyBlock};
  const bool block = !g.block_occupied[((level * g.blocks[0] + b[0]) * g.blocks[1] + b[1]) * g.blocks[2] + b[2]];
  for (int a = 0; a < 3; ++a) {
    const int64_t end = (b[a] + 1) * kOccupancyBlock;
    lo_idx[a] = block ? b[a] * kOccupancyBlock : idx[a];
    hi_idx[a] = block ? (end < g.res[a] ? end : g.res[a]) : idx[a] + 1;
  }
  if (level == 0 || clear_of_finer(g, lo_idx, hi_idx)) return true;
  if (!block) return false;
  for (int a = 0; a < 3; ++a) {
    lo_idx[a] = idx[a];
    hi_idx[a] = idx[a] + 1;
  }
  return clear_of_finer(g, lo_idx, hi_idx);
}

// Where the ray leaves cells [lo_idx, hi_idx) of a level.
__device__ double region_exit(const OccupancyGridView& g, int64_t level, const int64_t* lo_idx,
                              const int64_t* hi_idx, const double* o, const double* d) {
  double t = INFINITY;
  for (int a = 0; a < 3; ++a) {
    if (d[a] == 0.0) continue;
    double lo, ext;
    level_box(g, level, a, &lo, &ext);
    const int64_t face = d[a] > 0.0 ? hi_idx[a] : lo_idx[a];
    const double x = __dadd_rn(lo, __dmul_rn(ext, static_cast<double>(face)) / static_cast<double>(g.res[a]));
    t = fmin(t, (x - o[a]) / d[a]);
  }
  return t;
}

__device__ inline void midpoint(const double* o, const double* d, double ts, double te, double* p) {
  const double mid = (ts + te) * 0.5;
  for (int a = 0; a < 3; ++a) p[a] = __dadd_rn(o[a], __dmul_rn(mid, d[a]));
}

__device__ inline bool in_region(const OccupancyGridView& g, const double* o, const double* d, double ts, double te,
                                 int64_t level, const int64_t* lo_idx, const int64_t* hi_idx) {
  double p[3];
  int64_t l, j[3];
  midpoint(o, d, ts, te, p);
  if (!locate(g, p, &l, j) || l != level) return false;
  for (int a = 0; a < 3; ++a)
    if (j[a] < lo_idx[a] || j[a] >= hi_idx[a]) return false;
  return true;
}

__device__ inline double next_t(double t, double step, double cone) {
  return __dadd_rn(t, fmin(fmax(__dmul_rn(t, cone), step), kMaxStep));
}

__device__ inline double uniform_t(double t0, int64_t k, double step) {
  return __dadd_rn(t0, __dmul_rn(static_cast<double>(k), step));
}

// One ray, as march_ray in the CPU kernel (which explains the jumps): emit(ts, te) for each sample
// in order.
template <typename Emit>
__device__ void march_ray(const OccupancyGridView& g, const double* o, const double* d, double t0, double t1,
                          double step, double cone, Emit& emit) {
  if (!(isfinite(t0) && isfinite(t1) && t1 > t0)) return;
  int64_t k = 0;
  double ts = t0;
  while (true) {
    const double te = cone == 0.0 ? uniform_t(t0, k + 1, step) : next_t(ts, step, cone);
    if (!(te <= t1)) break;
    double p[3];
    int64_t level = 0, idx[3] = {0, 0, 0}, lo_idx[3] = {0, 0, 0}, hi_idx[3] = {0, 0, 0};
    midpoint(o, d, ts, te, p);
    const bool inside = locate(g, p, &level, idx);
    const bool hit = inside && occupied(g, level, idx);
    if (hit) emit(ts, te);
    const double t_exit = inside && !hit && empty_region(g, level, idx, lo_idx, hi_idx)
                              ? region_exit(g, level, lo_idx, hi_idx, o, d)
                              : -INFINITY;
    if (cone == 0.0) {
      const double target = ceil((t_exit - t0) / step - 0.5);
      int64_t jump = k + 1;
      if (target > static_cast<double>(k + 2) && target < 9e15) {
        const int64_t last = static_cast<int64_t>(target) - 1;
        if (in_region(g, o, d, uniform_t(t0, last, step), uniform_t(t0, last + 1, step), level, lo_idx, hi_idx))
          jump = last + 1;
      }
      k = jump;
      ts = uniform_t(t0, k, step);
    } else {
      double a = te, last_s = ts, last_e = te;
      while (true) {
        const double b = next_t(a, step, cone);
        if (!(b <= t1) || !((a + b) * 0.5 < t_exit)) break;
        last_s = a;
        last_e = b;
        a = b;
      }
      ts = (a != te && in_region(g, o, d, last_s, last_e, level, lo_idx, hi_idx)) ? a : te;
    }
  }
}

struct Counter {
  int64_t count = 0;
  __device__ void operator()(double, double) { ++count; }
};

template <typename T>
struct Writer {
  int64_t at, ray;
  int64_t* ray_indices;
  T* t_starts;
  T* t_ends;
  __device__ void operator()(double ts, double te) {
    ray_indices[at] = ray;
    t_starts[at] = static_cast<T>(ts);
    t_ends[at] = static_cast<T>(te);
    ++at;
  }
};

__global__ void march_count_kernel(OccupancyGridView g, const double* __restrict__ rays_o,
                                   const double* __restrict__ rays_d, const double* __restrict__ t0,
                                   const double* __restrict__ t1, int64_t n, double step, double cone,
                                   int64_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  Counter counter;
  march_ray(g, rays_o + 3 * i, rays_d + 3 * i, t0[i], t1[i], step, cone, counter);
  counts[i] = counter.count;
}

template <typename T>
__global__ void march_fill_kernel(OccupancyGridView g, const double* __restrict__ rays_o,
                                  const double* __restrict__ rays_d, const double* __restrict__ t0,
                                  const double* __restrict__ t1, int64_t n, double step, double cone,
                                  const int64_t* __restrict__ offsets, int64_t* ray_indices, T* t_starts, T* t_ends) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  Writer<T> writer{offsets[i], i, ray_indices, t_starts, t_ends};
  march_ray(g, rays_o + 3 * i, rays_d + 3 * i, t0[i], t1[i], step, cone, writer);
}

}  // namespace

template <typename T>
cudaError_t ray_aabb_intersect_cuda(const T* rays_o, const T* rays_d, const T* aabbs, int64_t n, int64_t m,
                                    T near_plane, T far_plane, T miss_value, T* t_mins, T* t_maxs, bool* hits,
                                    cudaStream_t stream) {
  if (n < 0 || m < 0) return cudaErrorInvalidValue;
  if (n == 0 || m == 0) return cudaSuccess;
  ray_aabb_intersect_kernel<T><<<blocks_for(n * m), kThreads, 0, stream>>>(rays_o, rays_d, aabbs, n, m, near_plane,
                                                                          far_plane, miss_value, t_mins, t_maxs, hits);
  return cudaGetLastError();
}

cudaError_t occupancy_grid_march_count_cuda(const OccupancyGridView& grid, const double* rays_o,
                                            const double* rays_d, const double* t0, const double* t1, int64_t n,
                                            double step_size, double cone_angle, int64_t* counts,
                                            cudaStream_t stream) {
  if (n < 0 || grid.levels < 1 || !(step_size > 0.0) || !(cone_angle >= 0.0)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  march_count_kernel<<<blocks_for(n), kThreads, 0, stream>>>(grid, rays_o, rays_d, t0, t1, n, step_size, cone_angle,
                                                             counts);
  return cudaGetLastError();
}

template <typename T>
cudaError_t occupancy_grid_march_fill_cuda(const OccupancyGridView& grid, const double* rays_o, const double* rays_d,
                                           const double* t0, const double* t1, int64_t n, double step_size,
                                           double cone_angle, const int64_t* offsets, int64_t* ray_indices,
                                           T* t_starts, T* t_ends, cudaStream_t stream) {
  if (n < 0 || grid.levels < 1 || !(step_size > 0.0) || !(cone_angle >= 0.0)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  march_fill_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(grid, rays_o, rays_d, t0, t1, n, step_size,
                                                               cone_angle, offsets, ray_indices, t_starts, t_ends);
  return cudaGetLastError();
}

template cudaError_t ray_aabb_intersect_cuda<float>(const float*, const float*, const float*, int64_t, int64_t, float,
                                                    float, float, float*, float*, bool*, cudaStream_t);
template cudaError_t ray_aabb_intersect_cuda<double>(const double*, const double*, const double*, int64_t, int64_t,
                                                     double, double, double, double*, double*, bool*, cudaStream_t);
template cudaError_t occupancy_grid_march_fill_cuda<float>(const OccupancyGridView&, const double*, const double*,
                                                           const double*, const double*, int64_t, double, double,
                                                           const int64_t*, int64_t*, float*, float*, cudaStream_t);
template cudaError_t occupancy_grid_march_fill_cuda<double>(const OccupancyGridView&, const double*, const double*,
                                                            const double*, const double*, int64_t, double, double,
                                                            const int64_t*, int64_t*, double*, double*, cudaStream_t);

}  // namespace fastgen
