# Sourced by seer's scripts: install_missing_packages PACKAGE... installs, with apt-get, those of the
# named Debian packages whose tool or header is not present yet. Known packages are detected by what
# they provide (a command or a header); others by dpkg. Needs root or sudo only when something is missing.
install_missing_packages() {
  local missing=() package
  for package in "$@"; do
    case "$package" in
      cmake) command -v cmake >/dev/null 2>&1 || missing+=(cmake) ;;
      g++) command -v g++ >/dev/null 2>&1 || missing+=(g++) ;;
      clang) command -v clang++ >/dev/null 2>&1 || missing+=(clang) ;;
      clang-format) command -v clang-format >/dev/null 2>&1 || missing+=(clang-format) ;;
      ninja-build) command -v ninja >/dev/null 2>&1 || missing+=(ninja-build) ;;
      libeigen3-dev) [[ -f /usr/include/eigen3/Eigen/Core ]] || missing+=(libeigen3-dev) ;;
      doctest-dev) [[ -f /usr/include/doctest/doctest.h ]] || missing+=(doctest-dev) ;;
      *) dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package") ;;
    esac
  done
  if ((${#missing[@]} == 0)); then
    echo "== dependencies: all present"
    return 0
  fi
  echo "== dependencies: installing ${missing[*]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt-get is not available; install ${missing[*]} by hand" >&2
    return 1
  fi
  local sudo=()
  if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "not root and no sudo; install ${missing[*]} by hand" >&2
      return 1
    fi
  fi
  # The image's package lists and cached .debs usually suffice when the update cannot reach a mirror.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update ||
    echo "apt-get update failed; installing from the existing package lists" >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
    --no-install-recommends "${missing[@]}"
}
