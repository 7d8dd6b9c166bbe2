// A minimal fork-join loop for the CPU paths: runs body(i) for i in [0, count) on up to
// `threads` std::threads (0 = hardware concurrency). Work is handed out in dynamic chunks, so
// uneven items (causal rows of different lengths) balance. The first exception thrown by a body
// is rethrown on the calling thread after all workers have stopped.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace seer {

inline int default_thread_count() {
  const unsigned hardware = std::thread::hardware_concurrency();
  return hardware == 0 ? 1 : static_cast<int>(hardware);
}

template <class Body>
void parallel_for(std::int64_t count, int threads, Body&& body) {
  if (count <= 0) return;
  if (threads <= 0) threads = default_thread_count();
  threads = static_cast<int>(std::min<std::int64_t>(threads, count));
  if (threads == 1) {
    for (std::int64_t i = 0; i < count; ++i) body(i);
    return;
  }
  std::atomic<std::int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto worker = [&] {
    try {
      for (std::int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) body(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      next.store(count);
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads - 1));
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& thread : pool) thread.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace seer
