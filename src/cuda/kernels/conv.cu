// Convolutions: columns for a product (im2col) and back, and the depthwise convolution.

// The input rows of samples s0 .. s0 + ns as the columns of a product (im2col):
// cols[(s, oy, ox), (ky, kx, ci)] = x[s0 + s, oy·sy + ky − py, ox·sx + kx − px, ci], 0 outside.
extern "C" __global__ void im2col(const float* x, float* cols, u64 s0, u64 ns, const u64* g) {
    Geom q = geom_of(g);
    u64 row = q.kh * q.kw * q.c, e = word_index();
    if (e >= ns * q.oh * q.ow * row) return;
    u64 r = e / row, j = e % row;
    u64 s = s0 + r / (q.oh * q.ow), oy = (r / q.ow) % q.oh, ox = r % q.ow;
    u64 ky = j / (q.kw * q.c), kx = (j / q.c) % q.kw, ci = j % q.c, y, xx;
    float v = 0.0f;
    if (input_of(oy, q.sy, ky, q.py, q.h, &y) && input_of(ox, q.sx, kx, q.px, q.w, &xx))
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
    u64 row = q.kh * q.kw * q.c, oy, ox;
    float v = 0.0f;
    for (u64 ky = 0; ky < q.kh; ky++) {
        if (!output_of(y, q.py, q.sy, ky, q.oh, &oy)) continue;
        for (u64 kx = 0; kx < q.kw; kx++)
            if (output_of(x, q.px, q.sx, kx, q.ow, &ox))
                v += dcols[((s * q.oh + oy) * q.ow + ox) * row + (ky * q.kw + kx) * q.c + ci];
    }
    float* d = dx + (s0 * q.h * q.w * q.c) + e;
    *d = acc ? *d + v : v;
}

// A depthwise convolution's output: y[s, oy, ox, ch] = Σ_taps x·w[ky, kx, ch] (+ bias).
extern "C" __global__ void dw_forward(const float* x, const float* w, const float* bias, float* y,
                                      u64 n, const u64* g) {
    Geom q = geom_of(g);
    u64 e = word_index();
    if (e >= n * q.oh * q.ow * q.c) return;
    u64 s = e / (q.oh * q.ow * q.c), oy = (e / (q.ow * q.c)) % q.oh, ox = (e / q.c) % q.ow;
    u64 ch = e % q.c, iy, ix;
    float acc = bias ? bias[ch] : 0.0f;
    for (u64 ky = 0; ky < q.kh; ky++) {
        if (!input_of(oy, q.sy, ky, q.py, q.h, &iy)) continue;
        for (u64 kx = 0; kx < q.kw; kx++)
            if (input_of(ox, q.sx, kx, q.px, q.w, &ix))
                acc += x[((s * q.h + iy) * q.w + ix) * q.c + ch] * w[(ky * q.kw + kx) * q.c + ch];
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
    u64 oy, ox;
    float v = 0.0f;
    for (u64 ky = 0; ky < q.kh; ky++) {
        if (!output_of(y, q.py, q.sy, ky, q.oh, &oy)) continue;
        for (u64 kx = 0; kx < q.kw; kx++)
            if (output_of(x, q.px, q.sx, kx, q.ow, &ox))
                v += dy[((s * q.oh + oy) * q.ow + ox) * q.c + ch] * w[(ky * q.kw + kx) * q.c + ch];
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
    u64 ky = e / (q.kw * q.c), kx = (e / q.c) % q.kw, ch = e % q.c, iy, ix;
    float acc = 0.0f;
    for (u64 s = 0; s < n; s++)
        for (u64 oy = 0; oy < q.oh; oy++) {
            if (!input_of(oy, q.sy, ky, q.py, q.h, &iy)) continue;
            for (u64 ox = 0; ox < q.ow; ox++)
                if (input_of(ox, q.sx, kx, q.px, q.w, &ix))
                    acc += x[((s * q.h + iy) * q.w + ix) * q.c + ch] *
                           dy[((s * q.oh + oy) * q.ow + ox) * q.c + ch];
        }
    gw[e] += acc;
}
