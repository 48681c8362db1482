// NeRF ray marching on the CPU: ray-AABB intersection and sampling along rays through a multi-level
// occupancy grid (fastgen/ops/nerf/marching.py; spec: fastgen/ops/nerf/reference_marching.py).
//
// The marcher computes every position in double with the reference's operations in its order, and
// with contraction off (-march=native would otherwise fuse o + t * d into an FMA), so it emits
// bit-for-bit the reference's samples. Rays run in parallel, count-then-fill: a first pass counts
// each ray's samples, an exclusive prefix sum places them, a second pass writes them; the packed
// output is exact-sized and the same for any thread count.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace fastgen {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMaxStep = 1e10;  // nerfacc's upper clamp of a cone step
// Wholly empty blocks of kBlock^3 cells are crossed in one jump (the space around a scene is).
constexpr int64_t kBlock = 8;
constexpr int64_t kMaxLevels = 32;  // MAX_LEVELS in fastgen/ops/nerf/marching.py: 2^l stays exact
constexpr double kMaxStepsPerRay = double(1 << 24);  // MAX_STEPS_PER_RAY in fastgen/ops/nerf/marching.py

// ---------------------------------------------------------------- ray-AABB intersection

// One ray against one box by slabs. A zero direction component leaves its slab unbounded when the
// origin lies in it and misses otherwise (the reference's where(), not 0 * inf = NaN).
template <typename T>
void intersect(const T* o, const T* d, const T* box, T near_plane, T far_plane, T miss_value, T* t_min, T* t_max,
               bool* hit) {
  T enter = -std::numeric_limits<T>::infinity(), exit = std::numeric_limits<T>::infinity();
  for (int a = 0; a < 3; ++a) {
    T lo, hi;
    if (d[a] == T(0)) {
      const bool inside = o[a] >= box[a] && o[a] <= box[a + 3];
      lo = inside ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
      hi = -lo;
    } else {
      const T t1 = (box[a] - o[a]) / d[a], t2 = (box[a + 3] - o[a]) / d[a];
      lo = std::min(t1, t2);
      hi = std::max(t1, t2);
    }
    enter = std::max(enter, lo);
    exit = std::min(exit, hi);
  }
  *hit = exit > enter && exit > T(0);
  *t_min = *hit ? std::min(std::max(enter, near_plane), far_plane) : miss_value;
  *t_max = *hit ? std::min(std::max(exit, near_plane), far_plane) : miss_value;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ray_aabb_intersect(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                                                  const at::Tensor& aabbs, double near_plane,
                                                                  double far_plane, double miss_value) {
  TORCH_CHECK(rays_o.dim() == 2 && rays_o.size(1) == 3 && rays_d.sizes() == rays_o.sizes(),
              "ray_aabb_intersect: rays_o and rays_d must be [n, 3], got ", rays_o.sizes(), " and ", rays_d.sizes());
  TORCH_CHECK(aabbs.dim() == 2 && aabbs.size(1) == 6, "ray_aabb_intersect: aabbs must be [m, 6], got ",
              aabbs.sizes());
  TORCH_CHECK(rays_d.scalar_type() == rays_o.scalar_type() && aabbs.scalar_type() == rays_o.scalar_type(),
              "ray_aabb_intersect: rays_o, rays_d and aabbs must share a dtype");
  const int64_t n = rays_o.size(0), m = aabbs.size(0);
  at::Tensor t_mins = at::empty({n, m}, rays_o.options());
  at::Tensor t_maxs = at::empty({n, m}, rays_o.options());
  at::Tensor hits = at::empty({n, m}, rays_o.options().dtype(at::kBool));
  if (n == 0 || m == 0) return {t_mins, t_maxs, hits};
  const at::Tensor o = rays_o.contiguous(), d = rays_d.contiguous(), boxes = aabbs.contiguous();
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "ray_aabb_intersect", [&] {
    const scalar_t* op = o.const_data_ptr<scalar_t>();
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    const scalar_t* bp = boxes.const_data_ptr<scalar_t>();
    scalar_t* lo = t_mins.data_ptr<scalar_t>();
    scalar_t* hi = t_maxs.data_ptr<scalar_t>();
    bool* hit = hits.data_ptr<bool>();
    at::parallel_for(0, n, std::max<int64_t>(1, 16384 / m), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        for (int64_t j = 0; j < m; ++j)
          intersect<scalar_t>(op + 3 * i, dp + 3 * i, bp + 6 * j, static_cast<scalar_t>(near_plane),
                              static_cast<scalar_t>(far_plane), static_cast<scalar_t>(miss_value), lo + i * m + j,
                              hi + i * m + j, hit + i * m + j);
    });
  });
  return {t_mins, t_maxs, hits};
}

// ---------------------------------------------------------------- occupancy-grid marching

// Level l's box is the roi scaled by 2^l around its center; a point belongs to the finest level
// whose box holds it, and to the cell floor(c) there, c = (p - lo_l) * (res / extent_l) in [0, res].
struct Grid {
  const bool* binaries;  // [levels, res0, res1, res2]
  int64_t levels;
  int64_t res[3];
  std::vector<double> lo, ext, scale;  // [levels * 3]; scale = res / ext
  int64_t blocks[3];                   // ceil(res / kBlock)
  std::vector<uint8_t> block_occupied;  // [levels, blocks0, blocks1, blocks2]: any cell of the block set

  // Level and per-axis cell of p; false outside every level.
  bool locate(const double* p, int64_t* level, int64_t* idx) const {
    for (int64_t l = 0; l < levels; ++l) {
      double c[3];
      bool inside = true;
      for (int a = 0; a < 3; ++a) {
        c[a] = (p[a] - lo[3 * l + a]) * scale[3 * l + a];
        inside = inside && c[a] >= 0.0 && c[a] <= static_cast<double>(res[a]);
      }
      if (!inside) continue;
      for (int a = 0; a < 3; ++a) idx[a] = std::min(static_cast<int64_t>(std::floor(c[a])), res[a] - 1);
      *level = l;
      return true;
    }
    return false;
  }

  bool occupied(int64_t level, const int64_t* idx) const {
    return binaries[((level * res[0] + idx[0]) * res[1] + idx[1]) * res[2] + idx[2]];
  }

  void build_blocks() {
    for (int a = 0; a < 3; ++a) blocks[a] = (res[a] + kBlock - 1) / kBlock;
    block_occupied.assign(levels * blocks[0] * blocks[1] * blocks[2], 0);
    at::parallel_for(0, levels * blocks[0], 1, [&](int64_t begin, int64_t end) {
      for (int64_t lb = begin; lb < end; ++lb) {
        const int64_t l = lb / blocks[0], b0 = lb % blocks[0];
        for (int64_t i = b0 * kBlock; i < std::min(res[0], (b0 + 1) * kBlock); ++i)
          for (int64_t j = 0; j < res[1]; ++j)
            for (int64_t k = 0; k < res[2]; ++k) {
              const int64_t idx[3] = {i, j, k};
              if (occupied(l, idx)) block_occupied[((lb * blocks[1]) + j / kBlock) * blocks[2] + k / kBlock] = 1;
            }
      }
    });
  }

  // The empty region around an empty cell that a ray may cross in one jump, cells [lo_idx, hi_idx) per
  // axis: its block when the whole block is empty, else the cell. False when the region touches the
  // next finer level's box (the middle half of the cells), whose points belong to that level.
  bool empty_region(int64_t level, const int64_t* idx, int64_t* lo_idx, int64_t* hi_idx) const {
    const int64_t b[3] = {idx[0] / kBlock, idx[1] / kBlock, idx[2] / kBlock};
    const bool block = !block_occupied[((level * blocks[0] + b[0]) * blocks[1] + b[1]) * blocks[2] + b[2]];
    for (int a = 0; a < 3; ++a) {
      lo_idx[a] = block ? b[a] * kBlock : idx[a];
      hi_idx[a] = block ? std::min(res[a], (b[a] + 1) * kBlock) : idx[a] + 1;
    }
    if (level == 0 || clear_of_finer(lo_idx, hi_idx)) return true;
    if (!block) return false;
    for (int a = 0; a < 3; ++a) {
      lo_idx[a] = idx[a];
      hi_idx[a] = idx[a] + 1;
    }
    return clear_of_finer(lo_idx, hi_idx);
  }

  bool clear_of_finer(const int64_t* lo_idx, const int64_t* hi_idx) const {
    for (int a = 0; a < 3; ++a)
      if (4 * hi_idx[a] <= res[a] || 4 * lo_idx[a] >= 3 * res[a]) return true;
    return false;
  }

  // Where the ray leaves cells [lo_idx, hi_idx) of a level.
  double region_exit(int64_t level, const int64_t* lo_idx, const int64_t* hi_idx, const double* o,
                     const double* inv_d) const {
    double t = kInf;
    for (int a = 0; a < 3; ++a) {
      if (inv_d[a] == kInf || inv_d[a] == -kInf) continue;  // d[a] = 0: never leaves through this axis
      const int64_t face = inv_d[a] > 0.0 ? hi_idx[a] : lo_idx[a];
      const double x = lo[3 * level + a] + ext[3 * level + a] * static_cast<double>(face) / static_cast<double>(res[a]);
      t = std::min(t, (x - o[a]) * inv_d[a]);
    }
    return t;
  }
};

struct Sample {
  double start, end;
};

// Marches one ray through [t0, t1]: samples [t_k, t_k+1] while t_k+1 <= t1, with t_k = t0 + k * step
// (cone_angle = 0) or t_k+1 = t_k + clamp(t_k * cone_angle, step, 1e10), keeping those whose midpoint
// lies in an occupied cell. In an empty cell (or wholly empty block of cells) it jumps to the first
// sample whose midpoint may lie past the region's exit; the jump is taken only when the last skipped
// midpoint is in that same region: each axis' cell index is monotone in t (rounding is monotone), so
// every skipped midpoint is too. The samples are thus exactly those of checking every step.
template <typename Emit>
void march_ray(const Grid& g, const double* o, const double* d, double t0, double t1, double step, double cone,
               Emit&& emit) {
  auto position = [&](double ts, double te, double* p) {
    const double mid = (ts + te) * 0.5;
    for (int a = 0; a < 3; ++a) p[a] = o[a] + mid * d[a];
  };
  auto in_region = [&](double ts, double te, int64_t level, const int64_t* lo_idx, const int64_t* hi_idx) {
    double p[3];
    int64_t l, j[3];
    position(ts, te, p);
    if (!g.locate(p, &l, j) || l != level) return false;
    for (int a = 0; a < 3; ++a)
      if (j[a] < lo_idx[a] || j[a] >= hi_idx[a]) return false;
    return true;
  };
  auto next_t = [&](double t) { return t + std::min(std::max(t * cone, step), kMaxStep); };
  if (!(std::isfinite(t0) && std::isfinite(t1) && t1 > t0)) return;
  // Region exits need no exactness (every jump is verified), so they multiply by 1 / d and 1 / step.
  const double inv_d[3] = {1.0 / d[0], 1.0 / d[1], 1.0 / d[2]};
  const double inv_step = 1.0 / step;
  int64_t k = 0;
  double ts = t0;
  while (true) {
    const double te = cone == 0.0 ? t0 + static_cast<double>(k + 1) * step : next_t(ts);
    if (!(te <= t1)) break;
    double p[3];
    int64_t level, idx[3], lo_idx[3], hi_idx[3];
    position(ts, te, p);
    const bool inside = g.locate(p, &level, idx);
    const bool hit = inside && g.occupied(level, idx);
    if (hit) emit(Sample{ts, te});
    const double t_exit = inside && !hit && g.empty_region(level, idx, lo_idx, hi_idx)
                              ? g.region_exit(level, lo_idx, hi_idx, o, inv_d)
                              : -kInf;
    if (cone == 0.0) {
      // The first k whose midpoint t0 + (k + 1/2) step may reach t_exit.
      const double target = std::ceil((t_exit - t0) * inv_step - 0.5);
      int64_t jump = k + 1;
      if (target > static_cast<double>(k + 2) && target < 9e15) {
        const int64_t last = static_cast<int64_t>(target) - 1;
        if (in_region(t0 + static_cast<double>(last) * step, t0 + static_cast<double>(last + 1) * step, level, lo_idx,
                      hi_idx))
          jump = last + 1;
      }
      k = jump;
      ts = t0 + static_cast<double>(k) * step;
    } else {
      double a = te, last_s = ts, last_e = te;
      while (true) {
        const double b = next_t(a);
        if (!(b <= t1) || !((a + b) * 0.5 < t_exit)) break;
        last_s = a;
        last_e = b;
        a = b;
      }
      ts = (a != te && in_region(last_s, last_e, level, lo_idx, hi_idx)) ? a : te;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> occupancy_grid_march(
    const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& t_starts, const at::Tensor& t_ends,
    const at::Tensor& binaries, at::ArrayRef<double> roi_aabb, double step_size, double cone_angle,
    int64_t max_samples) {
  TORCH_CHECK(rays_o.dim() == 2 && rays_o.size(1) == 3 && rays_d.sizes() == rays_o.sizes(),
              "occupancy_grid_march: rays_o and rays_d must be [n, 3], got ", rays_o.sizes(), " and ",
              rays_d.sizes());
  const int64_t n = rays_o.size(0);
  TORCH_CHECK(t_starts.dim() == 1 && t_starts.size(0) == n && t_ends.sizes() == t_starts.sizes(),
              "occupancy_grid_march: t_starts and t_ends must be [", n, "], got ", t_starts.sizes(), " and ",
              t_ends.sizes());
  TORCH_CHECK(binaries.dim() == 4 && binaries.scalar_type() == at::kBool && binaries.size(0) >= 1,
              "occupancy_grid_march: binaries must be bool [levels, rx, ry, rz], got ", binaries.scalar_type(), " ",
              binaries.sizes());
  TORCH_CHECK(roi_aabb.size() == 6, "occupancy_grid_march: roi_aabb must have 6 values, got ", roi_aabb.size());
  for (int a = 0; a < 3; ++a)
    TORCH_CHECK(std::isfinite(roi_aabb[a]) && std::isfinite(roi_aabb[a + 3]) && roi_aabb[a] < roi_aabb[a + 3],
                "occupancy_grid_march: roi_aabb must be finite with min < max, got ", roi_aabb);
  TORCH_CHECK(binaries.size(0) <= kMaxLevels, "occupancy_grid_march: at most ", kMaxLevels, " levels, got ",
              binaries.size(0));
  TORCH_CHECK(step_size > 0 && cone_angle >= 0, "occupancy_grid_march: step_size must be > 0 and cone_angle >= 0, got ",
              step_size, " and ", cone_angle);
  TORCH_CHECK(rays_o.scalar_type() == rays_d.scalar_type() &&
                  (rays_o.scalar_type() == at::kFloat || rays_o.scalar_type() == at::kDouble),
              "occupancy_grid_march: rays_o and rays_d must both be float32 or float64");

  const at::Tensor bins = binaries.contiguous();
  Grid g{bins.const_data_ptr<bool>(), bins.size(0), {bins.size(1), bins.size(2), bins.size(3)}, {}, {}, {}, {}, {}};
  for (int64_t l = 0; l < g.levels; ++l) {
    const double scale = std::ldexp(1.0, static_cast<int>(l));
    for (int a = 0; a < 3; ++a) {
      const double center = (roi_aabb[a] + roi_aabb[a + 3]) * 0.5, half = (roi_aabb[a + 3] - roi_aabb[a]) * 0.5;
      const double lo = center - half * scale, hi = center + half * scale;
      g.lo.push_back(lo);
      g.ext.push_back(hi - lo);
      g.scale.push_back(static_cast<double>(g.res[a]) / (hi - lo));
    }
  }
  g.build_blocks();
  const at::Tensor o = rays_o.to(at::kDouble).contiguous(), d = rays_d.to(at::kDouble).contiguous();
  const at::Tensor t0 = t_starts.to(at::kDouble).contiguous(), t1 = t_ends.to(at::kDouble).contiguous();
  const double* op = o.const_data_ptr<double>();
  const double* dp = d.const_data_ptr<double>();
  const double* t0p = t0.const_data_ptr<double>();
  const double* t1p = t1.const_data_ptr<double>();

  // The Python layer's bounds on a ray's steps, so that no input loops (nearly) forever.
  for (int64_t i = 0; i < n; ++i) {
    if (!(std::isfinite(t0p[i]) && std::isfinite(t1p[i]) && t1p[i] > t0p[i])) continue;
    TORCH_CHECK((t1p[i] - t0p[i]) / step_size <= kMaxStepsPerRay &&
                    step_size > std::max(std::abs(t0p[i]), std::abs(t1p[i])) * std::ldexp(1.0, -40),
                "occupancy_grid_march: step_size=", step_size, " is too small for ray ", i, "'s interval [", t0p[i],
                ", ", t1p[i], "]");
  }

  // Rays differ a lot in cost (a miss is free, a grazing ray long), so chunks are small.
  constexpr int64_t kGrain = 64;
  std::vector<int64_t> offsets(n + 1, 0);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t count = 0;
      march_ray(g, op + 3 * i, dp + 3 * i, t0p[i], t1p[i], step_size, cone_angle, [&](const Sample&) { ++count; });
      offsets[i + 1] = count;
    }
  });
  for (int64_t i = 0; i < n; ++i) offsets[i + 1] += offsets[i];
  const int64_t total = offsets[n];
  TORCH_CHECK(total <= max_samples, "occupancy_grid_march: the rays take ", total, " samples, more than max_samples=",
              max_samples, "; raise render_step_size, march fewer rays at a time, or raise max_samples");

  at::Tensor ray_indices = at::empty({total}, rays_o.options().dtype(at::kLong));
  at::Tensor starts = at::empty({total}, rays_o.options());
  at::Tensor ends = at::empty({total}, rays_o.options());
  if (total == 0) return {ray_indices, starts, ends};
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "occupancy_grid_march", [&] {
    int64_t* idx = ray_indices.data_ptr<int64_t>();
    scalar_t* s = starts.data_ptr<scalar_t>();
    scalar_t* e = ends.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        int64_t slot = offsets[i];
        march_ray(g, op + 3 * i, dp + 3 * i, t0p[i], t1p[i], step_size, cone_angle, [&](const Sample& sample) {
          idx[slot] = i;
          s[slot] = static_cast<scalar_t>(sample.start);
          e[slot] = static_cast<scalar_t>(sample.end);
          ++slot;
        });
      }
    });
  });
  return {ray_indices, starts, ends};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgen_C, CPU, m) {
  m.impl("ray_aabb_intersect", &ray_aabb_intersect);
  m.impl("occupancy_grid_march", &occupancy_grid_march);
}

}  // namespace fastgen
