// Layer norm and batch norm (`src/layers/layernorm.rs`, `src/layers/batchnorm.rs`).

// Layer norm over rows of c channels (`src/layers/layernorm.rs`): per row the mean and variance
// in f64, inv = 1/√(var + eps); y = γ·x̂ + β with x̂ = (x − mean)·inv, kept with inv where
// `xhat` is given. One thread per row (y may be x itself).
extern "C" __global__ void ln_forward(const float* x, float* y, u64 rows, u64 c, float eps,
                                      const float* gamma, const float* beta, float* inv,
                                      float* xhat) {
    u64 r = word_index();
    if (r >= rows) return;
    const float* xr = x + r * c;
    double s = 0.0;
    for (u64 i = 0; i < c; i++) s += (double)xr[i];
    double mean = s / (double)c, v = 0.0;
    for (u64 i = 0; i < c; i++) v += ((double)xr[i] - mean) * ((double)xr[i] - mean);
    float m = (float)mean, iv = (float)(1.0 / sqrt(v / (double)c + (double)eps));
    if (inv) inv[r] = iv;
    for (u64 i = 0; i < c; i++) {
        float h = (xr[i] - m) * iv;
        if (xhat) xhat[r * c + i] = h;
        y[r * c + i] = gamma[i] * h + beta[i];
    }
}

// Layer norm's input gradient per row: with g = dy·γ, dx = inv/c·(c·g − Σg − x̂·Σg·x̂), the
// sums in f64 (with `acc`, added to dx).
extern "C" __global__ void ln_backward_rows(const float* dy, const float* xhat,
                                            const float* gamma, const float* inv, u64 rows,
                                            u64 c, float* dx, int acc) {
    u64 r = word_index();
    if (r >= rows) return;
    double sg = 0.0, sgx = 0.0;
    for (u64 i = 0; i < c; i++) {
        float g = dy[r * c + i] * gamma[i];
        sg += (double)g;
        sgx += (double)(g * xhat[r * c + i]);
    }
    float cf = (float)c, sgf = (float)sg, sgxf = (float)sgx, k = inv[r] / cf;
    for (u64 i = 0; i < c; i++) {
        float g = dy[r * c + i] * gamma[i];
        float v = k * (cf * g - sgf - xhat[r * c + i] * sgxf);
        float* d = dx + r * c + i;
        *d = acc ? *d + v : v;
    }
}

// Layer norm's parameter gradients per channel: dγ += Σ_r dy·x̂, dβ += Σ_r dy (rows in order,
// in f64).
extern "C" __global__ void ln_backward_params(const float* dy, const float* xhat, u64 rows,
                                              u64 c, float* dgamma, float* dbeta) {
    u64 i = word_index();
    if (i >= c) return;
    double g = 0.0, b = 0.0;
    for (u64 r = 0; r < rows; r++) {
        float d = dy[r * c + i];
        g += (double)(d * xhat[r * c + i]);
        b += (double)d;
    }
    dgamma[i] += (float)g;
    dbeta[i] += (float)b;
}

// Batch norm's statistics per channel over `rows` rows (f64, the CPU's order): 1/σ into inv,
// and the staged batch mean and unbiased variance (f32) into staged[0..c], staged[c..2c].
extern "C" __global__ void bn_stats(const float* x, u64 rows, u64 c, float eps, float* inv,
                                    float* staged) {
    u64 i = word_index();
    if (i >= c) return;
    double s = 0.0, v = 0.0, m = (double)rows;
    for (u64 r = 0; r < rows; r++) s += (double)x[r * c + i];
    double mean = s / m;
    for (u64 r = 0; r < rows; r++) {
        double d = (double)x[r * c + i] - mean;
        v += d * d;
    }
    double var = v / m;
    inv[i] = (float)(1.0 / sqrt(var + (double)eps));
    staged[i] = (float)mean;
    staged[c + i] = (float)(m > 1.0 ? var * m / (m - 1.0) : var);
}

// y = γ·x̂ + β with x̂ = (x − mean)·inv, x̂ kept (y may be x itself).
extern "C" __global__ void bn_normalize(const float* x, float* y, u64 n, u64 c, const float* mean,
                                        const float* inv, const float* gamma, const float* beta,
                                        float* xhat) {
    u64 e = word_index();
    if (e >= n) return;
    u64 i = e % c;
    float h = (x[e] - mean[i]) * inv[i];
    xhat[e] = h;
    y[e] = gamma[i] * h + beta[i];
}

// Evaluation: the running statistics instead of the batch's.
extern "C" __global__ void bn_eval(const float* x, float* y, u64 n, u64 c, const float* rmean,
                                   const float* rvar, float eps, const float* gamma,
                                   const float* beta) {
    u64 e = word_index();
    if (e >= n) return;
    u64 i = e % c;
    float inv = 1.0f / sqrtf(rvar[i] + eps);
    y[e] = gamma[i] * (x[e] - rmean[i]) * inv + beta[i];
}

// Batch norm's parameter gradients per channel (dβ += Σ dy, dγ += Σ dy·x̂, in f64 over the rows
// in order), and the constants of its input gradient: k = γ·inv/m, dβ and dγ as f32.
extern "C" __global__ void bn_backward_params(const float* dy, const float* xhat, u64 rows, u64 c,
                                              const float* gamma, const float* inv, float* g,
                                              float* consts) {
    u64 i = word_index();
    if (i >= c) return;
    double db = 0.0, dg = 0.0;
    for (u64 r = 0; r < rows; r++) {
        float d = dy[r * c + i];
        db += (double)d;
        dg += (double)(d * xhat[r * c + i]);
    }
    g[i] += (float)dg;
    g[c + i] += (float)db;
    consts[i] = gamma[i] * inv[i] / (float)rows;
    consts[c + i] = (float)db;
    consts[2 * c + i] = (float)dg;
}

// dx = k·(m·dy − dβ − x̂·dγ) (with `acc`, added; dx may be dy itself).
extern "C" __global__ void bn_grad_x(const float* dy, float* dx, const float* xhat, u64 n, u64 c,
                                     const float* consts, float m, int acc) {
    u64 e = word_index();
    if (e >= n) return;
    u64 i = e % c;
    float v = consts[i] * (m * dy[e] - consts[c + i] - xhat[e] * consts[2 * c + i]);
    dx[e] = acc ? dx[e] + v : v;
}

// The running statistics moved towards the staged batch ones.
extern "C" __global__ void bn_commit(float* state, const float* staged, u64 c, float momentum) {
    u64 i = word_index();
    if (i >= 2 * c) return;
    state[i] = (1.0f - momentum) * state[i] + momentum * staged[i];
}
