// Host-side 16-bit floating-point storage types: IEEE binary16 (`half`) and bfloat16.
//
// They are plain 2-byte structs with the same bit layout as CUDA's __half / __nv_bfloat16 and HIP's
// equivalents, so a buffer of seer::bfloat16 can be handed to a GPU kernel unchanged. Arithmetic
// happens in float: convert with to_float() / from_float<T>(). Conversion rounds to nearest even,
// like the hardware.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace seer {

struct half {
  std::uint16_t bits = 0;
};

struct bfloat16 {
  std::uint16_t bits = 0;
};

namespace detail {

inline std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float bits_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline std::uint16_t float_to_bfloat16_bits(float value) {
  std::uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<std::uint16_t>(bits >> 16);
}

inline std::uint16_t float_to_half_bits(float value) {
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);   // NaN
  if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (magnitude < 0x38800000u) {
    // Subnormal or zero in half: scale into the 10-bit mantissa with round-to-nearest-even.
    if (magnitude < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half of the smallest subnormal
    const std::uint32_t exponent = magnitude >> 23;
    const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // 14..24
    std::uint32_t result = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
    return static_cast<std::uint16_t>(sign | result);
  }
  std::uint32_t rebased = magnitude - 0x38000000u;  // exponent bias 127 -> 15
  rebased += 0xfffu + ((rebased >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | (rebased >> 13));
}

inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return bits_float(sign);
    // Subnormal: value = mantissa * 2^-24.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

}  // namespace detail

inline float to_float(float value) { return value; }
inline double to_float(double value) { return value; }
inline float to_float(half value) { return detail::half_bits_to_float(value.bits); }
inline float to_float(bfloat16 value) { return detail::bits_float(static_cast<std::uint32_t>(value.bits) << 16); }

template <class T>
T from_float(float value) {
  if constexpr (std::is_same_v<T, half>) {
    return half{detail::float_to_half_bits(value)};
  } else if constexpr (std::is_same_v<T, bfloat16>) {
    return bfloat16{detail::float_to_bfloat16_bits(value)};
  } else {
    return static_cast<T>(value);
  }
}

// Rounds a float to the precision of T and back: what storing in a T buffer does to a value.
template <class T>
float round_to(float value) {
  return to_float(from_float<T>(value));
}

template <class T>
inline constexpr bool is_element_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>;

template <class T>
constexpr const char* element_type_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, double>) return "float64";
  if constexpr (std::is_same_v<T, half>) return "float16";
  if constexpr (std::is_same_v<T, bfloat16>) return "bfloat16";
  return "unknown";
}

static_assert(sizeof(half) == 2 && sizeof(bfloat16) == 2, "16-bit types must be layout-compatible with GPU types");

}  // namespace seer
