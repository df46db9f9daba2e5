// A step's own kernels: ReLU's masks, the optimizers, the loss, the gradients' norm and the
// elementwise pieces every layer shares.

// dx[e] = dy[e] where bit e is set, else 0; with `acc`, dx[e] += dy[e] where it is set. (dx may
// be dy itself.)
extern "C" __global__ void apply_mask(const float* dy, const u64* bits, float* dx, u64 n, int acc) {
    u64 e = word_index();
    if (e >= n) return;
    bool on = (bits[e / 64] >> (e % 64)) & 1;
    if (acc) {
        if (on) dx[e] += dy[e];
    } else {
        dx[e] = on ? dy[e] : 0.0f;
    }
}

// ReLU forward (`dropit_simd::mask::relu_forward`): y = x where x > 0 or NaN, else 0, and bit e
// of `bits` set when x[e] > 0; one thread per word (y may be x itself).
extern "C" __global__ void relu_forward(const float* x, float* y, u64 n, u64* bits, u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    u64 end = min(n, 64 * w + 64), word = 0;
    for (u64 e = 64 * w; e < end; e++) {
        float v = x[e];
        if (v > 0.0f) word |= 1ull << (e - 64 * w);
        y[e] = v <= 0.0f ? 0.0f : v;
    }
    if (bits) bits[w] = word;
}

// The optimizers, one thread per parameter, each operation rounded as the CPU's
// (`src/optim.rs`; the module is compiled without contracting a multiply and an add, and with
// IEEE division and square root, so the results are bitwise the CPU's).
//
// PyTorch's SGD: g += wd·p; m = μ·m + g; p -= lr·(nesterov ? g + μ·m : m); without momentum
// p -= lr·(g + wd·p) and `m` is not touched.
extern "C" __global__ void sgd_update(float* p, const float* g, float* m, u64 n, float lr,
                                      float momentum, float wd, int nesterov) {
    u64 i = word_index();
    if (i >= n) return;
    if (momentum == 0.0f) {
        p[i] -= lr * (g[i] + wd * p[i]);
        return;
    }
    float gi = g[i] + wd * p[i];
    m[i] = momentum * m[i] + gi;
    p[i] -= lr * (nesterov ? gi + momentum * m[i] : m[i]);
}

// AdamW (decoupled weight decay), `c1`, `c2` the bias corrections 1 − β^t computed by the host.
extern "C" __global__ void adamw_update(float* p, const float* g, float* m, float* v, u64 n,
                                        float lr, float b1, float b2, float eps, float wd,
                                        float c1, float c2) {
    u64 i = word_index();
    if (i >= n) return;
    float pi = p[i];
    pi -= lr * wd * pi;
    float mi = b1 * m[i] + (1.0f - b1) * g[i];
    float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - lr * (mi / c1) / (sqrtf(vi / c2) + eps);
}

// The layers' elementwise kernels (the GPU trainer, `src/device/trainer.rs`).

// y = x, or y += x with `acc` (flatten, and a gradient passed on unchanged).
extern "C" __global__ void copy_acc(const float* x, float* y, u64 n, int acc) {
    u64 e = word_index();
    if (e >= n) return;
    if (acc) y[e] += x[e];
    else y[e] = x[e];
}

// x *= s (clipping the gradients by their norm).
extern "C" __global__ void scale(float* x, u64 n, float s) {
    u64 e = word_index();
    if (e < n) x[e] *= s;
}

// Every row of y (rows × cols) set to b: the bias, before the product is added onto it.
extern "C" __global__ void bias_rows(const float* b, float* y, u64 rows, u64 cols) {
    u64 e = word_index();
    if (e < rows * cols) y[e] = b[e % cols];
}

// g[j] += Σ_r dy[r, j], the rows added in order (as the CPU's Linear does: the same bits).
extern "C" __global__ void column_sums(const float* dy, u64 rows, u64 cols, float* g) {
    u64 j = word_index();
    if (j >= cols) return;
    float s = g[j];
    for (u64 r = 0; r < rows; r++) s += dy[r * cols + j];
    g[j] = s;
}

// Softmax cross-entropy of each row of `logits` (rows × classes) with label smoothing (`on` for
// the label, `off` for the others), as `src/layers/loss.rs`: the row's loss and whether its
// arg-max is the label, and, with `grad`, the logits overwritten by d(mean loss)/d(logits).
extern "C" __global__ void softmax_ce(float* logits, const u32* labels, u64 rows, u64 classes,
                                      float on, float off, float batch, int grad,
                                      float* loss, u32* correct) {
    u64 r = word_index();
    if (r >= rows) return;
    float* row = logits + r * classes;
    u64 label = labels[r], arg = 0;
    float max = __uint_as_float(0xff800000u);
    for (u64 j = 0; j < classes; j++)
        if (row[j] > max) {
            max = row[j];
            arg = j;
        }
    float sum = 0.0f;
    for (u64 j = 0; j < classes; j++) sum += expf(row[j] - max);
    float lse = max + logf(sum), l = 0.0f;
    for (u64 j = 0; j < classes; j++) l += (j == label ? on : off) * (lse - row[j]);
    loss[r] = l;
    correct[r] = arg == label;
    if (grad)
        for (u64 j = 0; j < classes; j++)
            row[j] = (expf(row[j] - lse) - (j == label ? on : off)) / batch;
}

// Per block, Σ x² in f64 over a grid-strided share of x, into partial[blockIdx.x] (the host
// adds the blocks' sums; the gradients' norm).
extern "C" __global__ void sum_squares(const float* x, u64 n, double* partial) {
    __shared__ double s[1024];
    double acc = 0.0;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = word_index(); i < n; i += stride) acc += (double)x[i] * (double)x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (u32 i = 0; i < blockDim.x; i++) t += s[i];
        partial[blockIdx.x] = t;
    }
}
