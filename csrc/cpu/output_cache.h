// Outputs of fastgen's CPU kernels come from a cache of buffers that were already
// written once. A fresh multi-MiB allocation costs a page fault (and the kernel
// zeroing the page) per 4 KiB, or per 2 MiB with THP_MEM_ALLOC_ENABLE=1: for a
// memory-bound kernel that is more time than the kernel itself. Training loops ask
// for the same output sizes every step, so a freed output is kept and handed out
// again, as the CUDA caching allocator does on GPUs.
//
// Small outputs go to torch's CPU allocator. The cache holds at most
// FASTGEN_CPU_CACHE_MB MiB of free buffers (default 1024; 0 turns it off), a
// limit fastgen.ops.cpu_cache_set_limit changes at run time;
// fastgen.ops.cpu_cache_clear() returns the free buffers to the system.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace fastgen {

// torch.empty_like(like) (same sizes and strides, preserve_format), from the cache.
at::Tensor empty_like_cached(const at::Tensor& like);
// A contiguous tensor of the given sizes and options, from the cache.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options);

// {bytes cached (free), buffers cached, hits, misses, limit in bytes}
std::vector<int64_t> cpu_cache_info();
void cpu_cache_clear();
// Changing the limit also frees every cached buffer.
void cpu_cache_set_limit(int64_t megabytes);

}  // namespace fastgen
