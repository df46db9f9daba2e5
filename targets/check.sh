#!/usr/bin/env bash
# Builds and tests dropit for one target:
#   targets/check.sh aarch64-unknown-linux-gnu       # cross-build, run the workspace tests under qemu
#   targets/check.sh armv7-unknown-linux-gnueabihf   # the same for 32-bit ARM
#   targets/check.sh thumbv7em-none-eabihf           # build the kernels and the no_std trainer
#   add --quick to run under qemu only the kernel tests and the trainer's fast suites (CI).
# Installs what is missing (the rustup target; Debian's cross linker, libc and qemu-user). A
# target that cannot be installed is reported in one line starting with SKIP, exit status 0.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: targets/check.sh TARGET [--quick]}"
quick="${2:-}"

skip() { echo "SKIP $target: $*"; exit 0; }

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >/dev/null 2>&1 || skip "rustup could not install the rust target"
fi

need_pkgs() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || skip "no apt-get to install ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null 2>&1 \
    || skip "could not install ${missing[*]}"
}

case "$target" in
  aarch64-unknown-linux-gnu)
    need_pkgs gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user ;;
  armv7-unknown-linux-gnueabihf)
    need_pkgs gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user ;;
  thumbv7em-none-eabihf)
    cargo build -p dropit-simd --release --target "$target"
    cargo build -p dropit --no-default-features --release --target "$target"
    echo "OK $target: dropit-simd and the no_std trainer build"
    exit 0 ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac

config="targets/$target.toml"
# Emulated: fewer proptest cases keep the run short; every test still runs.
export PROPTEST_CASES="${PROPTEST_CASES:-16}"
xc=(--release --config "$config" --target "$target")
if [ "$quick" = "--quick" ]; then
  cargo test "${xc[@]}" -p dropit-simd
  cargo test "${xc[@]}" -p dropit --lib --test trainer --test data --test hardening --test untrusted_bytes
  echo "OK $target: kernel tests and the trainer's fast suites pass under qemu"
else
  cargo test "${xc[@]}" --workspace --no-fail-fast
  echo "OK $target: workspace tests pass under qemu"
fi
cargo run -q "${xc[@]}" --example tiny_finetune | tail -n 1

# The same short fixed-seed run natively and on the target: the final loss must agree to four
# significant digits (the kernels round alike; only FMA and summation order may differ).
run=(--example train -- --model mlp --steps 30 --threads 1 --gamma 0.9 --seed 1 --json)
loss() { sed -n 's/.*"final_loss":\([-0-9.eE+]*\).*/\1/p'; }
native=$(cargo run -q --release "${run[@]}" | loss)
emulated=$(cargo run -q "${xc[@]}" "${run[@]}" | loss)
a=$(printf '%.4g' "$native"); b=$(printf '%.4g' "$emulated")
echo "final loss after 30 steps: native $native, $target $emulated"
[ "$a" = "$b" ] || { echo "FAIL $target: final loss $b differs from native $a in 4 significant digits"; exit 1; }
echo "OK $target: same final loss to 4 significant digits ($a)"
