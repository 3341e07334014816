#!/usr/bin/env bash
# Builds the project's binary with candle's `cuda` feature on a machine with no GPU and no CUDA toolkit,
# for a Hopper GPU machine (sm_90: H100/H200) with an NVIDIA 580 driver (CUDA 13.0) and CUDA 13 libraries.
#
#   bash scripts/build-cuda.sh [BIN_NAME] [CARGO_ARGS...]
#
# Run it from the project's root. The project must have a `cuda` feature that turns on candle-core/cuda and
# candle-nn/cuda. The stripped binary lands in .device/BIN_NAME (keep `/.device/` out of git, e.g. in
# .git/info/exclude); copy that folder to the GPU machine. There:
#   export LD_LIBRARY_PATH=$(dirname "$(find / -name 'libcublas.so.13*' -print -quit 2>/dev/null)"):$LD_LIBRARY_PATH
#   .device/BIN_NAME ...
# libcuda.so.1 comes from the driver there; cuBLAS, cuBLASLt and cuRAND from the CUDA 13 libraries on that machine.
#
# How: nvcc 13.0 and the CUDA headers come from PyPI wheels (pinned to 13.0: the driver JIT-compiles candle's PTX,
# and a 580 driver accepts PTX from nvcc 13.0, not newer). The linker gets unversioned links to the wheels'
# libraries and a stub libcuda.so (every function returns CUDA_ERROR_NO_DEVICE) generated from cudarc's own list
# of driver functions: the stub is only for linking and never travels. The first build takes about 8 minutes on
# 2 cores, most of it nvcc compiling candle's kernels; later builds reuse target/cuda.
set -euo pipefail
BIN=${1:-collapse-lab}; shift || true
ROOT=$(pwd)
CACHE=${COLLAPSE_CUDA_CACHE:-$HOME/.cache/collapse-lab-cuda}
mkdir -p "$CACHE"
if [ ! -x "$CACHE/venv/bin/pip" ]; then python3 -m venv "$CACHE/venv"; fi
if ! ls "$CACHE"/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
  "$CACHE/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 \
    nvidia-cuda-nvrtc==13.0.88
fi
CU=$(echo "$CACHE"/venv/lib/python3*/site-packages/nvidia/cu13)
LINK="$CACHE/link"
if [ ! -f "$LINK/libcuda.so" ]; then
  mkdir -p "$LINK"
  for n in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
    ln -sf "$CU/lib/lib$n" "$LINK/lib${n%%.so.*}.so"
  done
  cargo fetch -q
  CUDARC=$(cargo metadata -q --format-version 1 --features cuda | python3 -c 'import json,sys,os; m=json.load(sys.stdin); print([os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"][0])')
  grep -ozE 'extern "C" \{\s*fn [A-Za-z0-9_]+' "$CUDARC/src/driver/sys/mod.rs" | tr '\0' '\n' \
    | grep -oE 'fn [A-Za-z0-9_]+' | awk '{print "int " $2 "(void) { return 100; }"}' | sort -u > "$LINK/libcuda_stub.c"
  gcc -shared -fPIC -O2 -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/libcuda_stub.c"
fi
export NVCC="$CU/bin/nvcc" PATH="$CU/bin:$PATH" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINK"
# COLLAPSE_CUDA_TARGET keeps the build (candle's kernels) across clones, as CI does.
TARGET=${COLLAPSE_CUDA_TARGET:-$ROOT/target/cuda}
cargo build --release --features cuda --target-dir "$TARGET" --bin "$BIN" "$@"
mkdir -p "$ROOT/.device"
strip -o "$ROOT/.device/$BIN" "$TARGET/release/$BIN"
ls -l "$ROOT/.device/$BIN"
