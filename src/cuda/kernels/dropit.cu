// DropIT's kernels: the exact top-k threshold (a radix select), packing into the CPU's formats
// and back, and the weight gradients of Linear and convolutions from a packed input.

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
        u64 e = 64 * w + take_lowest(&word);
        if (form == 0) ((float*)values)[o] = x[e];
        else ((u16*)values)[o] = to_bf16(x[e]);
        if (idx) idx[o] = (u32)e;
        o++;
    }
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
        u64 e = 64 * w + take_lowest(&word), r = e / inp, i = e % inp;
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

// grad_W [kh, kw, c, cout] += x[s, y, x, ci] · dY[s, oy, ox, :] over every tap of a kept input
// element e (value v) — the CPU's `spmm::conv2d_grad_w`, added atomically; for a depthwise
// convolution (`dw`), grad_W [kh, kw, c] += x[s, y, x, ci] · dY[s, oy, ox, ci]
// (`spmm::depthwise_grad_w`).
__device__ void conv_tap(u64 e, float v, const float* dy, u64 cout, int dw, const Geom& q,
                         float* gw) {
    u64 s = e / (q.h * q.w * q.c), y = (e / (q.w * q.c)) % q.h, x = (e / q.c) % q.w, ci = e % q.c;
    u64 oy, ox;
    for (u64 ky = 0; ky < q.kh; ky++) {
        if (!output_of(y, q.py, q.sy, ky, q.oh, &oy)) continue;
        for (u64 kx = 0; kx < q.kw; kx++) {
            if (!output_of(x, q.px, q.sx, kx, q.ow, &ox)) continue;
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
        conv_tap(64 * w + take_lowest(&word), value_at(values, form, o++), dy, cout, dw, q, gw);
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
