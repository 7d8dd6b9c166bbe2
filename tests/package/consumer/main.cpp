// Consumer smoke program: builds the dense causal BlockSet of one sequence and checks its size.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "seer/core/block_set.hpp"

int main() {
  // 200 tokens in blocks of 64: 4 query blocks seeing 1, 2, 3 and 4 key blocks under causal masking.
  const std::vector<seer::BlockGeometry> sequences{seer::BlockGeometry{200, 200, 64, true}};
  const seer::BlockSet blocks = seer::all_visible_blocks(2, sequences);
  const std::int64_t expected_blocks = 2 * (1 + 2 + 3 + 4);
  std::printf("seer consumer: %lld rows, %lld kept blocks\n", static_cast<long long>(blocks.rows()),
              static_cast<long long>(blocks.kept_blocks()));
  return blocks.rows() == 8 && blocks.kept_blocks() == expected_blocks ? 0 : 1;
}
