# cmake -DOBJECT=x.o -DARCHITECTURE=gfx942 -DOBJCOPY=... -DBUNDLER=... -DSTAMP=x.o.checked -P check_code_objects.cmake
#
# Fails unless the HIP object's offload bundle (section .hip_fatbin) holds an amdgcn code object for
# ARCHITECTURE that is a non-empty AMDGPU ELF. (clang-offload-bundler --list on the .o itself prints
# nothing for a non-RDC object: the bundle sits in that section.)
set(_bundle "${OBJECT}.fatbin")
execute_process(COMMAND "${OBJCOPY}" "--dump-section=.hip_fatbin=${_bundle}" "${OBJECT}" RESULT_VARIABLE _result
                ERROR_VARIABLE _error)
if(NOT _result EQUAL 0)
  message(FATAL_ERROR "${OBJECT}: no .hip_fatbin section (${_error})")
endif()
execute_process(COMMAND "${BUNDLER}" --list --type=o "--input=${_bundle}" OUTPUT_VARIABLE _targets RESULT_VARIABLE _result)
set(_expected "hipv4-amdgcn-amd-amdhsa--${ARCHITECTURE}")
string(FIND "${_targets}" "${_expected}" _found)
if(NOT _result EQUAL 0 OR _found EQUAL -1)
  message(FATAL_ERROR "${OBJECT}: the bundle lists [${_targets}], expected ${_expected}")
endif()
set(_code_object "${OBJECT}.${ARCHITECTURE}.co")
execute_process(COMMAND "${BUNDLER}" --unbundle --type=o "--input=${_bundle}" "--targets=${_expected}"
                        "--output=${_code_object}" RESULT_VARIABLE _result)
file(SIZE "${_code_object}" _size)
file(READ "${_code_object}" _magic LIMIT 4 HEX)
file(READ "${_code_object}" _machine OFFSET 18 LIMIT 2 HEX)
# ELF magic, e_machine EM_AMDGPU (224 = 0xe0, little endian).
if(NOT _result EQUAL 0 OR NOT _magic STREQUAL "7f454c46" OR NOT _machine STREQUAL "e000" OR _size LESS 1024)
  message(FATAL_ERROR "${OBJECT}: the ${ARCHITECTURE} code object is not an AMDGPU ELF (magic ${_magic}, "
                      "machine ${_machine}, ${_size} bytes)")
endif()
string(REPLACE "\n" " " _targets "${_targets}")
file(WRITE "${STAMP}" "${_targets}\n")
message(STATUS "${OBJECT}: ${_expected} code object, ${_size} bytes")
