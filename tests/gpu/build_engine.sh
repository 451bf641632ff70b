#!/usr/bin/env bash
# Builds build/libgluon_hmm_engine.so: the gluon_hmm engine (C ABI of
# src/hmm/hmm.h) with the CUDA driver, without MXNet or Python, for
# tests/gpu/test_cuda_kernels.py and benchmarks/gpu_bench.py.
#
#   tests/gpu/build_engine.sh            # from the repository root (or anywhere)
#
# Environment:
#   CUDA_HOME     CUDA toolkit (default: /usr/local/cuda, else the nvcc on PATH)
#   CXX           host compiler (default g++)
#   CUDA_ARCHS    space-separated SM versions (default "75 80 86 89 90"; PTX for the last)
#   NVCC_EXTRA    extra nvcc flags (e.g. "-lineinfo")
#   ENGINE_OUT    output library (default build/libgluon_hmm_engine.so)
set -euo pipefail
cd "$(dirname "$0")/../.."

CXX=${CXX:-g++}
if [[ -z "${CUDA_HOME:-}" ]]; then
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
  else echo "build_engine.sh: nvcc not found; set CUDA_HOME" >&2; exit 1
  fi
fi
NVCC="$CUDA_HOME/bin/nvcc"
CUDA_ARCHS=${CUDA_ARCHS:-"75 80 86 89 90"}
OUT=${ENGINE_OUT:-build/libgluon_hmm_engine.so}
OBJ=build/engine_obj
mkdir -p "$OBJ" "$(dirname "$OUT")"

# The C++ engine files present in this checkout (capi.cc and cpu.cc are required).
CXX_SOURCES=()
for f in src/hmm/capi.cc src/hmm/cpu.cc; do
  if [[ -f $f ]]; then CXX_SOURCES+=("$f"); else echo "build_engine.sh: missing $f" >&2; exit 1; fi
done
for f in src/hmm/*.cc; do
  case " ${CXX_SOURCES[*]} " in *" $f "*) ;; *) CXX_SOURCES+=("$f") ;; esac
done

CXXFLAGS=(-O3 -std=c++17 -fPIC -Wall -Wno-psabi -ffp-contract=fast -fno-math-errno -pthread
          -DGLUON_HMM_WITH_CUDA=1 -Isrc/hmm "-I$CUDA_HOME/include")
objects=()
for f in "${CXX_SOURCES[@]}"; do
  o="$OBJ/$(basename "${f%.cc}").o"
  echo "+ $CXX ${CXXFLAGS[*]} -c $f -o $o"
  "$CXX" "${CXXFLAGS[@]}" -c "$f" -o "$o"
  objects+=("$o")
done

GENCODE=()
last=""
for a in $CUDA_ARCHS; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); last=$a; done
GENCODE+=(-gencode "arch=compute_$last,code=compute_$last")
NVCCFLAGS=(-O3 -std=c++17 --threads 0 -Xcompiler -fPIC,-Wall -DGLUON_HMM_WITH_CUDA=1 -Isrc/hmm
           --resource-usage ${NVCC_EXTRA:-})
echo "+ $NVCC ${NVCCFLAGS[*]} ${GENCODE[*]} -c src/hmm/cuda.cu -o $OBJ/cuda.o"
"$NVCC" "${NVCCFLAGS[@]}" "${GENCODE[@]}" -c src/hmm/cuda.cu -o "$OBJ/cuda.o" \
  2> "$OBJ/cuda_resource_usage.txt" || { cat "$OBJ/cuda_resource_usage.txt" >&2; exit 1; }
if grep -qi "warning" "$OBJ/cuda_resource_usage.txt"; then
  grep -i "warning" "$OBJ/cuda_resource_usage.txt" >&2
fi
spills=$(grep -c "[1-9][0-9]* bytes spill stores" "$OBJ/cuda_resource_usage.txt" || true)
echo "nvcc: resource usage in $OBJ/cuda_resource_usage.txt ($spills kernel builds with spill stores)"
objects+=("$OBJ/cuda.o")

echo "+ $CXX -shared -o $OUT ${objects[*]} -L$CUDA_HOME/lib64 -lcudart_static -lrt -ldl -pthread"
"$CXX" -shared -o "$OUT" "${objects[@]}" "-L$CUDA_HOME/lib64" "-L$CUDA_HOME/lib" \
  -lcudart_static -lrt -ldl -pthread -Wl,--no-undefined
exported=$(nm -D --defined-only "$OUT")
for sym in hmm_forward hmm_backward hmm_posterior hmm_viterbi hmm_sample hmm_has_cuda; do
  grep -qw "$sym" <<<"$exported" || { echo "build_engine.sh: $sym not exported" >&2; exit 1; }
done
echo "built $OUT"
