// The other layers: GELU, residual adds, tokens and positions, ReLU6, pooling, attention's
// softmax.

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
    float m = __uint_as_float(0xff800000u), sum = 0.0f;
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
