"""PyTorch's side of the comparison: trains one reference workload (README, *Reference
workloads*) on Fashion-MNIST, dense or with DropIT, and prints one JSON line.

    LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp \
        /usr/bin/python3 benches/peers/torch_peer.py --model cnn --gamma 0.9 --steps 60 --threads 2

Debian's CPU PyTorch 1.13 (`apt-get install python3-torch libopenblas0-openmp`); the OpenMP
OpenBLAS because the default reference BLAS is slow and the pthread one fights PyTorch's OpenMP
threads. `benches/peers/compare.py` runs this and our `train --json` alternately.

DropIT here is the method written for this comparison: an autograd function for Linear and
Conv2d (depthwise included) that keeps the top-k of |x| over the flattened input (k = round(
(1 - gamma) * numel), as ours), values in the input's dtype and int32 indices, and scatters them
into a dense zero tensor for grad_W; the input gradient uses the weights as usual. The first
Linear/Conv2d and the head stay dense, as in the paper and in ours.

Reported: `step_ms_median` (median after `--warmup` steps), `saved_bytes` (activations saved for
backward by the last step, through `torch.autograd.graph.saved_tensors_hooks`, each storage
once, parameters excluded; DropIT's kept values and indices are among them), `peak_rss_bytes` (the
process's), the final loss and the model's parameter count.
"""

import argparse
import gzip
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530
HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLED = os.path.join(HERE, "..", "..", "data", "fashion-mnist-subset")


def read_idx(path):
    """An IDX file (raw or gzip) as a numpy array."""
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(data_dir):
    images = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte"))
    labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte"))
    x = torch.from_numpy((images.astype(np.float32) / 255.0 - MEAN) / STD).unsqueeze(1)
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------
# DropIT
# ----------------------------------------------------------------------------------------------

def kept_count(n, keep):
    return min(n, int(n * keep + 0.5))


def top_k(x, keep):
    """The kept elements of `x` (flattened): their values and int32 indices."""
    flat = x.reshape(-1)
    idx = flat.abs().topk(kept_count(flat.numel(), keep), sorted=False).indices
    return flat[idx], idx.to(torch.int32)


class DropItLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, keep):
        ctx.save_for_backward(*top_k(x, keep), w)
        ctx.shape = x.shape
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, gy):
        vals, idx, w = ctx.saved_tensors
        xt = torch.zeros(math.prod(ctx.shape), dtype=vals.dtype)
        xt[idx.long()] = vals
        xt = xt.reshape(-1, w.shape[1])
        g2 = gy.reshape(-1, w.shape[0])
        return (gy @ w), g2.t() @ xt, g2.sum(0), None


class DropItConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, keep, stride, padding, groups):
        ctx.save_for_backward(*top_k(x, keep), w)
        ctx.conf = (x.shape, stride, padding, groups, b is not None)
        return F.conv2d(x, w, b, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, gy):
        vals, idx, w = ctx.saved_tensors
        shape, stride, padding, groups, has_b = ctx.conf
        xt = torch.zeros(math.prod(shape), dtype=vals.dtype)
        xt[idx.long()] = vals
        xt = xt.reshape(shape)
        gx = torch.nn.grad.conv2d_input(shape, w, gy, stride, padding, 1, groups)
        gw = torch.nn.grad.conv2d_weight(xt, w.shape, gy, stride, padding, 1, groups)
        gb = gy.sum((0, 2, 3)) if has_b else None
        return gx, gw, gb, None, None, None, None


class Linear(nn.Linear):
    keep = None

    def forward(self, x):
        if self.keep is None or not self.training:
            return super().forward(x)
        return DropItLinear.apply(x, self.weight, self.bias, self.keep)


class Conv2d(nn.Conv2d):
    keep = None

    def forward(self, x):
        if self.keep is None or not self.training:
            return super().forward(x)
        return DropItConv.apply(x, self.weight, self.bias, self.keep, self.stride, self.padding, self.groups)


def apply_dropit(model, gamma):
    layers = [m for m in model.modules() if isinstance(m, (Linear, Conv2d))]
    if gamma > 0:
        for m in layers[1:-1]:
            m.keep = 1.0 - gamma


# ----------------------------------------------------------------------------------------------
# The reference workloads
# ----------------------------------------------------------------------------------------------


def mlp():
    return nn.Sequential(nn.Flatten(), Linear(784, 512), nn.ReLU(), Linear(512, 512), nn.ReLU(), Linear(512, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


def cnn():
    return nn.Sequential(
        Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        BasicBlock(32, 32, 1), BasicBlock(32, 64, 2), BasicBlock(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), Linear(128, 10))


class Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = Linear(d, 3 * d), Linear(d, d)
        self.fc1, self.fc2 = Linear(d, hidden), Linear(hidden, d)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, d=96, depth=4, heads=3, hidden=384, patch=4):
        super().__init__()
        self.proj = Conv2d(1, d, patch, patch, 0)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, (28 // patch) ** 2 + 1, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = Linear(d, 10)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x)[:, 0]))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand=4):
        super().__init__()
        h = cin * expand
        self.body = nn.Sequential(
            Conv2d(cin, h, 1, 1, 0, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            Conv2d(h, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet():
    layers = [Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
    cin = 16
    for w, s in [(16, 1), (24, 2), (32, 1), (48, 2)]:
        layers.append(InvertedResidual(cin, w, s))
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), Linear(cin, 10))


MODELS = {"mlp": mlp, "cnn": cnn, "vit": ViT, "mobilenet": mobilenet}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="cnn")
    p.add_argument("--gamma", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--data", default=BUNDLED)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    batch = a.batch or (128 if a.model == "mlp" else 64)
    x, y = load(a.data)
    model = MODELS[a.model]()
    apply_dropit(model, a.gamma)
    model.train()
    if a.model == "vit":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps)
    params = {q.data_ptr() for q in model.parameters()}
    order = torch.randperm(len(y))
    times, saved, loss = [], 0, float("nan")
    for s in range(a.steps):
        idx = order[(s * batch) % len(y):][:batch]
        xb, yb = x[idx], y[idx]
        storages = {}

        def pack(t):
            if t.data_ptr() not in params:
                st = t.storage()
                storages[st.data_ptr()] = st.nbytes()
            return t

        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(xb)
            lossv = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        lossv.backward()
        opt.step()
        sched.step()
        times.append((time.perf_counter() - t0) * 1e3)
        saved, loss = sum(storages.values()), lossv.item()
    print(json.dumps({
        "peer": "torch " + torch.__version__,
        "model": a.model,
        "gamma": a.gamma,
        "batch": batch,
        "threads": a.threads,
        "steps": a.steps,
        "step_ms_median": statistics.median(times[a.warmup:] or times),
        "saved_bytes": saved,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "final_loss": loss,
        "params": sum(q.numel() for q in model.parameters()),
    }))


if __name__ == "__main__":
    sys.exit(main())
