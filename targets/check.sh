#!/usr/bin/env bash
# Builds and tests dropit for one target:
#   targets/check.sh aarch64-unknown-linux-gnu       # cross-build, run the workspace tests under qemu
#   targets/check.sh armv7-unknown-linux-gnueabihf   # the same for 32-bit ARM
#   targets/check.sh thumbv7em-none-eabihf           # build the kernels and the heap-free trainer, run
#                                                    # the Cortex-M4F firmware under qemu-system-arm
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

# Runs the Cortex-M4F firmware (targets/cortex-m4) under qemu-system-arm, the same fine-tuning
# on the desktop, and compares their accuracies; prints the firmware engineer's numbers.
firmware() {
  command -v qemu-system-arm >/dev/null 2>&1 || need_pkgs qemu-system-arm
  local dir=targets/cortex-m4 host elf out rc
  host=$(rustc -vV | sed -n 's/^host: //p')
  (cd "$dir" && cargo build -q --release)
  elf="$dir/target/$target/release/dropit-cortex-m4"
  set +e
  out=$(cd "$dir" && timeout 900 cargo run -q --release 2>&1)
  rc=$?
  set -e
  echo "$out"
  [ $rc -eq 0 ] || { echo "FAIL $target: the firmware exited with status $rc"; exit 1; }
  local ref
  ref=$(cd "$dir" && cargo test -q --release --target "$host" --test host -- --nocapture --test-threads=1 2>&1 | grep -o 'host: .*') \
    || { echo "FAIL $target: the desktop run of the same code (tests/host.rs) failed"; exit 1; }
  echo "desktop ($host), same code and data: ${ref#host: }"
  # Accuracies: firmware "before … = X%" and "after … = Y%" against the desktop's.
  local fb fa hb ha
  fb=$(echo "$out" | sed -n 's/^before: .* = \([0-9.]*\)%.*/\1/p')
  fa=$(echo "$out" | sed -n 's/^after: .* = \([0-9.]*\)%.*/\1/p')
  hb=$(echo "$ref" | sed -n 's/.*before \([0-9.]*\)%.*/\1/p')
  ha=$(echo "$ref" | sed -n 's/.*after \([0-9.]*\)%.*/\1/p')
  awk -v fb="$fb" -v fa="$fa" -v hb="$hb" -v ha="$ha" 'BEGIN {
    d1 = fb - hb; if (d1 < 0) d1 = -d1; d2 = fa - ha; if (d2 < 0) d2 = -d2;
    if (fb == "" || ha == "" || d1 > 0.2 || d2 > 0.2) {
      printf "FAIL: Cortex-M4 %s%% → %s%% vs desktop %s%% → %s%% (more than 0.2 points apart)\n", fb, fa, hb, ha; exit 1 }
    printf "OK: Cortex-M4 %s%% → %s%%, desktop %s%% → %s%% (within 0.2 points)\n", fb, fa, hb, ha }'
  # Flash: everything loaded into code memory; static RAM: .data + .bss (+ .uninit).
  local flash=0 ram=0 code=0 name size
  while read -r name size; do
    case "$name" in
      .text) code=$((16#$size)); flash=$((flash + 16#$size)) ;;
      .vector_table|.rodata) flash=$((flash + 16#$size)) ;;
      .data) flash=$((flash + 16#$size)); ram=$((ram + 16#$size)) ;;
      .bss|.uninit) ram=$((ram + 16#$size)) ;;
    esac
  done < <(readelf -SW "$elf" | sed -n 's/^ *\[ *[0-9]*\] \(\.[^ ]*\) *[A-Z_]* *[0-9a-f]* *[0-9a-f]* *\([0-9a-f]*\) .*/\1 \2/p')
  echo "flash $flash B (code $code B; the rest the embedded samples and weights), static RAM $ram B (.data + .bss)"
}

case "$target" in
  aarch64-unknown-linux-gnu)
    need_pkgs gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user ;;
  armv7-unknown-linux-gnueabihf)
    need_pkgs gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user ;;
  thumbv7em-none-eabihf)
    cargo build -p dropit-simd --release --target "$target"
    # Heap-free: no `alloc` feature (the firmware below links with no global allocator).
    cargo build -p dropit --no-default-features --release --target "$target"
    echo "OK $target: dropit-simd and the heap-free trainer build"
    firmware
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
