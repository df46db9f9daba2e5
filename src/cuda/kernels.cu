// DropIT's GPU kernels, compiled at run time with NVRTC (`src/cuda/mod.rs`). Each one is the
// twin of a CPU kernel of `dropit_simd`, with the same conventions:
//
// - the magnitude key of x is the bits of |x| as a non-negative int (NaN above +inf, -0 = 0);
// - a threshold keeps every key above `t` and the first `ties` keys equal to it, in index order;
// - a bitmap has bit e % 64 of word e / 64 for element e; values follow in index order;
// - bf16 rounds to nearest even, a NaN keeps its high half with the quiet bit set (as
//   `half::bf16::from_f32`).
//
// Work over a tensor is split by 64-element words: one thread per word, which reads and
// writes its elements in index order, so the packed bytes do not depend on the launch.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;

__device__ __forceinline__ int key_of(float x) { return __float_as_int(x) & 0x7fffffff; }

__device__ __forceinline__ u16 to_bf16(float v) {
    u32 x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x0040u);
    u32 lsb = (x >> 16) & 1u;
    return (u16)((x + 0x7fffu + lsb) >> 16);
}

__device__ __forceinline__ float from_bf16(u16 b) { return __uint_as_float(((u32)b) << 16); }

__device__ __forceinline__ u64 word_index() { return blockIdx.x * (u64)blockDim.x + threadIdx.x; }

// One pass of the radix select: the histogram of key digit (key >> shift) & 255 over the keys
// whose higher digits equal `prefix` (every key on the first pass, shift 24).
extern "C" __global__ void radix_hist(const float* x, u64 n, int shift, int prefix, u32* hist) {
    __shared__ u32 h[256];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) h[i] = 0;
    __syncthreads();
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = word_index(); i < n; i += stride) {
        int k = key_of(x[i]);
        if (shift == 24 || (k >> (shift + 8)) == prefix) atomicAdd(&h[(k >> shift) & 255], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x)
        if (h[i]) atomicAdd(&hist[i], h[i]);
}

// Per word: how many keys equal the threshold key `t`.
extern "C" __global__ void word_ties(const float* x, u64 n, int t, u32* equal, u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    u64 end = min(n, 64 * w + 64);
    u32 q = 0;
    for (u64 e = 64 * w; e < end; e++) q += key_of(x[e]) == t;
    equal[w] = q;
}

// Exclusive prefix sums of `len` counts, by one block: each thread sums a run, the runs'
// totals are scanned, then each thread writes its run's prefixes.
extern "C" __global__ void scan_exclusive(const u32* in, u64* out, u64 len) {
    __shared__ u64 part[1024];
    u64 per = (len + blockDim.x - 1) / blockDim.x;
    u64 lo = threadIdx.x * per, hi = min(len, lo + per);
    u64 s = 0;
    for (u64 i = lo; i < hi; i++) s += in[i];
    part[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 run = 0;
        for (u32 i = 0; i < blockDim.x; i++) {
            u64 v = part[i];
            part[i] = run;
            run += v;
        }
    }
    __syncthreads();
    s = part[threadIdx.x];
    for (u64 i = lo; i < hi; i++) {
        out[i] = s;
        s += in[i];
    }
}

// The kept bitmap of each word and its count: keys above `t`, and of the keys equal to it the
// first `ties` in index order (`eq_before[w]` of them lie in earlier words).
extern "C" __global__ void keep_words(const float* x, u64 n, int t, u64 ties, const u32* equal,
                                      const u64* eq_before, u64* bits, u32* kept, u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    u64 before = eq_before[w];
    u64 allowed = ties > before ? min((u64)equal[w], ties - before) : 0;
    u64 end = min(n, 64 * w + 64), word = 0;
    for (u64 e = 64 * w; e < end; e++) {
        int k = key_of(x[e]);
        bool keep = k > t;
        if (k == t && allowed > 0) {
            keep = true;
            allowed--;
        }
        if (keep) word |= 1ull << (e - 64 * w);
    }
    bits[w] = word;
    kept[w] = __popcll(word);
}

// Popcount of each bitmap word.
extern "C" __global__ void word_popcounts(const u64* bits, u32* kept, u64 words) {
    u64 w = word_index();
    if (w < words) kept[w] = __popcll(bits[w]);
}

// Values of the kept elements, in index order, from each word's first slot `at[w]`:
// `form` 0 = f32, 1 = bf16; with `idx`, also each one's u32 index.
extern "C" __global__ void write_kept(const float* x, const u64* bits, const u64* at,
                                      unsigned char* values, int form, u32* idx, u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    u64 word = bits[w], o = at[w];
    while (word) {
        int b = __ffsll((long long)word) - 1;
        word &= word - 1;
        u64 e = 64 * w + b;
        if (form == 0) ((float*)values)[o] = x[e];
        else ((u16*)values)[o] = to_bf16(x[e]);
        if (idx) idx[o] = (u32)e;
        o++;
    }
}

__device__ __forceinline__ float value_at(const unsigned char* values, int form, u64 o) {
    return form == 0 ? ((const float*)values)[o] : from_bf16(((const u16*)values)[o]);
}

// Dense from a bitmap: every element of each word, kept ones from slot `at[w]` on.
extern "C" __global__ void unpack_bitmap(const u64* bits, const u64* at,
                                         const unsigned char* values, int form, float* out, u64 n,
                                         u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    u64 word = bits[w], o = at[w], end = min(n, 64 * w + 64);
    for (u64 e = 64 * w; e < end; e++) {
        float v = 0.0f;
        if ((word >> (e - 64 * w)) & 1) v = value_at(values, form, o++);
        out[e] = v;
    }
}

// Dense from u32 indices (`out` zeroed before): one thread per kept element.
extern "C" __global__ void unpack_u32(const u32* idx, const unsigned char* values, int form,
                                      float* out, u64 k) {
    u64 i = word_index();
    if (i < k) out[idx[i]] = value_at(values, form, i);
}

// Linear grad_Wᵀ [inp × out] += x[r, i]·dy[r, :] for every kept (r, i) of a bitmap-packed
// input: one thread per word, the products added atomically (their order is not fixed, so
// the sums agree with the CPU's within f32 rounding).
extern "C" __global__ void linear_grad_w_bitmap(const u64* bits, const u64* at,
                                                const unsigned char* values, int form,
                                                const float* dy, u64 inp, u64 out, float* gwt,
                                                u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    u64 word = bits[w], o = at[w];
    while (word) {
        int b = __ffsll((long long)word) - 1;
        word &= word - 1;
        u64 e = 64 * w + b, r = e / inp, i = e % inp;
        float v = value_at(values, form, o++);
        for (u64 j = 0; j < out; j++) atomicAdd(&gwt[i * out + j], v * dy[r * out + j]);
    }
}

// The same from u32 indices: one thread per kept element.
extern "C" __global__ void linear_grad_w_u32(const u32* idx, const unsigned char* values,
                                             int form, const float* dy, u64 inp, u64 out,
                                             float* gwt, u64 k) {
    u64 t = word_index();
    if (t >= k) return;
    u64 e = idx[t], r = e / inp, i = e % inp;
    float v = value_at(values, form, t);
    for (u64 j = 0; j < out; j++) atomicAdd(&gwt[i * out + j], v * dy[r * out + j]);
}

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
    float max = -INFINITY;
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

// GELU's value and slope at x, in f64 (erf, or the tanh form), as `dropit_simd::reference::gelu`.
__device__ __forceinline__ void gelu_at(float x, int tanh_form, float* value, float* slope) {
    double z = (double)x;
    if (tanh_form) {
        double k = sqrt(2.0 / 3.14159265358979323846);
        double t = tanh(k * (z + 0.044715 * z * z * z)), du = k * (1.0 + 3.0 * 0.044715 * z * z);
        *value = (float)(0.5 * z * (1.0 + t));
        *slope = (float)(0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du);
    } else {
        double cdf = 0.5 * (1.0 + erf(z / 1.41421356237309504880));
        double pdf = exp(-0.5 * z * z) / sqrt(2.0 * 3.14159265358979323846);
        *value = (float)(z * cdf);
        *slope = (float)(cdf + z * pdf);
    }
}

// y = GELU(x), the input kept where `keep` is given (y may be x itself).
extern "C" __global__ void gelu_forward(const float* x, float* y, u64 n, int tanh_form,
                                        float* keep) {
    u64 e = word_index();
    if (e >= n) return;
    float v = x[e], out, slope;
    if (keep) keep[e] = v;
    gelu_at(v, tanh_form, &out, &slope);
    y[e] = out;
}

// dx = dy·GELU'(x) from the kept input (with `acc`, added; dx may be dy itself).
extern "C" __global__ void gelu_backward(const float* dy, const float* kept, float* dx, u64 n,
                                         int tanh_form, int acc) {
    u64 e = word_index();
    if (e >= n) return;
    float out, slope;
    gelu_at(kept[e], tanh_form, &out, &slope);
    float v = dy[e] * slope;
    dx[e] = acc ? dx[e] + v : v;
}

// y = a + b (y may be a itself).
extern "C" __global__ void add(const float* a, const float* b, float* y, u64 n) {
    u64 e = word_index();
    if (e < n) y[e] = a[e] + b[e];
}

// Tokens from patches: y[s, t, :] = (t < cls ? cls_token : x[s, t − cls, :]) + pos[t, :], for
// `n` samples of `tokens` tokens of width d (`cls` 0 or 1).
extern "C" __global__ void pos_embed_forward(const float* x, const float* cls_token,
                                             const float* pos, float* y, u64 n, u64 tokens,
                                             u64 d, u64 cls) {
    u64 e = word_index();
    if (e >= n * tokens * d) return;
    u64 s = e / (tokens * d), t = (e / d) % tokens, c = e % d;
    float v = t < cls ? cls_token[c] : x[(s * (tokens - cls) + t - cls) * d + c];
    y[e] = v + pos[t * d + c];
}

// Its parameters' gradients: g[j] += Σ_s dy[s, j] over the first `len` elements of each
// sample's tokens (the cls token's then the positions', each a separate call), samples in order.
extern "C" __global__ void sample_sums(const float* dy, u64 n, u64 per, u64 len, float* g) {
    u64 j = word_index();
    if (j >= len) return;
    float s = g[j];
    for (u64 i = 0; i < n; i++) s += dy[i * per + j];
    g[j] = s;
}

// Rows of `width` floats copied from every `from`-long block of x (from offset `skip`) into
// every `to`-long block of y (at offset `at`), `blocks` of them; with `acc`, added. Token
// selection, the positions' input gradient.
extern "C" __global__ void copy_blocks(const float* x, u64 from, u64 skip, float* y, u64 to,
                                       u64 at, u64 width, u64 blocks, int acc) {
    u64 e = word_index();
    if (e >= blocks * width) return;
    u64 b = e / width, i = e % width;
    float v = x[b * from + skip + i];
    float* d = y + b * to + at + i;
    *d = acc ? *d + v : v;
}

// Token selection's input gradient: dx[s, t, :] = (t == index ? dy[s, :] : 0), or added with
// `acc`.
extern "C" __global__ void token_select_backward(const float* dy, float* dx, u64 n, u64 tokens,
                                                 u64 d, u64 index, int acc) {
    u64 e = word_index();
    if (e >= n * tokens * d) return;
    u64 s = e / (tokens * d), t = (e / d) % tokens, c = e % d;
    float v = t == index ? dy[s * d + c] : 0.0f;
    dx[e] = acc ? dx[e] + v : 0.0f + v;
}

// A convolution's geometry (NHWC input h × w × c, output oh × ow, kernel kh × kw, stride, zero
// padding), passed as one array of 11 counts.
struct Geom {
    u64 h, w, c, oh, ow, kh, kw, sy, sx, py, px;
};

__device__ __forceinline__ Geom geom_of(const u64* g) {
    Geom r = {g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10]};
    return r;
}

// The input rows of samples s0 .. s0 + ns as the columns of a product (im2col):
// cols[(s, oy, ox), (ky, kx, ci)] = x[s0 + s, oy·sy + ky − py, ox·sx + kx − px, ci], 0 outside.
extern "C" __global__ void im2col(const float* x, float* cols, u64 s0, u64 ns, const u64* g) {
    Geom q = geom_of(g);
    u64 row = q.kh * q.kw * q.c, e = word_index();
    if (e >= ns * q.oh * q.ow * row) return;
    u64 r = e / row, j = e % row;
    u64 s = s0 + r / (q.oh * q.ow), oy = (r / q.ow) % q.oh, ox = r % q.ow;
    u64 ky = j / (q.kw * q.c), kx = (j / q.c) % q.kw, ci = j % q.c;
    long long y = (long long)(oy * q.sy + ky) - (long long)q.py;
    long long xx = (long long)(ox * q.sx + kx) - (long long)q.px;
    float v = 0.0f;
    if (y >= 0 && xx >= 0 && y < (long long)q.h && xx < (long long)q.w)
        v = x[((s * q.h + y) * q.w + xx) * q.c + ci];
    cols[e] = v;
}

// The other way round for the input gradient of samples s0 .. s0 + ns: each input element
// gathers the columns' gradients of every output position its kernel taps cover (with `acc`,
// added to dx).
extern "C" __global__ void col2im(const float* dcols, float* dx, u64 s0, u64 ns, const u64* g,
                                  int acc) {
    Geom q = geom_of(g);
    u64 e = word_index();
    if (e >= ns * q.h * q.w * q.c) return;
    u64 s = e / (q.h * q.w * q.c), y = (e / (q.w * q.c)) % q.h, x = (e / q.c) % q.w, ci = e % q.c;
    u64 row = q.kh * q.kw * q.c;
    float v = 0.0f;
    for (u64 ky = 0; ky < q.kh; ky++) {
        long long ty = (long long)(y + q.py) - (long long)ky;
        if (ty < 0 || ty % (long long)q.sy) continue;
        u64 oy = (u64)ty / q.sy;
        if (oy >= q.oh) continue;
        for (u64 kx = 0; kx < q.kw; kx++) {
            long long tx = (long long)(x + q.px) - (long long)kx;
            if (tx < 0 || tx % (long long)q.sx) continue;
            u64 ox = (u64)tx / q.sx;
            if (ox >= q.ow) continue;
            v += dcols[((s * q.oh + oy) * q.ow + ox) * row + (ky * q.kw + kx) * q.c + ci];
        }
    }
    float* d = dx + (s0 * q.h * q.w * q.c) + e;
    *d = acc ? *d + v : v;
}

// grad_W [kh, kw, c, cout] += x[s, y, x, ci] · dY[s, oy, ox, :] over every tap of a kept input
// element e (value v) — the CPU's `spmm::conv2d_grad_w`, added atomically; for a depthwise
// convolution (`dw`), grad_W [kh, kw, c] += x[s, y, x, ci] · dY[s, oy, ox, ci]
// (`spmm::depthwise_grad_w`).
__device__ void conv_tap(u64 e, float v, const float* dy, u64 cout, int dw, const Geom& q,
                         float* gw) {
    u64 s = e / (q.h * q.w * q.c), y = (e / (q.w * q.c)) % q.h, x = (e / q.c) % q.w, ci = e % q.c;
    for (u64 ky = 0; ky < q.kh; ky++) {
        long long ty = (long long)(y + q.py) - (long long)ky;
        if (ty < 0 || ty % (long long)q.sy) continue;
        u64 oy = (u64)ty / q.sy;
        if (oy >= q.oh) continue;
        for (u64 kx = 0; kx < q.kw; kx++) {
            long long tx = (long long)(x + q.px) - (long long)kx;
            if (tx < 0 || tx % (long long)q.sx) continue;
            u64 ox = (u64)tx / q.sx;
            if (ox >= q.ow) continue;
            u64 pos = (s * q.oh + oy) * q.ow + ox, tap = ky * q.kw + kx;
            if (dw) {
                atomicAdd(&gw[tap * q.c + ci], v * dy[pos * q.c + ci]);
                continue;
            }
            const float* d = dy + pos * cout;
            float* gr = gw + (tap * q.c + ci) * cout;
            for (u64 o = 0; o < cout; o++) atomicAdd(&gr[o], v * d[o]);
        }
    }
}

// The sparse convolution grad_W from a bitmap-packed input: one thread per word.
extern "C" __global__ void conv_grad_w_bitmap(const u64* bits, const u64* at,
                                              const unsigned char* values, int form,
                                              const float* dy, u64 cout, int dw, const u64* g,
                                              float* gw, u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    Geom q = geom_of(g);
    u64 word = bits[w], o = at[w];
    while (word) {
        int b = __ffsll((long long)word) - 1;
        word &= word - 1;
        conv_tap(64 * w + b, value_at(values, form, o++), dy, cout, dw, q, gw);
    }
}

// The same from u32 positions: one thread per kept element.
extern "C" __global__ void conv_grad_w_u32(const u32* idx, const unsigned char* values, int form,
                                           const float* dy, u64 cout, int dw, const u64* g,
                                           float* gw, u64 k) {
    u64 t = word_index();
    if (t >= k) return;
    conv_tap(idx[t], value_at(values, form, t), dy, cout, dw, geom_of(g), gw);
}

// A depthwise convolution's output: y[s, oy, ox, ch] = Σ_taps x·w[ky, kx, ch] (+ bias).
extern "C" __global__ void dw_forward(const float* x, const float* w, const float* bias, float* y,
                                      u64 n, const u64* g) {
    Geom q = geom_of(g);
    u64 e = word_index();
    if (e >= n * q.oh * q.ow * q.c) return;
    u64 s = e / (q.oh * q.ow * q.c), oy = (e / (q.ow * q.c)) % q.oh, ox = (e / q.c) % q.ow;
    u64 ch = e % q.c;
    float acc = bias ? bias[ch] : 0.0f;
    for (u64 ky = 0; ky < q.kh; ky++) {
        long long iy = (long long)(oy * q.sy + ky) - (long long)q.py;
        if (iy < 0 || iy >= (long long)q.h) continue;
        for (u64 kx = 0; kx < q.kw; kx++) {
            long long ix = (long long)(ox * q.sx + kx) - (long long)q.px;
            if (ix < 0 || ix >= (long long)q.w) continue;
            acc += x[((s * q.h + iy) * q.w + ix) * q.c + ch] * w[(ky * q.kw + kx) * q.c + ch];
        }
    }
    y[e] = acc;
}

// Its input gradient: each input element gathers dY·w over the taps that cover it (with `acc`,
// added).
extern "C" __global__ void dw_backward_input(const float* dy, const float* w, float* dx, u64 n,
                                             const u64* g, int acc) {
    Geom q = geom_of(g);
    u64 e = word_index();
    if (e >= n * q.h * q.w * q.c) return;
    u64 s = e / (q.h * q.w * q.c), y = (e / (q.w * q.c)) % q.h, x = (e / q.c) % q.w, ch = e % q.c;
    float v = 0.0f;
    for (u64 ky = 0; ky < q.kh; ky++) {
        long long ty = (long long)(y + q.py) - (long long)ky;
        if (ty < 0 || ty % (long long)q.sy) continue;
        u64 oy = (u64)ty / q.sy;
        if (oy >= q.oh) continue;
        for (u64 kx = 0; kx < q.kw; kx++) {
            long long tx = (long long)(x + q.px) - (long long)kx;
            if (tx < 0 || tx % (long long)q.sx) continue;
            u64 ox = (u64)tx / q.sx;
            if (ox >= q.ow) continue;
            v += dy[((s * q.oh + oy) * q.ow + ox) * q.c + ch] * w[(ky * q.kw + kx) * q.c + ch];
        }
    }
    dx[e] = acc ? dx[e] + v : v;
}

// Its weight gradient from the held input: one thread per weight, Σ over samples and output
// positions of x·dY.
extern "C" __global__ void dw_grad_w(const float* x, const float* dy, u64 n, const u64* g,
                                     float* gw) {
    Geom q = geom_of(g);
    u64 e = word_index();
    if (e >= q.kh * q.kw * q.c) return;
    u64 ky = e / (q.kw * q.c), kx = (e / q.c) % q.kw, ch = e % q.c;
    float acc = 0.0f;
    for (u64 s = 0; s < n; s++)
        for (u64 oy = 0; oy < q.oh; oy++) {
            long long iy = (long long)(oy * q.sy + ky) - (long long)q.py;
            if (iy < 0 || iy >= (long long)q.h) continue;
            for (u64 ox = 0; ox < q.ow; ox++) {
                long long ix = (long long)(ox * q.sx + kx) - (long long)q.px;
                if (ix < 0 || ix >= (long long)q.w) continue;
                acc += x[((s * q.h + iy) * q.w + ix) * q.c + ch] *
                       dy[((s * q.oh + oy) * q.ow + ox) * q.c + ch];
            }
        }
    gw[e] += acc;
}

// ReLU6 (`dropit_simd::mask::relu6_forward`): y = min(max(x, 0), 6) (NaN passes), bit e set
// when 0 < x < 6; one thread per word (y may be x itself; no mask where `bits` is null).
extern "C" __global__ void relu6_forward(const float* x, float* y, u64 n, u64* bits, u64 words) {
    u64 w = word_index();
    if (w >= words) return;
    u64 end = min(n, 64 * w + 64), word = 0;
    for (u64 e = 64 * w; e < end; e++) {
        float v = x[e];
        if (v > 0.0f && v < 6.0f) word |= 1ull << (e - 64 * w);
        y[e] = v <= 0.0f ? 0.0f : (v >= 6.0f ? 6.0f : v);
    }
    if (bits) bits[w] = word;
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

// Global average pooling: y[s, ci] = Σ_rows x[s, r, ci] · (1/rows), the rows in order.
extern "C" __global__ void avgpool(const float* x, float* y, u64 n, u64 rows, u64 c, float scale) {
    u64 e = word_index();
    if (e >= n * c) return;
    u64 s = e / c, i = e % c;
    float acc = 0.0f;
    for (u64 r = 0; r < rows; r++) acc += x[(s * rows + r) * c + i];
    y[e] = acc * scale;
}

// Its input gradient: dx[s, r, ci] = dy[s, ci] · (1/rows) (with `acc`, added).
extern "C" __global__ void avgpool_backward(const float* dy, float* dx, u64 n, u64 rows, u64 c,
                                            float scale, int acc) {
    u64 e = word_index();
    if (e >= n * rows * c) return;
    float v = dy[(e / (rows * c)) * c + e % c] * scale;
    dx[e] = acc ? dx[e] + v : v;
}

// Attention's softmax over each row of `rows` rows of t scores (in place): p = e^(s − max)/Σ,
// and the row's log-sum-exp into lse[(sample·heads + head)·t + r] where `lse` is given.
extern "C" __global__ void softmax_rows(float* p, u64 rows, u64 t, float* lse, u64 heads,
                                        u64 head) {
    u64 r = word_index();
    if (r >= rows) return;
    float* row = p + r * t;
    float m = -INFINITY, sum = 0.0f;
    for (u64 j = 0; j < t; j++) m = fmaxf(m, row[j]);
    for (u64 j = 0; j < t; j++) {
        row[j] = expf(row[j] - m);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (u64 j = 0; j < t; j++) row[j] *= inv;
    if (lse) lse[((r / t) * heads + head) * t + r % t] = m + logf(sum);
}

// The probabilities again from the scores and the kept log-sum-exp: p = e^(s − lse).
extern "C" __global__ void exp_rows(float* p, u64 rows, u64 t, const float* lse, u64 heads,
                                    u64 head) {
    u64 e = word_index();
    if (e >= rows * t) return;
    u64 r = e / t;
    p[e] = expf(p[e] - lse[((r / t) * heads + head) * t + r % t]);
}

// Through the softmax: dS = P ∘ (dP − Σ_j dP·P) per row (over dP in place).
extern "C" __global__ void softmax_backward_rows(float* dp, const float* p, u64 rows, u64 t) {
    u64 r = word_index();
    if (r >= rows) return;
    float dot = 0.0f;
    for (u64 j = 0; j < t; j++) dot += dp[r * t + j] * p[r * t + j];
    for (u64 j = 0; j < t; j++) dp[r * t + j] = p[r * t + j] * (dp[r * t + j] - dot);
}
