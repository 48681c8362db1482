#include "output_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

namespace fastgen {
namespace {

constexpr size_t kMinCachedBytes = size_t(1) << 20;  // below this, malloc already reuses memory
constexpr size_t kAlignment = size_t(2) << 20;        // huge-page aligned, as torch's THP setting does

int64_t limit_from_env() {
  const char* mb = std::getenv("FASTGEN_CPU_CACHE_MB");
  return (mb == nullptr ? int64_t(1024) : std::strtoll(mb, nullptr, 10)) << 20;
}

bool huge_pages_requested() {
  const char* thp = std::getenv("THP_MEM_ALLOC_ENABLE");
  return thp != nullptr && std::strcmp(thp, "1") == 0;
}

class OutputCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinCachedBytes || limit_.load() == 0) return c10::GetCPUAllocator()->allocate(bytes);
    const size_t size = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* data = take(size);
    if (data == nullptr) data = fresh(size);
    return {data, new Block{this, data, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {int64_t(cached_bytes_), int64_t(free_.size()), hits_, misses_, limit_.load()};
  }

  void set_limit(int64_t bytes) {
    limit_.store(bytes);
    clear();
  }

  void clear() {
    std::unordered_multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_bytes_ = 0;
    }
    for (auto& [size, data] : blocks) std::free(data);
  }

 private:
  struct Block {
    OutputCache* cache;
    void* data;
    size_t size;
  };

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    block->cache->give(block->data, block->size);
    delete block;
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(size);
    if (it == free_.end()) {
      ++misses_;
      return nullptr;
    }
    void* data = it->second;
    free_.erase(it);
    cached_bytes_ -= size;
    ++hits_;
    return data;
  }

  void give(void* data, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (int64_t(cached_bytes_ + size) <= limit_.load()) {
        free_.emplace(size, data);
        cached_bytes_ += size;
        return;
      }
    }
    std::free(data);
  }

  static void* fresh(size_t size) {
    void* data = nullptr;
    if (posix_memalign(&data, kAlignment, size) != 0) throw std::bad_alloc();
    if (huge_pages_requested()) madvise(data, size, MADV_HUGEPAGE);
    return data;
  }

  std::atomic<int64_t> limit_{limit_from_env()};
  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors freed during interpreter shutdown still hand their buffers back.
OutputCache& cache() {
  static auto* instance = new OutputCache();
  return *instance;
}

}  // namespace

at::Tensor empty_like_cached(const at::Tensor& like) {
  // The strides empty_like would choose, worked out on the meta device (no memory).
  const at::Tensor meta = at::empty_like(like, like.options().device(at::kMeta));
  return at::detail::empty_strided_generic(meta.sizes(), meta.strides(), &cache(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), like.scalar_type());
}

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::detail::empty_generic(sizes, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), std::nullopt);
}

std::vector<int64_t> cpu_cache_info() { return cache().info(); }

void cpu_cache_clear() { cache().clear(); }

void cpu_cache_set_limit(int64_t megabytes) {
  TORCH_CHECK(megabytes >= 0, "megabytes must be >= 0, got ", megabytes);
  cache().set_limit(megabytes << 20);
}

}  // namespace fastgen
