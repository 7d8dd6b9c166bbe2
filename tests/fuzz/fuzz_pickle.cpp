// libFuzzer target: the pickle machine and the torch tensor-dict interpreter. The input is used as
// data.pkl inside a well-formed torch.save-shaped archive with a few storages, so the fuzzer reaches
// the tensor checks (storage keys, sizes, offsets, strides) without having to build a ZIP itself.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_support.hpp"
#include "seer/io/pickle.hpp"
#include "seer/io/torch_checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto document = seer::io::read_pickle(data, size, "fuzz", seer::io::torch_checkpoint_globals());
    (void)document.root_node();
  } catch (const seer::Error&) {
  }
  std::vector<seer_fuzz::Record> records = {{"x/data.pkl", std::vector<std::uint8_t>(data, data + size)},
                                            {"x/byteorder", {'l', 'i', 't', 't', 'l', 'e'}}};
  for (int key = 0; key < 4; ++key)  // storages of 0, 24, 48 and 72 bytes
    records.push_back({"x/data/" + std::to_string(key), std::vector<std::uint8_t>(24 * key, 0x3f)});
  try {
    const auto checkpoint = seer::io::TorchCheckpoint::from_bytes(seer_fuzz::stored_zip(records), "fuzz");
    for (const auto& tensor : checkpoint.tensors()) {
      (void)checkpoint.read_bytes(tensor.name);
      try {
        (void)checkpoint.read_float(tensor.name);
      } catch (const seer::InvalidArgument&) {  // an integer tensor
      }
    }
  } catch (const seer::Error&) {
  }
  return 0;
}
