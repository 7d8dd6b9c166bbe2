# Package test: run with cmake -P (ctest test `package_consumers`).
#
#   cmake -DSEER_SOURCE_DIR=<repo> -DSEER_BUILD_DIR=<configured seer build> -DWORK_DIR=<scratch>
#         [-DGENERATOR=Ninja] [-DCXX_COMPILER=g++] [-DCONFIG=Release] -P run_package_tests.cmake
#
# 1. installs SEER_BUILD_DIR into WORK_DIR/prefix,
# 2. configures, builds and runs tests/package/consumer three ways: find_package from that prefix,
#    add_subdirectory of the source tree, FetchContent of the source tree.
# Any failing step stops the script with FATAL_ERROR and the step's output.
cmake_minimum_required(VERSION 3.25)

foreach(required SEER_SOURCE_DIR SEER_BUILD_DIR WORK_DIR)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "run_package_tests.cmake: -D${required}=... is required")
  endif()
endforeach()
if(NOT DEFINED CONFIG OR CONFIG STREQUAL "")
  set(CONFIG Release)
endif()

set(consumer_source "${CMAKE_CURRENT_LIST_DIR}/consumer")
set(prefix "${WORK_DIR}/prefix")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run_step description)
  execute_process(
    COMMAND ${ARGN}
    RESULT_VARIABLE result
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "package test FAILED: ${description} (exit ${result})\ncommand: ${ARGN}\n${output}")
  endif()
  set(step_output "${output}" PARENT_SCOPE)
endfunction()

run_step("install the seer build" "${CMAKE_COMMAND}" --install "${SEER_BUILD_DIR}" --prefix "${prefix}" --config
         "${CONFIG}")
foreach(installed "${prefix}/include/seer/core/block_set.hpp" "${prefix}/share/cmake/seer/seerConfig.cmake"
                  "${prefix}/share/cmake/seer/seerConfigVersion.cmake" "${prefix}/share/cmake/seer/seerTargets.cmake")
  if(NOT EXISTS "${installed}")
    message(FATAL_ERROR "package test FAILED: ${installed} was not installed")
  endif()
endforeach()

set(common_arguments -DCMAKE_BUILD_TYPE=${CONFIG})
if(GENERATOR)
  list(APPEND common_arguments -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND common_arguments "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()

foreach(mode package subdirectory fetchcontent)
  set(build "${WORK_DIR}/${mode}")
  set(mode_arguments -DSEER_CONSUME=${mode} -DSEER_ROOT=${SEER_SOURCE_DIR} -DSEER_ENABLE_CUDA=OFF)
  if(mode STREQUAL "package")
    # Only the installed prefix may provide seer: never the source or build tree.
    list(APPEND mode_arguments "-DCMAKE_PREFIX_PATH=${prefix}" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
  endif()
  run_step("configure the ${mode} consumer" "${CMAKE_COMMAND}" -S "${consumer_source}" -B "${build}"
           ${common_arguments} ${mode_arguments})
  if(mode STREQUAL "package" AND NOT step_output MATCHES "consumer: seer 0\\.1\\.0 from ${prefix}/")
    message(FATAL_ERROR "package test FAILED: the package consumer did not use ${prefix}\n${step_output}")
  endif()
  # An installed CUDA backend must import as seer::cuda wherever the CUDA toolkit exists.
  if(mode STREQUAL "package"
     AND EXISTS "${prefix}/share/cmake/seer/seer-cuda-backend.cmake"
     AND NOT step_output MATCHES "consumer: seer::cuda available"
     AND NOT step_output MATCHES "CUDAToolkit not found")
    message(FATAL_ERROR "package test FAILED: seer::cuda was installed but is not defined\n${step_output}")
  endif()
  run_step("build the ${mode} consumer" "${CMAKE_COMMAND}" --build "${build}" --config "${CONFIG}")
  set(executable "${build}/consumer")
  if(NOT EXISTS "${executable}")
    set(executable "${build}/${CONFIG}/consumer")
  endif()
  run_step("run the ${mode} consumer" "${executable}")
  message(STATUS "${mode}: ${step_output}")
endforeach()
message(STATUS "package test passed: find_package, add_subdirectory and FetchContent consumers built and ran")
