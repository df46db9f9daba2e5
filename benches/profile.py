#!/usr/bin/env python3
"""Where the time goes: instruction counts of one training step per reference workload, split
by layer kind (forward / backward, inclusive) and by kernel (exclusive), from callgrind.

callgrind counts instructions, so the split is repeatable on a busy machine (it is not time:
a cache miss costs one instruction here). valgrind does not run AVX-512, so the AVX2 build of
the kernels is what it counts. Usage:

    python3 benches/profile.py [--batch 16] [--models mlp,cnn,vit,mobilenet] [--variants dense,g0.9]

It builds `examples/steps`, runs `valgrind --tool=callgrind` on one step after one warm-up step
(the warm-up's and set-up's counts are taken off by running 1 and 2 steps), and prints a
markdown table per workload.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "examples", "steps")

LAYER = re.compile(r"<dropit::layers::\w+::(\w+) as dropit::layers::contract::Op>::(forward|backward)")
# Kernel groups by function name (exclusive counts), first match wins.
KERNELS = [
    ("GEMM", r"dropit_simd::gemm::"),
    ("direct convolution", r"dropit_simd::conv::"),
    ("im2col / col2im", r"Conv2d::(im2col|col2im)"),
    ("top-k selection", r"dropit_simd::select::|parallel_threshold"),
    ("packing", r"dropit_simd::pack::|dropit_simd::format::"),
    ("sparse grad_W", r"dropit_simd::spmm::"),
    ("depthwise", r"dropit_simd::depthwise::|DepthwiseConv2d"),
    ("activations (ReLU, GELU, masks)", r"dropit_simd::(act|mask)::|layers::(relu|relu6|gelu|dropout)::"),
    ("batch norm", r"layers::batchnorm::"),
    ("layer norm", r"layers::layernorm::"),
    ("attention", r"layers::attention::"),
    ("rebuilding inputs", r"Rebuilder|rebuild_affine|rebuild_elementwise"),
    ("optimizer", r"dropit::optim::"),
    ("loss", r"layers::loss::"),
    ("memcpy / memset", r"memcpy|memmove|memset"),
    ("trainer (gradient norm, bookkeeping)", r"dropit::trainer::"),
    # Loops that the compiler inlined into the closures the workers run (`par::each`): layer
    # code such as batch norm's, the direct kernels' drivers, ReLU6.
    ("layer loops inlined into worker closures", r"par::each|call_once|FnOnce"),
]


def run(args, steps):
    with tempfile.NamedTemporaryFile(suffix=".cg", delete=False) as f:
        out = f.name
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", BIN] + args + [str(steps), str(ARGS.batch)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return out


def costs(out, inclusive):
    txt = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", out],
        check=True, capture_output=True, text=True,
    ).stdout
    res = {}
    for line in txt.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(?:\S*?):(.*?)(?: \[.*\])?$", line)
        if m:
            res[m.group(2).strip()] = res.get(m.group(2).strip(), 0) + int(m.group(1).replace(",", ""))
    return res


def split(one, two):
    """Counts of the second step alone: two steps minus one."""
    return {k: two.get(k, 0) - one.get(k, 0) for k in set(one) | set(two)}


def profile(model, variant):
    gamma, form = {"dense": ("0", "-"), "g0.9": ("0.9", "-"), "g0.9-lean": ("0.9", "lean"),
                   "g0.9-lean16": ("0.9", "lean16")}[variant]
    a = [model, gamma, form]
    o1, o2 = run(a, 1), run(a, 2)
    inc = split(costs(o1, True), costs(o2, True))
    exc = split(costs(o1, False), costs(o2, False))
    for o in (o1, o2):
        os.unlink(o)
    total = inc.get("dropit::trainer::Trainer::step", 0)
    layers = defaultdict(int)
    for fn, v in inc.items():
        m = LAYER.search(fn)
        if m:
            layers[(m.group(1), m.group(2))] += v
    kernels = defaultdict(int)
    for fn, v in exc.items():
        for name, pat in KERNELS:
            if re.search(pat, fn):
                kernels[name] += v
                break
        else:
            kernels["other"] += v
    return total, layers, kernels


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--models", default="mlp,cnn,vit,mobilenet")
    p.add_argument("--variants", default="dense,g0.9")
    ARGS = p.parse_args()
    for tool in ("valgrind", "callgrind_annotate"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            sys.exit(f"profile: {tool} not found (apt-get install valgrind)")
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "steps"], cwd=ROOT, check=True)
    for model in ARGS.models.split(","):
        for variant in ARGS.variants.split(","):
            total, layers, kernels = profile(model, variant)
            print(f"\n### {model}, {variant}, batch {ARGS.batch}: {total / 1e6:.0f} M instructions per step\n")
            print("| layer kind | forward | backward | | kernel (exclusive) | share |")
            print("|---|---|---|---|---|---|")
            kinds = sorted({k for k, _ in layers}, key=lambda k: -(layers[(k, "forward")] + layers[(k, "backward")]))
            ks = sorted(kernels.items(), key=lambda kv: -kv[1])
            pct = lambda v: f"{100 * v / total:.1f}%" if total else "-"
            for i in range(max(len(kinds), len(ks))):
                left = (f"{kinds[i]} | {pct(layers[(kinds[i], 'forward')])} | {pct(layers[(kinds[i], 'backward')])}"
                        if i < len(kinds) else " | | ")
                right = f"{ks[i][0]} | {pct(ks[i][1])}" if i < len(ks) else " | "
                print(f"| {left} | | {right} |")


if __name__ == "__main__":
    main()
