// seer::hip::DeviceBlockSet: a BlockSet in GPU memory for seer::hip::block_sparse_attention.
// The class is written once, against the vendor layer, in seer/gpu/device_block_set.hpp.
#pragma once

#include "seer/gpu/device_block_set.hpp"

namespace seer::hip {

using DeviceBlockSet = gpu::DeviceBlockSet;

}  // namespace seer::hip
