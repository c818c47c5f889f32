#!/usr/bin/env bash
# One set-up command for quantlab: .venv (Python 3.11), torch, Horovod 0.28.1 (built from
# its sdist once, wheel cached outside the clone), and the pinned Python dependencies.
# Idempotent: a second run on a warm machine only checks what is there.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3.11}
VENV=.venv
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
HOROVOD_VERSION=0.28.1
HOROVOD_PATCHES=2   # bump when patch_horovod_sdist changes: the cached wheel is keyed by it
CACHE=${QUANTLAB_CACHE:-$HOME/.cache/quantlab}

say() { echo "[setup] $*"; }

ensure_mpi() {
    command -v mpicc >/dev/null && command -v mpirun >/dev/null && return
    say "installing Debian's OpenMPI (libopenmpi-dev openmpi-bin)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenmpi-dev openmpi-bin >/dev/null
}

ensure_venv() {
    [ -x "$VENV/bin/python" ] || { say "creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
    PIP=("$VENV/bin/python" -m pip -qq --disable-pip-version-check)
}

ensure_torch() {
    local have
    have=$("$VENV/bin/python" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null || true)
    if [ "$have" != "$TORCH_VERSION $TORCHVISION_VERSION" ]; then
        say "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
        "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    fi
}

ensure_requirements() {
    "${PIP[@]}" install -r requirements.txt
}

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
}

ensure_horovod() {
    if "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null \
        && [ "$("$VENV/bin/python" -c 'import horovod; print(horovod.__version__)')" = "$HOROVOD_VERSION" ] \
        && grep -qF "$LAUNCHER_FIX" "$("$VENV/bin/python" -c 'import horovod.runner.mpi_run as m; print(m.__file__)')"; then
        return
    fi
    local gpu=cpu
    command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && gpu=nccl
    local pyver key dir
    pyver=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    key="horovod-$HOROVOD_VERSION-p$HOROVOD_PATCHES-torch$TORCH_VERSION-$pyver-$gpu"
    dir="$CACHE/$key"
    if ! ls "$dir"/horovod-*.whl >/dev/null 2>&1; then
        say "building Horovod $HOROVOD_VERSION ($gpu) from its sdist: about 8 minutes on 2 cores, once"
        local work
        work=$(mktemp -d)
        "${PIP[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" 2>/dev/null
        tar xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
        patch_horovod_sdist "$work/horovod-$HOROVOD_VERSION" "$gpu"
        local ops=(HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1)
        [ "$gpu" = nccl ] && ops+=(HOROVOD_GPU_OPERATIONS=NCCL)
        mkdir -p "$dir.tmp"
        env HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
            "${ops[@]}" MAKEFLAGS="-j$(nproc)" HOROVOD_BUILD_ARCH_FLAGS="" \
            "$VENV/bin/python" -m pip wheel -qq --no-build-isolation --no-deps -w "$dir.tmp" \
            "$work/horovod-$HOROVOD_VERSION" >"$work/build.log" 2>&1 \
            || { tail -40 "$work/build.log" >&2; echo "Horovod build failed; full log: $work/build.log" >&2; exit 1; }
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
        rm -rf "$work"
    fi
    say "installing Horovod from $dir"
    "${PIP[@]}" install --no-deps --force-reinstall "$dir"/horovod-*.whl
}

ensure_mpi
ensure_venv
ensure_torch
ensure_requirements
ensure_horovod
"$VENV/bin/horovodrun" --check-build | grep -E "PyTorch|Gloo|MPI" | sed 's/^/[setup] /'
say "ready: source $VENV/bin/activate"
