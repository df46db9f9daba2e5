// The kernels of `src/cuda/kernels/` as a host library under the emulation of emu.h, for the
// emulated backend of `dropit::device` (tests/emulated/mod.rs): `emu_launch` runs a kernel by
// name over `grid` blocks of `block` threads, its arguments given as 64-bit words (addresses,
// integers, and floats by their bits), in the kernel's parameter order.
#include "emu.h"
#include "../../src/cuda/kernels/common.cuh"
#include "../../src/cuda/kernels/dropit.cu"
#include "../../src/cuda/kernels/step.cu"
#include "../../src/cuda/kernels/norm.cu"
#include "../../src/cuda/kernels/conv.cu"
#include "../../src/cuda/kernels/layers.cu"
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

template <class T> T arg_of(unsigned long long w) {
    if constexpr (std::is_pointer_v<T>) {
        return reinterpret_cast<T>(w);
    } else if constexpr (std::is_same_v<T, float>) {
        unsigned u = (unsigned)w;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    } else {
        return static_cast<T>(w);
    }
}

template <class... A, size_t... I>
std::tuple<A...> args_of(const unsigned long long* w, std::index_sequence<I...>) {
    return std::tuple<A...>(arg_of<A>(w[I])...);
}

// 0, or 2 when the argument count is not the kernel's.
template <class... A>
int run(void (*k)(A...), bool synced, unsigned grid, unsigned block, const unsigned long long* w,
        size_t n) {
    if (n != sizeof...(A)) return 2;
    auto t = args_of<A...>(w, std::index_sequence_for<A...>{});
    auto body = [&] { std::apply(k, t); };
    if (synced) launch_synced(grid, block, body);
    else launch(grid, block, body);
    return 0;
}

// 0 when it ran; 1 for an unknown kernel, 2 for a wrong argument count. One launch at a time
// (the emulation's grid and barrier are global), whichever thread calls.
extern "C" int emu_launch(const char* name, unsigned grid, unsigned block,
                          const unsigned long long* args, size_t n) {
    static std::mutex one;
    std::lock_guard<std::mutex> hold(one);
    std::string s(name);
#define K(f, synced) \
    if (s == #f) return run(f, synced, grid, block, args, n);
    K(radix_hist, true)
    K(scan_exclusive, true)
    K(sum_squares, true)
    K(word_ties, false)
    K(keep_words, false)
    K(word_popcounts, false)
    K(write_kept, false)
    K(unpack_bitmap, false)
    K(unpack_u32, false)
    K(linear_grad_w_bitmap, false)
    K(linear_grad_w_u32, false)
    K(apply_mask, false)
    K(relu_forward, false)
    K(sgd_update, false)
    K(adamw_update, false)
    K(copy_acc, false)
    K(scale, false)
    K(bias_rows, false)
    K(column_sums, false)
    K(softmax_ce, false)
    K(ln_forward, false)
    K(ln_backward_rows, false)
    K(ln_backward_params, false)
    K(gelu_forward, false)
    K(gelu_backward, false)
    K(add, false)
    K(pos_embed_forward, false)
    K(sample_sums, false)
    K(copy_blocks, false)
    K(token_select_backward, false)
    K(im2col, false)
    K(col2im, false)
    K(conv_grad_w_bitmap, false)
    K(conv_grad_w_u32, false)
    K(dw_forward, false)
    K(dw_backward_input, false)
    K(dw_grad_w, false)
    K(relu6_forward, false)
    K(bn_stats, false)
    K(bn_normalize, false)
    K(bn_eval, false)
    K(bn_backward_params, false)
    K(bn_grad_x, false)
    K(bn_commit, false)
    K(avgpool, false)
    K(avgpool_backward, false)
    K(softmax_rows, false)
    K(exp_rows, false)
    K(softmax_backward_rows, false)
#undef K
    return 1;
}
