// BlockFeatureScores: gate scores held as one feature vector per query block and per key block.
//
// Gates that score a (query block, key block) pair by a scaled dot product of two block features
// (the SeerAttention prefill gate, the mean-pooling baseline) store the features, O(S/B * dim) per
// head, and compute a row of logits on demand in score_row(). The (S/B)^2 logit matrix is never
// stored, which is what lets select_blocks run at 1M tokens.
//
// Query features exist per query head. Key features exist per "key head": either one per query
// head (key_heads == heads) or one per KV head shared by a GQA group (query head h reads key head
// h / (heads / key_heads)). Storage follows BlockSet's row order: sequence, then head, then block.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "seer/core/block_geometry.hpp"
#include "seer/core/error.hpp"

namespace seer {

class BlockFeatureScores {
 public:
  BlockFeatureScores() = default;

  // Allocates zeroed features for these sequences; the gate fills them through query_feature /
  // key_feature. logits = scale * dot(query feature, key feature).
  BlockFeatureScores(std::vector<BlockGeometry> sequences, std::int64_t heads, std::int64_t key_heads,
                     std::int64_t feature_dim, double scale)
      : sequences_(std::move(sequences)),
        heads_(heads),
        key_heads_(key_heads),
        feature_dim_(feature_dim),
        scale_(scale) {
    require(heads > 0, "heads", "is ", heads, ", expected > 0");
    require(key_heads > 0 && heads % key_heads == 0, "key_heads", "is ", key_heads, ", expected a divisor of the ",
            heads, " query heads");
    require(feature_dim > 0, "feature_dim", "is ", feature_dim, ", expected > 0");
    query_block_offsets_.push_back(0);
    key_block_offsets_.push_back(0);
    for (const auto& s : sequences_) {
      require(s.block_size == sequences_.front().block_size, "sequences", "mix block sizes ",
              sequences_.front().block_size, " and ", s.block_size);
      query_block_offsets_.push_back(query_block_offsets_.back() + s.query_blocks());
      key_block_offsets_.push_back(key_block_offsets_.back() + s.key_blocks());
    }
    query_features_.assign(static_cast<std::size_t>(heads_ * query_block_offsets_.back() * feature_dim_), 0.0);
    key_features_.assign(static_cast<std::size_t>(key_heads_ * key_block_offsets_.back() * feature_dim_), 0.0);
  }

  // The select_blocks interface.
  std::int64_t heads() const { return heads_; }
  const std::vector<BlockGeometry>& sequences() const { return sequences_; }

  // logits[n] for the visible key blocks n in [0, visible_key_blocks(m)) of query block m. Thread-safe.
  void score_row(std::int64_t b, std::int64_t h, std::int64_t m, double* logits) const {
    require(b >= 0 && b < batch(), "b", "sequence ", b, " is outside [0, ", batch(), ")");
    require(h >= 0 && h < heads_, "h", "head ", h, " is outside [0, ", heads_, ")");
    const BlockGeometry& g = sequences_[b];
    require(m >= 0 && m < g.query_blocks(), "m", "query block ", m, " is outside [0, ", g.query_blocks(), ")");
    const double* query = query_feature(b, h, m);
    const std::int64_t visible = g.visible_key_blocks(m);
    const std::int64_t key_head = key_head_of(h);
    for (std::int64_t n = 0; n < visible; ++n) {
      const double* key = key_feature(b, key_head, n);
      double dot = 0.0;
      for (std::int64_t d = 0; d < feature_dim_; ++d) dot += query[d] * key[d];
      logits[n] = dot * scale_;
    }
  }

  std::int64_t batch() const { return static_cast<std::int64_t>(sequences_.size()); }
  std::int64_t key_heads() const { return key_heads_; }
  std::int64_t feature_dim() const { return feature_dim_; }
  double scale() const { return scale_; }
  std::int64_t key_head_of(std::int64_t h) const { return h / (heads_ / key_heads_); }

  // Feature of query block m of (b, h) and of key block n of (b, key head), feature_dim values each.
  double* query_feature(std::int64_t b, std::int64_t h, std::int64_t m) {
    return query_features_.data() + query_index(b, h, m) * feature_dim_;
  }
  const double* query_feature(std::int64_t b, std::int64_t h, std::int64_t m) const {
    return query_features_.data() + query_index(b, h, m) * feature_dim_;
  }
  double* key_feature(std::int64_t b, std::int64_t key_head, std::int64_t n) {
    return key_features_.data() + key_index(b, key_head, n) * feature_dim_;
  }
  const double* key_feature(std::int64_t b, std::int64_t key_head, std::int64_t n) const {
    return key_features_.data() + key_index(b, key_head, n) * feature_dim_;
  }

 private:
  std::int64_t query_index(std::int64_t b, std::int64_t h, std::int64_t m) const {
    const std::int64_t first = query_block_offsets_[b];
    return heads_ * first + h * (query_block_offsets_[b + 1] - first) + m;
  }
  std::int64_t key_index(std::int64_t b, std::int64_t key_head, std::int64_t n) const {
    const std::int64_t first = key_block_offsets_[b];
    return key_heads_ * first + key_head * (key_block_offsets_[b + 1] - first) + n;
  }

  std::vector<BlockGeometry> sequences_;
  std::int64_t heads_ = 0;
  std::int64_t key_heads_ = 1;
  std::int64_t feature_dim_ = 0;
  double scale_ = 1.0;
  std::vector<std::int64_t> query_block_offsets_;
  std::vector<std::int64_t> key_block_offsets_;
  std::vector<double> query_features_;
  std::vector<double> key_features_;
};

}  // namespace seer
