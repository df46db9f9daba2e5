// Runs the GPU path's kernels under the host emulation (emu.h) the way `src/cuda/select.rs`
// and `src/cuda/pack.rs` launch them: the top-k threshold, packing, unpacking and ReLU's mask
// of one tensor. Usage: driver X.bin K FORM POS OUT.pack OUT.dense OUT.mask, with FORM 0 f32 /
// 1 bf16 and POS 0 bitmap / 1 u32; X.bin holds little-endian f32. With `optim` first, one
// optimizer update instead (see `optim` below).
#include "emu.h"
#include "../../src/cuda/kernels.cu"
#include <cstdio>
#include <cstdlib>
#include <string>

typedef unsigned long long U;

static unsigned blocks(U n) { return (unsigned)std::max<U>(1, (n + 255) / 256); }

static std::vector<U> scan(std::vector<u32>& c) {
    std::vector<U> out(c.size());
    U len = c.size();
    // Any block size works; 32 threads keep the emulation quick (the GPU path uses 1024).
    launch_synced(1, 32, [&] { scan_exclusive(c.data(), out.data(), len); });
    return out;
}

static void write(const char* path, const void* data, size_t bytes) {
    FILE* f = std::fopen(path, "wb");
    std::fwrite(data, 1, bytes, f);
    std::fclose(f);
}

static float bits_f32(const char* s) {
    unsigned u = (unsigned)std::stoul(s);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// driver optim sgd|adamw N LR MOMENTUM|B1 WD NESTEROV|B2 EPS C1 C2 IN.bin OUT.bin: one update of
// p, g, m, v (IN: 4N floats) into p, m, v (OUT: 3N floats); floats given as their bits.
static int optim(char** a) {
    U n = std::stoull(a[3]);
    std::vector<float> in(4 * n);
    FILE* f = std::fopen(a[11], "rb");
    if (std::fread(in.data(), 4, 4 * n, f) != 4 * n) return 1;
    std::fclose(f);
    float *p = in.data(), *g = p + n, *m = g + n, *v = m + n;
    float lr = bits_f32(a[4]), x = bits_f32(a[5]), wd = bits_f32(a[6]);
    if (std::string(a[2]) == "sgd") {
        int nesterov = std::atoi(a[7]);
        launch(blocks(n), 256, [&] { sgd_update(p, g, m, n, lr, x, wd, nesterov); });
    } else {
        float b2 = bits_f32(a[7]), eps = bits_f32(a[8]), c1 = bits_f32(a[9]), c2 = bits_f32(a[10]);
        launch(blocks(n), 256, [&] { adamw_update(p, g, m, v, n, lr, x, b2, eps, wd, c1, c2); });
    }
    std::vector<float> out(p, p + n);
    out.insert(out.end(), m, m + n);
    out.insert(out.end(), v, v + n);
    write(a[12], out.data(), 4 * out.size());
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 13 && std::string(argv[1]) == "optim") return optim(argv);
    if (argc != 8) return 1;
    std::vector<float> x;
    FILE* f = std::fopen(argv[1], "rb");
    for (float v; std::fread(&v, 4, 1, f) == 1;) x.push_back(v);
    std::fclose(f);
    U n = x.size(), k = std::stoull(argv[2]);
    int form = std::atoi(argv[3]), pos = std::atoi(argv[4]);
    // The threshold: four histogram passes, the k-th largest key's digit from the top down.
    int key = 0;
    U above = 0, need = k;
    if (k == 0) {
        key = 0x7fffffff;
    } else if (k == n) {
        key = -1;
        above = n;
        need = 0;
    } else {
        std::vector<u32> hist(256);
        for (int shift : {24, 16, 8, 0}) {
            std::fill(hist.begin(), hist.end(), 0);
            // Blocks of 32 threads here (256 on the GPU): the kernel strides by the grid.
            unsigned grid = (unsigned)std::min<U>((n + 31) / 32, 1024);
            launch_synced(grid, 32, [&] { radix_hist(x.data(), n, shift, key, hist.data()); });
            int d = 255;
            while (hist[d] < need) {
                need -= hist[d];
                above += hist[d];
                d--;
            }
            key = (key << 8) | d;
        }
    }
    U ties = need, words = (n + 63) / 64;
    std::vector<u32> equal(words), kept(words);
    std::vector<U> bits(words);
    launch(blocks(words), 256, [&] { word_ties(x.data(), n, key, equal.data(), words); });
    std::vector<U> before = scan(equal);
    launch(blocks(words), 256, [&] {
        keep_words(x.data(), n, key, ties, equal.data(), before.data(), bits.data(), kept.data(), words);
    });
    std::vector<U> at = scan(kept);
    if (words && at[words - 1] + kept[words - 1] != k) return 2;
    // The packed bytes: positions, then values, each padded to 8 bytes.
    auto pad8 = [](U b) { return (b + 7) / 8 * 8; };
    U pos_bytes = pos == 0 ? words * 8 : pad8(k * 4), val_bytes = pad8(k * (form == 0 ? 4 : 2));
    std::vector<U> buf((pos_bytes + val_bytes) / 8 + 1, 0);
    unsigned char* bytes = (unsigned char*)buf.data();
    unsigned char* values = bytes + pos_bytes;
    u32* idx = pos == 1 ? (u32*)bytes : nullptr;
    if (pos == 0) std::memcpy(bytes, bits.data(), words * 8);
    launch(blocks(words), 256, [&] { write_kept(x.data(), bits.data(), at.data(), values, form, idx, words); });
    write(argv[5], bytes, pos_bytes + val_bytes);
    // Dense again from the packed bytes.
    std::vector<float> dense(n, 7.0f);
    if (pos == 1) {
        std::fill(dense.begin(), dense.end(), 0.0f);
        launch(blocks(k), 256, [&] { unpack_u32(idx, values, form, dense.data(), k); });
    } else {
        std::vector<u32> count(words);
        launch(blocks(words), 256, [&] { word_popcounts((U*)bytes, count.data(), words); });
        std::vector<U> first = scan(count);
        launch(blocks(words), 256, [&] { unpack_bitmap((U*)bytes, first.data(), values, form, dense.data(), n, words); });
    }
    write(argv[6], dense.data(), 4 * n);
    std::vector<U> mask(words);
    launch(blocks(words), 256, [&] { positive_mask(x.data(), n, mask.data(), words); });
    write(argv[7], mask.data(), 8 * words);
    return 0;
}
