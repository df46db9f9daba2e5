#!/usr/bin/env bash
# The GPU path on a machine with an NVIDIA GPU, in one go (under 5 minutes):
#   targets/gpu-check.sh
# builds with `--features cuda`, runs the GPU tests (every kernel against its CPU twin, and the
# GPU trainer against the CPU trainer: 30 steps of the mlp and the vit, dense and γ = 0.9) and
# prints one table: top-k against PyTorch's torch.topk on the same GPU where PyTorch with CUDA
# is installed (else against our CPU radix select), packing, the sparse Linear grad_W against
# cuBLAS's dense one, and the mlp's and vit's step time and device memory, dense and γ = 0.9.
# Whatever it cannot find (driver, NVRTC, cuBLAS, PyTorch) it names in a line starting with
# MISSING; without a driver it stops there, status 0.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

missing() { echo "MISSING: $*"; }
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1" || compgen -G "/usr/local/cuda*/lib64/$1*" >/dev/null; }

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  missing "nvidia-smi (no NVIDIA driver tools on PATH)"
fi
have_lib libcuda.so || missing "libcuda (the NVIDIA driver library): nothing can run on a GPU"
have_lib libnvrtc.so || missing "libnvrtc (NVRTC, from the CUDA toolkit): the kernels cannot be compiled"
have_lib libcublas.so || missing "libcublas (cuBLAS): the dense baseline cannot run"
# Toolkit libraries outside the loader's path.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done

echo "== build (--features cuda)"
# The bench and the test binary in one build (the time limits below add up to under 5 minutes).
timeout 120 cargo test -q --release --features cuda --test cuda --no-run &&
  timeout 40 cargo build -q --release --features cuda --example gpu_bench || { echo "FAIL: the cuda build"; exit 1; }

echo "== GPU tests: every kernel against its CPU twin, the GPU trainer against the CPU's"
timeout 60 cargo test -q --release --features cuda --test cuda -- --nocapture --test-threads=1
tests=$?
[ $tests -eq 0 ] || echo "FAIL: GPU tests (status $tests)"

echo "== timings"
table=$(timeout 40 target/release/examples/gpu_bench) || { echo "$table"; echo "FAIL: gpu_bench"; exit 1; }
echo "$table"
case "$table" in SKIP*) exit "$tests" ;; esac

# PyTorch's top-k on the same GPU, the same sizes.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
if timeout 10 "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  timeout 20 "$py" - <<'EOF'
import torch
for e in (20, 22):
    n = 1 << e
    x = torch.rand(n, device="cuda") * 3 - 1.5
    k = n // 10
    for _ in range(3):
        x.abs().topk(k)
    torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        x.abs().topk(k)
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    print(f"| torch.topk(|x|), n = 2^{e}, keep 10% (PyTorch {torch.__version__}) | – | {ts[len(ts) // 2]:.3f} ms | compare with the top-k row above |")
EOF
else
  missing "PyTorch with CUDA: top-k is compared with our CPU select instead"
fi
echo "gpu-check took $(( $(date +%s) - start )) s"
exit "$tests"
