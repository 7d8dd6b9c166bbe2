// The width-parameterised warp algorithms (seer/gpu/warp_algorithms.hpp) on the GPU, for 32 and 64
// lanes. On an NVIDIA GPU the 32-lane case runs twice: through the native shuffles
// (NativeWarpExchange) and through a shared-memory exchange; the 64-lane case (an AMD CDNA wavefront)
// runs through the shared-memory exchange, where 64 consecutive threads play one wavefront. The
// algorithm source is the same in all three. Results are compared with direct loops on the host.
// Skips without a usable device.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "device_attention_runner.hpp"
#include "seer/gpu/vendor.hpp"
#include "seer/gpu/warp_algorithms.hpp"
#include "seer/gpu/warp_exchange.hpp"

namespace {

using namespace seer::gpu;

constexpr int kThreads = 256;

// Lanes trade values through shared memory: groups of Width consecutive threads act as one warp.
// Every call synchronises the whole block, so all threads must make the same calls (they do: the
// algorithms are branch-free).
template <int Width>
struct SharedMemoryExchange {
  static constexpr int kWidth = Width;
  float* values;         // kThreads slots
  unsigned char* votes;  // kThreads slots

  __device__ int lane() const { return static_cast<int>(threadIdx.x) % Width; }
  __device__ int first() const { return static_cast<int>(threadIdx.x) - lane(); }

  __device__ float shuffle_xor(float value, int lane_offset) const {
    values[threadIdx.x] = value;
    __syncthreads();
    const float result = values[first() + ((lane() ^ lane_offset) % Width)];
    __syncthreads();
    return result;
  }
  __device__ float broadcast(float value, int source_lane) const {
    values[threadIdx.x] = value;
    __syncthreads();
    const float result = values[first() + source_lane % Width];
    __syncthreads();
    return result;
  }
  __device__ warp::LaneMask<Width> ballot(bool predicate) const {
    votes[threadIdx.x] = predicate ? 1 : 0;
    __syncthreads();
    warp::LaneMask<Width> mask = 0;
    for (int l = 0; l < Width; ++l)
      if (votes[first() + l] != 0) mask |= static_cast<warp::LaneMask<Width>>(warp::LaneMask<Width>{1} << l);
    __syncthreads();
    return mask;
  }
};

// Per thread: [0, log2 W]: group sums for groups of 1, 2, ..., W lanes; then the same for maxima;
// then the broadcast of lane `source`. Votes: ballot and all_lanes of (input > threshold).
struct Outputs {
  float* reductions;  // (2 * (log2 W + 1) + 1) * kThreads
  std::uint64_t* ballots;
  int* all_votes;
};

template <int Width, int Group, class Exchange>
__device__ void group_reductions(float value, const Exchange& exchange, float* out, int slot, int log2_width) {
  out[slot * kThreads + threadIdx.x] = warp::reduce_within_groups<Group>(value, exchange, warp::Sum{});
  out[(slot + log2_width + 1) * kThreads + threadIdx.x] =
      warp::reduce_within_groups<Group>(value, exchange, warp::Maximum{});
  if constexpr (Group < Width) group_reductions<Width, 2 * Group>(value, exchange, out, slot + 1, log2_width);
}

template <int Width, bool Native>
__global__ void warp_algorithms_kernel(const float* input, float threshold, int source, Outputs outputs) {
  __shared__ float values[kThreads];
  __shared__ unsigned char votes[kThreads];
  constexpr int kLog2Width = Width == 64 ? 6 : 5;
  const float value = input[threadIdx.x];
  auto run = [&](const auto& exchange) {
    group_reductions<Width, 1>(value, exchange, outputs.reductions, 0, kLog2Width);
    outputs.reductions[(2 * (kLog2Width + 1)) * kThreads + threadIdx.x] = exchange.broadcast(value, source);
    const bool vote = value > threshold;
    outputs.ballots[threadIdx.x] = exchange.ballot(vote);
    outputs.all_votes[threadIdx.x] = warp::all_lanes(vote, exchange) ? 1 : 0;
  };
  if constexpr (Native) {
    static_assert(Width == vendor::warp_size, "the native exchange runs at the hardware width");
    run(NativeWarpExchange{});
  } else {
    run(SharedMemoryExchange<Width>{values, votes});
  }
}

bool ok(cudaError_t error) { return error == cudaSuccess; }

template <int Width, bool Native>
void check_on_device(std::mt19937& generator) {
  constexpr int kLog2Width = Width == 64 ? 6 : 5;
  constexpr int kSlots = 2 * (kLog2Width + 1) + 1;
  std::uniform_real_distribution<float> distribution(-8.0f, 8.0f);
  std::vector<float> input(kThreads);
  for (float& x : input) x = distribution(generator);
  // Group 1 votes all true, group 2 all true but the last lane (lane Width - 1: bit 63 for 64 lanes).
  const float threshold = -100.0f;
  input[2 * Width - 1] = -200.0f;
  const int source = static_cast<int>(generator() % Width);

  float* device_input = nullptr;
  Outputs outputs{};
  REQUIRE(ok(cudaMalloc(&device_input, kThreads * sizeof(float))));
  REQUIRE(ok(cudaMalloc(&outputs.reductions, kSlots * kThreads * sizeof(float))));
  REQUIRE(ok(cudaMalloc(&outputs.ballots, kThreads * sizeof(std::uint64_t))));
  REQUIRE(ok(cudaMalloc(&outputs.all_votes, kThreads * sizeof(int))));
  REQUIRE(ok(cudaMemcpy(device_input, input.data(), kThreads * sizeof(float), cudaMemcpyHostToDevice)));
  // Poison: all bits set (NaN floats, -1 votes).
  REQUIRE(ok(cudaMemset(outputs.reductions, 0xff, kSlots * kThreads * sizeof(float))));
  REQUIRE(ok(cudaMemset(outputs.ballots, 0xff, kThreads * sizeof(std::uint64_t))));
  REQUIRE(ok(cudaMemset(outputs.all_votes, 0xff, kThreads * sizeof(int))));
  warp_algorithms_kernel<Width, Native><<<1, kThreads>>>(device_input, threshold, source, outputs);
  REQUIRE(ok(cudaGetLastError()));
  std::vector<float> reductions(kSlots * kThreads);
  std::vector<std::uint64_t> ballots(kThreads);
  std::vector<int> all_votes(kThreads);
  REQUIRE(
      ok(cudaMemcpy(reductions.data(), outputs.reductions, reductions.size() * sizeof(float), cudaMemcpyDeviceToHost)));
  REQUIRE(ok(cudaMemcpy(ballots.data(), outputs.ballots, kThreads * sizeof(std::uint64_t), cudaMemcpyDeviceToHost)));
  REQUIRE(ok(cudaMemcpy(all_votes.data(), outputs.all_votes, kThreads * sizeof(int), cudaMemcpyDeviceToHost)));
  CHECK(ok(cudaFree(device_input)));
  CHECK(ok(cudaFree(outputs.reductions)));
  CHECK(ok(cudaFree(outputs.ballots)));
  CHECK(ok(cudaFree(outputs.all_votes)));

  for (int t = 0; t < kThreads; ++t) {
    const int lane = t % Width, first = t - lane;
    for (int level = 0; level <= kLog2Width; ++level) {
      const int group = 1 << level;
      double sum = 0.0;
      float maximum = -std::numeric_limits<float>::infinity();
      for (int m = t / group * group; m < t / group * group + group; ++m) {
        sum += input[m];
        maximum = std::fmax(maximum, input[m]);
      }
      CHECK(reductions[level * kThreads + t] == doctest::Approx(sum).epsilon(1e-5));
      CHECK(reductions[(level + kLog2Width + 1) * kThreads + t] == maximum);
    }
    CHECK(reductions[(kSlots - 1) * kThreads + t] == input[first + source]);
    std::uint64_t expected_ballot = 0;
    for (int l = 0; l < Width; ++l)
      if (input[first + l] > threshold) expected_ballot |= std::uint64_t{1} << l;
    CHECK(ballots[t] == expected_ballot);
    const std::uint64_t full = Width == 64 ? ~std::uint64_t{0} : 0xffffffffull;
    CHECK(all_votes[t] == (expected_ballot == full ? 1 : 0));
  }
  // The dissenting lane is the warp's last: its group must vote "not all", every other group "all".
  CHECK(all_votes[2 * Width - 1] == 0);
  CHECK(all_votes[0] == 1);
}

}  // namespace

TEST_CASE("gpu warp algorithms: 32 and 64 lanes (native shuffles and shared-memory exchange)") {
  if (!seer::gpu_test::have_gpu()) {
    MESSAGE("no usable CUDA device: skipped");
    return;
  }
  std::mt19937 generator(99u);
  for (int trial = 0; trial < 4; ++trial) {
    check_on_device<32, true>(generator);
    check_on_device<32, false>(generator);
    check_on_device<64, false>(generator);
  }
}
