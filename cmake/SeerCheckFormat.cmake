# Checks that seer's sources follow .clang-format. Run with cmake -P:
#
#   cmake -DSEER_SOURCE_DIR=<repo> [-DCLANG_FORMAT=clang-format] -P cmake/SeerCheckFormat.cmake
#
# Lists every file clang-format would change and fails when there is one. Fix with clang-format -i.
cmake_minimum_required(VERSION 3.25)

if(NOT SEER_SOURCE_DIR)
  get_filename_component(SEER_SOURCE_DIR "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
endif()
if(NOT CLANG_FORMAT)
  find_program(CLANG_FORMAT NAMES clang-format clang-format-14 REQUIRED)
endif()

set(patterns)
foreach(directory include backends tests examples bench)
  foreach(extension hpp cpp cu cuh h)
    list(APPEND patterns "${SEER_SOURCE_DIR}/${directory}/*.${extension}")
  endforeach()
endforeach()
file(GLOB_RECURSE sources LIST_DIRECTORIES false ${patterns})
list(SORT sources)

set(unformatted)
foreach(source IN LISTS sources)
  execute_process(
    COMMAND "${CLANG_FORMAT}" --style=file --dry-run --Werror "${source}"
    WORKING_DIRECTORY "${SEER_SOURCE_DIR}"
    RESULT_VARIABLE result
    OUTPUT_QUIET ERROR_QUIET)
  if(NOT result EQUAL 0)
    file(RELATIVE_PATH relative "${SEER_SOURCE_DIR}" "${source}")
    list(APPEND unformatted "${relative}")
  endif()
endforeach()

list(LENGTH sources checked)
if(unformatted)
  list(LENGTH unformatted count)
  list(JOIN unformatted "\n  " listing)
  message(FATAL_ERROR "clang-format: ${count} of ${checked} files need formatting (run clang-format -i on them):\n  ${listing}")
endif()
message(STATUS "clang-format: all ${checked} files are formatted")
