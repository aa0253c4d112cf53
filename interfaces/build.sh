#!/usr/bin/env bash
# Build and install vla_ros_interfaces into a Python venv that holds the ROS 2 Jazzy wheels
# (`make` runs it; on a robot `colcon build` does this job: README, "On a robot").
#
#   interfaces/build.sh VENV
#
# The rosidl / ament_cmake generator wheels work as a plain CMake toolchain, with one flaw:
# the CMake files they export for the message packages' Python bindings
# (share/*/cmake/export_*__rosidl_generator_pyExport.cmake) name the include directories of
# the interpreter that built the wheels (/opt/python/cp311-cp311/...), which do not exist
# here, and CMake refuses a target with a missing include directory. They are repointed at
# this venv's Python and numpy headers first (idempotent), then the package is configured,
# built and installed into the venv prefix, where rclpy and ament_index find it.
set -euo pipefail
VENV=$(cd "${1:?usage: interfaces/build.sh VENV}" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PY="$VENV/bin/python"
PY_INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NP_INCLUDE=$("$PY" -c 'import numpy; print(numpy.get_include())')
for f in "$VENV"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake; do
  sed -i -e "s#/opt/python/cp[0-9]*-cp[0-9]*/include/python3\.[0-9]*#$PY_INCLUDE#g" \
         -e "s#/opt/python/cp[0-9]*-cp[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$NP_INCLUDE#g" "$f"
done
BUILD="$VENV/.build/vla_ros_interfaces"
rm -rf "$BUILD" && mkdir -p "$BUILD"
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
cmake -S "$HERE/vla_ros_interfaces" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > "$BUILD/configure.log" \
  || { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" > "$BUILD/build.log" || { tail -50 "$BUILD/build.log"; exit 1; }
cmake --install "$BUILD" > "$BUILD/install.log"
# The Python package lands in <prefix>/lib/python3.X/site-packages, the venv's own.
"$PY" -c 'from vla_ros_interfaces.msg import ActionTarget, ActionTokens, SimState' \
  && echo "interfaces/build.sh: vla_ros_interfaces installed into $VENV"
