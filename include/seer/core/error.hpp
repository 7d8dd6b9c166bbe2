// The single error mechanism of seer: exceptions derived from seer::Error.
//
// Every public entry point validates its arguments and throws InvalidArgument naming the argument
// and what was expected. Backend failures (a CUDA or HIP call that returned an error) throw
// BackendError with the vendor's message; unreadable files throw FormatError naming the file. Nothing in seer aborts,
// prints, or returns NaN instead.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace seer {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class InvalidArgument : public Error {
 public:
  InvalidArgument(std::string argument, const std::string& message)
      : Error("seer: invalid argument '" + argument + "': " + message), argument_(std::move(argument)) {}
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

class BackendError : public Error {
 public:
  using Error::Error;
};

// A file or serialized object (JSON, safetensors, checkpoint) that is truncated or malformed.
class FormatError : public Error {
 public:
  FormatError(const std::string& source, const std::string& message)
      : Error("seer: malformed " + source + ": " + message) {}
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream stream;
  (stream << ... << parts);
  return stream.str();
}
}  // namespace detail

// Throws InvalidArgument(argument, message...) unless `condition` holds. The message parts are only
// formatted on failure, so checks on hot paths cost one branch.
template <class... Parts>
void require(bool condition, const char* argument, const Parts&... message) {
  if (!condition) throw InvalidArgument(argument, detail::concat(message...));
}

}  // namespace seer
