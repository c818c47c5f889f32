# Horovod's sdist patches and its NCCL build settings, sourced by setup.sh and by
# benchmarks/gpu_check.sh (a bare GPU machine, whose Python is not .venv's). PYBIN names the
# Python whose torch Horovod is built against.
# Patch the sdist as formats.md describes: C++20 everywhere torch's headers are compiled
# (Horovod's CMake files and the bundled gloo), and a "no CUDA" answer from FindPytorch on
# machines without a GPU so that the CPU operations (gloo, MPI) get built.
# One launcher fix: horovodrun replaces itself by `/bin/sh -c "mpirun ..."`, and dash does
# not hand its process to mpirun, so SIGTERM or SIGINT to horovodrun ended the shell and
# left mpirun and every rank running. `exec mpirun` makes horovodrun's process mpirun
# itself, which passes the signal on to the ranks.
LAUNCHER_FIX="os.execve('/bin/sh', ['/bin/sh', '-c', 'exec ' + mpirun_command], env)"
patch_horovod_sdist() {
    local src=$1 gpu=$2
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' \
        "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    sed -i 's/-std=c++11 -fPIC/-std=c++20 -fPIC/' "$src/third_party/gloo/CMakeLists.txt"
    if [ "$gpu" = cpu ]; then
        sed -i 's/print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)/print(False)/' \
            "$src/cmake/Modules/FindPytorch.cmake"
    fi
    sed -i "s|os.execve('/bin/sh', \['/bin/sh', '-c', mpirun_command\], env)|$LAUNCHER_FIX|" \
        "$src/horovod/runner/mpi_run.py"
    grep -qF "$LAUNCHER_FIX" "$src/horovod/runner/mpi_run.py" || { echo "horovod patch failed: horovod/runner/mpi_run.py" >&2; exit 1; }
    grep -q 'CMAKE_CXX_STANDARD 20' "$src/horovod/torch/CMakeLists.txt" || { echo "horovod patch failed: horovod/torch/CMakeLists.txt" >&2; exit 1; }
    grep -q -- '-std=c++20' "$src/third_party/gloo/CMakeLists.txt" || { echo "horovod patch failed: third_party/gloo/CMakeLists.txt" >&2; exit 1; }
    patch_gloo_stop "$src"
}

# One more launcher fix: horovodrun --gloo stops a rank from a thread of its "middleman"
# process, which waits for the shell running the rank with psutil and so reaps it. When
# that thread reaps first, the middleman's own wait() finds no child and reports status 0:
# about 2 stops in 5 ended horovodrun with status 0, and a stopped run looked finished.
# The patched thread waits without reaping, leaving the exit status to the middleman.
GLOO_STOP_FIX="def _exited_unreaped(p, timeout):"
patch_gloo_stop() {
    local file=$1/horovod/runner/common/util/safe_shell_exec.py
    "$PYBIN" - "$file" <<'PY'
import sys
from pathlib import Path

path = Path(sys.argv[1])
text = path.read_text()
waits = ("    try:\n"
         "        p.wait(timeout=GRACEFUL_TERMINATION_TIME_S)\n"
         "    except psutil.TimeoutExpired:\n")
helper = ('def _exited_unreaped(p, timeout):\n'
          '    """Whether the process ended within `timeout` s; its parent\'s wait() takes its status."""\n'
          '    deadline = time.monotonic() + timeout\n'
          '    while time.monotonic() < deadline:\n'
          '        try:\n'
          '            if p.status() == psutil.STATUS_ZOMBIE:\n'
          '                return True\n'
          '        except psutil.NoSuchProcess:\n'
          '            return True\n'
          '        time.sleep(0.05)\n'
          '    return False\n\n\n')
anchor = "def terminate_executor_shell_and_children(pid):"
if text.count(waits) == 1 and text.count(anchor) == 1:
    text = text.replace(waits, "    if not _exited_unreaped(p, GRACEFUL_TERMINATION_TIME_S):\n")
    path.write_text(text.replace(anchor, helper + anchor))
PY
    grep -qF "$GLOO_STOP_FIX" "$file" || { echo "horovod patch failed: $file" >&2; exit 1; }
}

# The NCCL flavour, as built here against CUDA 13.0 and torch's NCCL 2.30: Horovod's CMake
# finds CUDA through CUDA_HOME and NCCL through HOROVOD_NCCL_INCLUDE / HOROVOD_NCCL_LIB;
# torch's NCCL wheel has only libnccl.so.2, so the build links against an unversioned
# symlink in a build folder (at run time torch has loaded the same library already).
# Kernels for compute capabilities 7.5 (CUDA 13's oldest) to 9.0; newer GPUs take 9.0's PTX.
nccl_build_env() {
    local work=$1 cuda=${CUDA_HOME:-/usr/local/cuda} nccl
    [ -x "$cuda/bin/nvcc" ] || command -v nvcc >/dev/null \
        || { echo "the GPU flavour needs the CUDA toolkit: no nvcc under CUDA_HOME=$cuda or on PATH" >&2; exit 1; }
    nccl=$("$PYBIN" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null) \
        || { echo "the GPU flavour needs torch's NCCL wheel (nvidia-nccl-cu13) for $PYBIN" >&2; exit 1; }
    mkdir -p "$work/nccl-lib"
    ln -sf "$nccl/lib/libnccl.so.2" "$work/nccl-lib/libnccl.so"
    NCCL_ENV=(HOROVOD_GPU_OPERATIONS=NCCL CUDA_HOME="$cuda" HOROVOD_CUDA_HOME="$cuda"
              HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$work/nccl-lib" HOROVOD_NCCL_LINK=SHARED
              HOROVOD_BUILD_CUDA_CC_LIST=75,80,86,89,90)
}
