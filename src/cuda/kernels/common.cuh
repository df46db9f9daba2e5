// What every device kernel shares. The kernels (this folder's `.cu` files, after this one) are
// compiled together at run time with NVRTC (`src/cuda/mod.rs`), with no header included; each
// is the twin of a CPU kernel of `dropit_simd` or of a layer's, with the same conventions:
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

// The lowest set bit of a bitmap word, cleared.
__device__ __forceinline__ u64 take_lowest(u64* word) {
    u64 b = (u64)(__ffsll((long long)*word) - 1);
    *word &= *word - 1;
    return b;
}

__device__ __forceinline__ float value_at(const unsigned char* values, int form, u64 o) {
    return form == 0 ? ((const float*)values)[o] : from_bf16(((const u16*)values)[o]);
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

// The output index o whose kernel tap k reaches input index i: i + pad − k = stride·o, o < out.
__device__ __forceinline__ bool output_of(u64 i, u64 pad, u64 stride, u64 k, u64 out, u64* o) {
    if (i + pad < k || (i + pad - k) % stride) return false;
    *o = (i + pad - k) / stride;
    return *o < out;
}

// The input index i that output o's kernel tap k reads: o·stride + k − pad, inside 0 .. size.
__device__ __forceinline__ bool input_of(u64 o, u64 stride, u64 k, u64 pad, u64 size, u64* i) {
    if (o * stride + k < pad) return false;
    *i = o * stride + k - pad;
    return *i < size;
}
