# libmemckpt: the C core as an installed shared library (included from
# CMakeLists.txt when MEMCKPT_LIBRARY is ON; docs/c-api.md says how to use it).
#
# Where it goes: `cmake --install` puts it under the prefix's usual
# directories (GNUInstallDirs); the wheel (SKBUILD) inside the package,
# memckpt/include and memckpt/lib, so that one `pip install` brings it and
# memckpt.get_include() & co. find it beside the Python module. Every path
# written into the pkg-config file and the CMake package is relative to the
# file itself, so both stay right wherever the tree is installed or moved.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

if(SKBUILD)
  set(memckpt_includedir memckpt/include)
  set(memckpt_libdir memckpt/lib)
else()
  set(memckpt_includedir ${CMAKE_INSTALL_INCLUDEDIR})
  set(memckpt_libdir ${CMAKE_INSTALL_LIBDIR})
endif()
set(memckpt_cmakedir ${memckpt_libdir}/cmake/memckpt)
set(memckpt_pkgconfigdir ${memckpt_libdir}/pkgconfig)

add_library(memckpt SHARED ${MEMCKPT_CORE_SOURCES})
add_library(memckpt::memckpt ALIAS memckpt)
target_include_directories(memckpt
  PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/csrc/include>
    $<INSTALL_INTERFACE:${memckpt_includedir}>
  PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
# MCK_BUILD_SHARED turns MCK_API into default visibility: the header's
# functions are the library's only exports (tests/test_c_library.py checks).
target_compile_definitions(memckpt PRIVATE _GNU_SOURCE MCK_BUILD_SHARED)
target_compile_options(memckpt PRIVATE ${MEMCKPT_WARNINGS})
target_link_libraries(memckpt PRIVATE Threads::Threads)
target_link_options(memckpt PRIVATE LINKER:--no-undefined)
# Until 1.0 a minor version may change the ABI: the SONAME carries it
# (libmemckpt.so.0.1), and the file is that name, not a further
# libmemckpt.so.0.1.0, so that a wheel (no symlinks) needs no extra copy.
set_target_properties(memckpt PROPERTIES
  C_VISIBILITY_PRESET hidden
  VERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}
  SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}
  EXPORT_NAME memckpt)

if(SKBUILD)
  # A wheel cannot hold a symlink, so the link-time name libmemckpt.so is a
  # one-line linker script naming the library (as glibc's libc.so is):
  # `-lmemckpt` finds it, and the program records the SONAME.
  install(TARGETS memckpt EXPORT memckptTargets
    LIBRARY DESTINATION ${memckpt_libdir} NAMELINK_SKIP)
  file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/libmemckpt-namelink.ld
    CONTENT "/* the link-time name of memckpt's C library (a wheel holds no symlink) */\nINPUT($<TARGET_SONAME_FILE_NAME:memckpt>)\n")
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/libmemckpt-namelink.ld
    DESTINATION ${memckpt_libdir} RENAME libmemckpt.so)
else()
  install(TARGETS memckpt EXPORT memckptTargets LIBRARY DESTINATION ${memckpt_libdir})
endif()
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/csrc/include/memckpt.h DESTINATION ${memckpt_includedir})

# CMake: find_package(memckpt CONFIG) -> memckpt::memckpt
install(EXPORT memckptTargets NAMESPACE memckpt:: DESTINATION ${memckpt_cmakedir})
configure_package_config_file(${CMAKE_CURRENT_SOURCE_DIR}/cmake/memckptConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/memckptConfig.cmake
  INSTALL_DESTINATION ${memckpt_cmakedir}
  PATH_VARS memckpt_includedir memckpt_libdir)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/memckptConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/memckptConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/memckptConfigVersion.cmake
  DESTINATION ${memckpt_cmakedir})

# pkg-config: paths from ${pcfiledir}, the directory the .pc file is in
function(memckpt_pc_path out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    file(RELATIVE_PATH rel /prefix/${memckpt_pkgconfigdir} /prefix/${dir})
    string(REGEX REPLACE "/$" "" rel "${rel}")
    set(${out} "\${pcfiledir}/${rel}" PARENT_SCOPE)
  endif()
endfunction()
memckpt_pc_path(memckpt_pc_includedir ${memckpt_includedir})
memckpt_pc_path(memckpt_pc_libdir ${memckpt_libdir})
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/cmake/memckpt.pc.in
  ${CMAKE_CURRENT_BINARY_DIR}/memckpt.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/memckpt.pc DESTINATION ${memckpt_pkgconfigdir})
