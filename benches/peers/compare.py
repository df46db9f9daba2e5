#!/usr/bin/python3
"""Ours against PyTorch, side by side on this CPU: the same workloads, batch, data and thread
count, run alternately for several rounds; prints one table of ratios (ours / PyTorch) of the
median step time, the bytes saved for backward and the whole process's peak RSS.

    benches/peers/compare.py [--quick] [--full-data] [--threads T] [--rounds R] [--steps N]

Runs `/usr/bin/python3 benches/peers/torch_peer.py` (Debian's python3-torch, with the OpenMP
OpenBLAS of libopenblas0-openmp) and our `target/release/examples/train --json` (built here
first). `--quick` (2 rounds of 20 steps) takes a few minutes; the default is 3 rounds of 60.
Each figure is the median over the rounds; a process's peak RSS comes from `wait4`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
DEBIAN_DATA = "/usr/share/datasets/fashion-mnist"
BUNDLED = os.path.join(ROOT, "data", "fashion-mnist-subset")
WORKLOADS = ("mlp", "cnn", "vit", "mobilenet")
# Where a run's stdout goes (its last JSON line is read back).
OUT_PATH = os.path.join(ROOT, "target", "peers-last-run.json")
GAMMAS = (0.0, 0.9)


def cpu():
    """The CPU's model name and the widest x86 vector ISA it reports."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        pass
    isa = next((i for i in ("avx512f", "avx2", "asimd", "neon") if i in flags), "baseline")
    return name, isa


def rss_of(cmd, env=None):
    """Runs `cmd` as a child we wait for ourselves, so `wait4` gives its own peak RSS."""
    pid = os.fork()
    if pid == 0:
        out = os.open(OUT_PATH, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os.chdir(ROOT)
        os.execvpe(cmd[0], cmd, env or os.environ)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("failed: " + " ".join(cmd))
    with open(OUT_PATH) as f:
        line = [l for l in f.read().splitlines() if l.startswith("{")][-1]
    return json.loads(line), usage.ru_maxrss * 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds of 20 steps")
    p.add_argument("--rounds", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--full-data", action="store_true", help="Debian's full Fashion-MNIST")
    p.add_argument("--models", default=",".join(WORKLOADS))
    a = p.parse_args()
    rounds = a.rounds or (2 if a.quick else 3)
    steps = a.steps or (20 if a.quick else 60)
    data = DEBIAN_DATA if a.full_data else BUNDLED
    if not os.path.exists("/usr/bin/python3") or subprocess.call(
            ["/usr/bin/python3", "-c", "import torch"], stderr=subprocess.DEVNULL) != 0:
        sys.exit("PyTorch not found: apt-get install python3-torch libopenblas0-openmp")
    env = dict(os.environ)
    if os.path.isdir(OPENBLAS):
        env["LD_LIBRARY_PATH"] = OPENBLAS + ":" + env.get("LD_LIBRARY_PATH", "")
    else:
        print("note: %s missing (apt-get install libopenblas0-openmp): PyTorch uses the slow "
              "reference BLAS" % OPENBLAS)
    subprocess.check_call(["cargo", "build", "-q", "--release", "--example", "train"], cwd=ROOT)
    ours_bin = os.path.join(ROOT, "target", "release", "examples", "train")
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    results = {}
    for r in range(rounds):
        for m in a.models.split(","):
            for g in GAMMAS:
                common = ["--model", m, "--gamma", str(g), "--steps", str(steps), "--threads",
                          str(a.threads)]
                ours_cmd = [ours_bin] + common + ["--json", "--data", data]
                torch_cmd = ["/usr/bin/python3", "benches/peers/torch_peer.py"] + common + [
                    "--data", data]
                # Alternate who goes first, round by round.
                order = [("ours", ours_cmd), ("torch", torch_cmd)]
                for who, cmd in order if r % 2 == 0 else order[::-1]:
                    j, rss = rss_of(cmd, env)
                    results.setdefault((m, g, who), []).append((j, rss))
                print("round %d/%d: %s γ=%.1f done" % (r + 1, rounds, m, g), file=sys.stderr)
    name, isa = cpu()
    print("\n## Ours / PyTorch on %s (%s), %d threads, %d rounds of %d steps, %s" % (
        name, isa, a.threads, rounds, steps, "full Fashion-MNIST" if a.full_data else "bundled subset"))
    peer = next(j for (m, g, who), v in results.items() if who == "torch" for j, _ in v)["peer"]
    print("PyTorch: %s with %s\n" % (peer, "OpenMP OpenBLAS" if os.path.isdir(OPENBLAS) else "reference BLAS"))
    print("| workload | γ | step ms ours | step ms PyTorch | step ratio | saved MB ours | saved MB PyTorch | saved ratio | peak RSS MB ours | peak RSS MB PyTorch | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med = lambda v: statistics.median(v)
    for m in a.models.split(","):
        for g in GAMMAS:
            o, t = results[(m, g, "ours")], results[(m, g, "torch")]
            os_, ts = med([j["step_ms_median"] for j, _ in o]), med([j["step_ms_median"] for j, _ in t])
            osv, tsv = med([j["saved_bytes"] for j, _ in o]), med([j["saved_bytes"] for j, _ in t])
            orss, trss = med([r for _, r in o]), med([r for _, r in t])
            print("| %s | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f | %.2f |" % (
                m, g, os_, ts, os_ / ts, osv / 1e6, tsv / 1e6, osv / tsv, orss / 1e6, trss / 1e6,
                orss / trss))


if __name__ == "__main__":
    main()
