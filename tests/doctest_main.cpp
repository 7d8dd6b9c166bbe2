// The one doctest runner: linked into every seer test executable (CPU and GPU).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
