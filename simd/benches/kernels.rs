//! Kernel benchmarks, each against its baseline in the same group:
//!
//! - `topk`: radix top-k threshold vs `select_nth_unstable_by` on |x|;
//! - `pack`: pack / select+pack / unpack (bitmap + bf16) vs a dense `copy_from_slice`;
//! - `spmm_linear`: packed-input Linear grad_W vs dense `sgemm` (and unpack + `sgemm`);
//! - `spmm_conv`: packed-input NHWC Conv2d grad_W vs im2col + `sgemm`.
//! - `depthwise`: NHWC depthwise Conv2d forward / grad_X / grad_W (and the scalar reference
//!   forward), and the packed-input grad_W at 10% kept vs the dense grad_W.
//! - `conv`: direct Conv2d forward / grad_W / grad_X of one sample vs im2col + our `sgemm` and
//!   im2col + matrixmultiply, on the cnn's shapes.
//!
//! - `norm`: batch norm's forward (statistics, normalize) and backward loops, and layer norm's
//!   rows, with x̂ kept as f32, bf16 and 8-bit codes, on a cnn and a vit shape.
//!
//! Data is deterministic (xorshift + Box-Muller), so runs are comparable.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use dropit_simd::format::{Format, PackedMut, PosForm, ValueType};
use dropit_simd::{pack, select, spmm};

// ---------------------------------------------------------------------------------------------
// Data

/// xorshift64* with a Box-Muller normal sampler.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64)
    }

    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// Roughly normal activations.
fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal()).collect()
}

/// ReLU-like activations: about half exact zeros, the rest |normal|.
fn relu_like(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| {
            let v = r.normal();
            if r.next_u64() & 1 == 0 { 0.0 } else { v.abs() }
        })
        .collect()
}

/// A zeroed, 8-byte-aligned buffer for a packed tensor of `fmt`.
fn packed_buf(fmt: Format, n: usize, k: usize) -> Vec<u64> {
    vec![0u64; fmt.bytes(n, k).div_ceil(8)]
}

/// Packs `x` keeping its `k` largest magnitudes (tensor-wide threshold) into `buf`.
fn pack_into<'a>(x: &[f32], k: usize, fmt: Format, buf: &'a mut [u64]) -> PackedMut<'a> {
    let t = select::topk_threshold(x, k).unwrap();
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
    let mut p =
        PackedMut::from_bytes(fmt, x.len(), k, &mut bytes[..fmt.bytes(x.len(), k)]).unwrap();
    pack::pack(x, &t, &mut p).unwrap();
    p
}

/// Panics unless `got` matches `want` within 1e-3 of `want`'s largest magnitude.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-3 * scale,
        "{what}: max |sparse - dense| = {err} > 1e-3 · {scale}"
    );
}

/// `c[m×n] = a[m×k] · b[k×n]` (beta = 0) with explicit strides; `c` row-major.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
) {
    // Every element each matrix's strides reach lies inside its slice.
    assert!(m > 0 && k > 0 && n > 0);
    assert!((m - 1) * rsa + (k - 1) * csa < a.len());
    assert!((k - 1) * rsb + (n - 1) * csb < b.len());
    assert!(m * n <= c.len());
    // SAFETY: the asserts above keep every access of A, B and C in bounds; C does not alias them.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// topk

fn bench_topk(c: &mut Criterion) {
    let mut g = c.benchmark_group("topk");
    g.warm_up_time(Duration::from_millis(500));
    for &n in &[1usize << 16, 1 << 20, 1 << 22] {
        let k = select::kept_count(n, 0.1);
        let x = normals(n, n as u64);
        if n >= 1 << 22 {
            g.sample_size(15).measurement_time(Duration::from_secs(3));
        } else {
            g.sample_size(30).measurement_time(Duration::from_secs(2));
        }
        g.throughput(Throughput::Elements(n as u64));

        // Correctness, outside timing: the threshold keeps exactly the k largest magnitudes.
        let t = select::topk_threshold(&x, k).unwrap();
        let mut abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        abs.select_nth_unstable_by(n - k, |a, b| a.total_cmp(b));
        let kth = select::key(abs[n - k]);
        let above = x.iter().filter(|&&v| select::key(v) > t.key()).count();
        assert_eq!((t.kept(), above), (k, t.above()));
        let min_kept = match t.ties() {
            0 => x
                .iter()
                .map(|&v| select::key(v))
                .filter(|&q| q > t.key())
                .min(),
            _ => Some(t.key()),
        };
        assert_eq!(min_kept, Some(kth));

        g.bench_function(BenchmarkId::new("ours", n), |b| {
            b.iter(|| select::topk_threshold(black_box(&x), k).unwrap())
        });
        g.bench_function(BenchmarkId::new("select_nth", n), |b| {
            b.iter(|| {
                abs.copy_from_slice(black_box(&x));
                for v in abs.iter_mut() {
                    *v = v.abs();
                }
                let (_, kth, _) = abs.select_nth_unstable_by(n - k, |a, b| a.total_cmp(b));
                *kth
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// pack

fn bench_pack(c: &mut Criterion) {
    let n = 1usize << 20;
    let k = select::kept_count(n, 0.1);
    let x = normals(n, 7);
    let fmt = Format::new(ValueType::Bf16, PosForm::Bitmap);
    let mut buf = packed_buf(fmt, n, k);
    let mut packed = PackedMut::from_bytes(fmt, n, k, bytemuck::cast_slice_mut(&mut buf)).unwrap();
    let t = select::topk_threshold(&x, k).unwrap();
    let mut dense = vec![0f32; n];

    // Correctness, outside timing: unpack gives back the kept values (bf16-rounded), zeros elsewhere.
    pack::pack(&x, &t, &mut packed).unwrap();
    pack::unpack(&packed.as_packed(), &mut dense).unwrap();
    let nonzero = dense.iter().filter(|&&v| v != 0.0).count();
    assert_eq!(nonzero, k);
    assert!(
        x.iter()
            .zip(&dense)
            .all(|(a, b)| *b == 0.0 || (a - b).abs() <= a.abs() * (1.0 / 256.0))
    );

    let mut g = c.benchmark_group("pack");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .throughput(Throughput::Bytes(4 * n as u64));
    g.bench_function("pack", |b| {
        b.iter(|| pack::pack(black_box(&x), &t, &mut packed).unwrap())
    });
    g.bench_function("select_and_pack", |b| {
        b.iter(|| {
            let t = select::topk_threshold(black_box(&x), k).unwrap();
            pack::pack(&x, &t, &mut packed).unwrap()
        })
    });
    g.bench_function("unpack", |b| {
        b.iter(|| pack::unpack(&packed.as_packed(), black_box(&mut dense)).unwrap())
    });
    g.bench_function("copy", |b| {
        b.iter(|| black_box(&mut dense).copy_from_slice(black_box(&x)))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// spmm_linear

fn bench_spmm_linear(c: &mut Criterion) {
    const M: usize = 128;
    const IN: usize = 512;
    const OUT: usize = 512;
    let n = M * IN;
    let x = normals(n, 11);
    let dy = normals(M * OUT, 12);
    let mut gwt = vec![0f32; IN * OUT];
    let mut gwt_dense = vec![0f32; IN * OUT];
    let mut xd = vec![0f32; n];

    let mut g = c.benchmark_group("spmm_linear");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .throughput(Throughput::Elements((M * IN * OUT) as u64));
    for keep in [0.1f32, 0.3] {
        let k = select::kept_count(n, keep);
        let fmt = Format::smallest(n, k, ValueType::F32);
        let mut buf = packed_buf(fmt, n, k);
        let packed = pack_into(&x, k, fmt, &mut buf);
        let packed = packed.as_packed();
        pack::unpack(&packed, &mut xd).unwrap();
        let x_dense = xd.clone();
        // gwt[In×Out] = Xᵀ · dY: A = Xᵀ read through X's strides (rsa = 1, csa = In).
        let dense = |x_dense: &[f32], gwt: &mut [f32]| {
            sgemm(IN, M, OUT, x_dense, (1, IN), &dy, (OUT, 1), gwt)
        };

        // Correctness, outside timing.
        gwt.fill(0.0);
        spmm::linear_grad_w(&packed, M, IN, &dy, OUT, &mut gwt).unwrap();
        dense(&x_dense, &mut gwt_dense);
        assert_close("spmm_linear", &gwt, &gwt_dense);

        g.bench_function(BenchmarkId::new("sparse", keep), |b| {
            b.iter(|| {
                gwt.fill(0.0);
                spmm::linear_grad_w(black_box(&packed), M, IN, black_box(&dy), OUT, &mut gwt)
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("dense", keep), |b| {
            b.iter(|| dense(black_box(&x_dense), &mut gwt_dense))
        });
        g.bench_function(BenchmarkId::new("scatter_dense", keep), |b| {
            b.iter(|| {
                pack::unpack(black_box(&packed), &mut xd).unwrap();
                dense(&xd, &mut gwt_dense)
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// spmm_conv

/// NHWC im2col with zero padding: `col[(n, ho, wo), (a, b, c)]`, row length `kh·kw·cin`.
fn im2col(x: &[f32], g: &spmm::ConvGeom, (ho, wo): (usize, usize), col: &mut [f32]) {
    let row = g.kh * g.kw * g.cin;
    let mut rows = col.chunks_exact_mut(row);
    for n in 0..g.n {
        for oy in 0..ho {
            for ox in 0..wo {
                let dst = rows.next().unwrap();
                for a in 0..g.kh {
                    let iy = (oy * g.stride.0 + a).wrapping_sub(g.pad.0);
                    for b in 0..g.kw {
                        let ix = (ox * g.stride.1 + b).wrapping_sub(g.pad.1);
                        let d = &mut dst[(a * g.kw + b) * g.cin..][..g.cin];
                        if iy < g.h && ix < g.w {
                            d.copy_from_slice(&x[((n * g.h + iy) * g.w + ix) * g.cin..][..g.cin]);
                        } else {
                            d.fill(0.0);
                        }
                    }
                }
            }
        }
    }
}

fn bench_spmm_conv(c: &mut Criterion) {
    let geom = spmm::ConvGeom {
        n: 64,
        h: 28,
        w: 28,
        cin: 32,
        cout: 32,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (1, 1),
    };
    let (ho, wo) = geom.out_hw().unwrap();
    let n = geom.input_len();
    let p = geom.n * ho * wo;
    let kdim = geom.kh * geom.kw * geom.cin;
    let k = select::kept_count(n, 0.1);

    let x = relu_like(n, 21);
    let dy = normals(p * geom.cout, 22);
    let fmt = Format::smallest(n, k, ValueType::F32);
    let mut buf = packed_buf(fmt, n, k);
    let packed = pack_into(&x, k, fmt, &mut buf);
    let packed = packed.as_packed();
    let mut x_dense = vec![0f32; n];
    pack::unpack(&packed, &mut x_dense).unwrap();
    let mut col = vec![0f32; p * kdim];
    let mut gw = vec![0f32; geom.weight_len()];
    let mut gw_dense = vec![0f32; geom.weight_len()];
    // gw[kdim×Cout] = colᵀ · dY: A = colᵀ read through col's strides (rsa = 1, csa = kdim).
    let mut dense = |gw: &mut [f32]| {
        im2col(&x_dense, &geom, (ho, wo), &mut col);
        sgemm(kdim, p, geom.cout, &col, (1, kdim), &dy, (geom.cout, 1), gw)
    };

    // Correctness, outside timing.
    spmm::conv2d_grad_w(&packed, &geom, &dy, &mut gw).unwrap();
    dense(&mut gw_dense);
    assert_close("spmm_conv", &gw, &gw_dense);

    let mut g = c.benchmark_group("spmm_conv");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(n as u64));
    g.bench_function("sparse", |b| {
        b.iter(|| {
            gw.fill(0.0);
            spmm::conv2d_grad_w(black_box(&packed), &geom, black_box(&dy), &mut gw).unwrap()
        })
    });
    g.bench_function("im2col_sgemm", |b| {
        b.iter(|| dense(black_box(&mut gw_dense)))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// gemm: ours (packs into caller scratch, allocates nothing) vs matrixmultiply (allocates its
// packing buffers on every call), on the trainer's shapes.

/// Every GEMM the reference workloads run in a training step at batch 64 on two workers (one
/// worker's call): `(name, m, k, n, A transposed, B transposed)`. Forward `X·W`; grad_W
/// `Xᵀ·dY` (a band of input features per worker); grad_X `dY·Wᵀ`.
const GEMM_SHAPES: [(&str, usize, usize, usize, bool, bool); 27] = [
    // mlp 784–512–512–10 at its batch of 128: 64 rows per worker.
    ("mlp_fc1_fwd_64x784x512", 64, 784, 512, false, false),
    ("mlp_fc2_fwd_64x512x512", 64, 512, 512, false, false),
    ("mlp_fc1_gradw_392x128x512", 392, 128, 512, true, false),
    ("mlp_fc2_gradw_256x128x512", 256, 128, 512, true, false),
    ("mlp_fc2_gradx_64x512x512", 64, 512, 512, false, true),
    // cnn: the 128-channel 3×3 convolution runs im2col (depth 1152 > the direct kernels'
    // limit), one 7×7 sample at a time; the 28×28 32-channel shapes where no direct kernel
    // exists (ARM).
    ("cnn_conv128_fwd_49x1152x128", 49, 1152, 128, false, false),
    ("cnn_conv128_gradx_49x128x1152", 49, 128, 1152, false, true),
    ("cnn_conv32_fwd_784x288x32", 784, 288, 32, false, false),
    ("cnn_conv32_gradw_288x784x32", 288, 784, 32, true, false),
    ("cnn_conv32_gradx_784x32x288", 784, 32, 288, false, true),
    // vit: 1600 token rows per worker, dim 96, MLP 384; attention per (sample, head), 50
    // tokens of 32.
    ("vit_qkv_fwd_1600x96x288", 1600, 96, 288, false, false),
    ("vit_proj_fwd_1600x96x96", 1600, 96, 96, false, false),
    ("vit_fc1_fwd_1600x96x384", 1600, 96, 384, false, false),
    ("vit_fc2_fwd_1600x384x96", 1600, 384, 96, false, false),
    ("vit_qkv_gradw_48x3200x288", 48, 3200, 288, true, false),
    ("vit_fc2_gradw_192x3200x96", 192, 3200, 96, true, false),
    ("vit_rebuilt_gradw_96x256x384", 96, 256, 384, true, false),
    ("vit_qkv_gradx_1600x288x96", 1600, 288, 96, false, true),
    ("vit_fc1_gradx_1600x384x96", 1600, 384, 96, false, true),
    ("vit_fc2_gradx_1600x96x384", 1600, 96, 384, false, true),
    ("vit_attn_scores_50x32x50", 50, 32, 50, false, true),
    ("vit_attn_pv_50x50x32", 50, 50, 32, false, false),
    ("vit_attn_dv_50x50x32", 50, 50, 32, true, false),
    // mobilenet: pointwise convolutions over the whole batch (64 · H · W rows).
    ("mobilenet_expand_12544x16x64", 12544, 16, 64, false, false),
    ("mobilenet_project_12544x64x16", 12544, 64, 16, false, false),
    ("mobilenet_expand_3136x32x128", 3136, 32, 128, false, false),
    ("mobilenet_project_1024x128x48", 1024, 128, 48, false, false),
];

fn bench_gemm(c: &mut Criterion) {
    use dropit_simd::gemm::{Mat, MatMut, scratch_len, sgemm as ours};
    let mut g = c.benchmark_group("gemm");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(15);
    for (name, m, k, n, at, bt) in GEMM_SHAPES {
        let a = normals(m * k, 1);
        let b = normals(k * n, 2);
        let mut c1 = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        let mut scratch = vec![0f32; scratch_len(m, k, n)];
        let (am, astr) = if at {
            (Mat::new(&a, k, m).unwrap().t(), (1, m))
        } else {
            (Mat::new(&a, m, k).unwrap(), (k, 1))
        };
        let (bm, bstr) = if bt {
            (Mat::new(&b, n, k).unwrap().t(), (1, k))
        } else {
            (Mat::new(&b, k, n).unwrap(), (n, 1))
        };
        ours(
            1.0,
            am,
            bm,
            0.0,
            MatMut::new(&mut c1, m, n).unwrap(),
            &mut scratch,
        )
        .unwrap();
        sgemm(m, k, n, &a, astr, &b, bstr, &mut c2);
        assert_close(name, &c1, &c2);
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.bench_function(BenchmarkId::new("ours", name), |bch| {
            bch.iter(|| {
                ours(
                    1.0,
                    am,
                    bm,
                    0.0,
                    MatMut::new(&mut c1, m, n).unwrap(),
                    &mut scratch,
                )
                .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("matrixmultiply", name), |bch| {
            bch.iter(|| sgemm(m, k, n, &a, astr, &b, bstr, black_box(&mut c2)))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// conv: direct convolution vs im2col + GEMM, one sample, the cnn's 3×3 layers.

/// One sample's col2im: adds the im2col-shaped `col` back onto `dx` (zeroed first).
fn col2im(g: &spmm::ConvGeom, col: &[f32], dx: &mut [f32]) {
    let (oh, ow) = g.out_hw().unwrap();
    let kd = g.kh * g.kw * g.cin;
    dx.fill(0.0);
    for r in 0..oh {
        for c in 0..ow {
            let row = &col[(r * ow + c) * kd..][..kd];
            for a in 0..g.kh {
                for b in 0..g.kw {
                    let ih = (r * g.stride.0 + a) as isize - g.pad.0 as isize;
                    let iw = (c * g.stride.1 + b) as isize - g.pad.1 as isize;
                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                        continue;
                    }
                    let d = &mut dx[(ih as usize * g.w + iw as usize) * g.cin..][..g.cin];
                    for (d, s) in d.iter_mut().zip(&row[(a * g.kw + b) * g.cin..][..g.cin]) {
                        *d += s;
                    }
                }
            }
        }
    }
}

fn bench_conv(c: &mut Criterion) {
    use dropit_simd::conv;
    use dropit_simd::gemm::{Mat, MatMut, scratch_len, sgemm as ours};
    let mut grp = c.benchmark_group("conv");
    grp.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for (name, hw, cin, cout, s) in [
        ("28x28_32to32_s1", 28, 32, 32, 1),
        ("28x28_32to64_s2", 28, 32, 64, 2),
        ("14x14_64to64_s1", 14, 64, 64, 1),
        ("7x7_128to128_s1", 7, 128, 128, 1),
    ] {
        let g = spmm::ConvGeom {
            n: 1,
            h: hw,
            w: hw,
            cin,
            cout,
            kh: 3,
            kw: 3,
            stride: (s, s),
            pad: (1, 1),
        };
        let d = conv::supported(&g);
        let (oh, ow) = g.out_hw().unwrap();
        let (m, k) = (oh * ow, 9 * cin);
        let x = normals(hw * hw * cin, 1);
        let w = normals(k * cout, 2);
        let dy = normals(m * cout, 3);
        let mut y = vec![0f32; m * cout];
        let mut col = vec![0f32; m * k];
        let mut gw = vec![0f32; k * cout];
        let mut buf = vec![0f32; conv::buf_len(&g).unwrap()];
        let need = [
            scratch_len(m, k, cout),
            scratch_len(k, m, cout),
            scratch_len(m, cout, k),
        ];
        let mut scratch = vec![0f32; need.into_iter().max().unwrap()];
        grp.throughput(Throughput::Elements((m * k * cout) as u64));
        if d.forward {
            grp.bench_function(BenchmarkId::new("fwd_direct", name), |b| {
                b.iter(|| {
                    conv::forward(&g, Some(&x), &w, None, black_box(&mut y), &mut buf).unwrap()
                })
            });
            grp.bench_function(BenchmarkId::new("gradw_direct", name), |b| {
                b.iter(|| conv::grad_w(&g, &x, &dy, black_box(&mut gw), &mut buf).unwrap())
            });
        }
        if d.grad_x {
            let mut wt = vec![0f32; w.len()];
            let mut dx = vec![0f32; x.len()];
            grp.bench_function(BenchmarkId::new("gradx_direct", name), |b| {
                b.iter(|| {
                    conv::flip_weights(&g, &w, &mut wt).unwrap();
                    conv::grad_x(&g, Some(&dy), &wt, black_box(&mut dx), false, &mut buf).unwrap()
                })
            });
        }
        grp.bench_function(BenchmarkId::new("fwd_im2col_ours", name), |b| {
            b.iter(|| {
                im2col(&x, &g, (oh, ow), &mut col);
                let (a, bm) = (
                    Mat::new(&col, m, k).unwrap(),
                    Mat::new(&w, k, cout).unwrap(),
                );
                ours(
                    1.0,
                    a,
                    bm,
                    0.0,
                    MatMut::new(&mut y, m, cout).unwrap(),
                    &mut scratch,
                )
                .unwrap()
            })
        });
        grp.bench_function(BenchmarkId::new("fwd_im2col_matrixmultiply", name), |b| {
            b.iter(|| {
                im2col(&x, &g, (oh, ow), &mut col);
                sgemm(m, k, cout, &col, (k, 1), &w, (cout, 1), black_box(&mut y))
            })
        });
        grp.bench_function(BenchmarkId::new("gradw_im2col_ours", name), |b| {
            b.iter(|| {
                im2col(&x, &g, (oh, ow), &mut col);
                let a = Mat::new(&col, m, k).unwrap().t();
                let dm = Mat::new(&dy, m, cout).unwrap();
                ours(
                    1.0,
                    a,
                    dm,
                    1.0,
                    MatMut::new(&mut gw, k, cout).unwrap(),
                    &mut scratch,
                )
                .unwrap()
            })
        });
        if d.grad_x {
            // The im2col path's input gradient: col = dY · Wᵀ, then col2im.
            let mut dx = vec![0f32; x.len()];
            grp.bench_function(BenchmarkId::new("gradx_col2im_ours", name), |b| {
                b.iter(|| {
                    let dm = Mat::new(&dy, m, cout).unwrap();
                    let wt = Mat::new(&w, k, cout).unwrap().t();
                    ours(
                        1.0,
                        dm,
                        wt,
                        0.0,
                        MatMut::new(&mut col, m, k).unwrap(),
                        &mut scratch,
                    )
                    .unwrap();
                    col2im(&g, &col, black_box(&mut dx));
                })
            });
        }
        grp.bench_function(BenchmarkId::new("gradw_im2col_matrixmultiply", name), |b| {
            b.iter(|| {
                im2col(&x, &g, (oh, ow), &mut col);
                sgemm(k, m, cout, &col, (1, k), &dy, (cout, 1), black_box(&mut gw))
            })
        });
    }
    grp.finish();
}

// ---------------------------------------------------------------------------------------------
// depthwise: the dense kernels on a MobileNet-like layer, and DropIT's packed-input grad_W.

fn bench_depthwise(c: &mut Criterion) {
    use dropit_simd::{depthwise, reference};
    let geom = spmm::ConvGeom {
        n: 64,
        h: 14,
        w: 14,
        cin: 96,
        cout: 96,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (1, 1),
    };
    let (ho, wo) = geom.out_hw().unwrap();
    let n = geom.input_len();
    let ylen = geom.n * ho * wo * geom.cin;
    let wlen = depthwise::weight_len(&geom);
    let x = relu_like(n, 31);
    let w = normals(wlen, 32);
    let bias = normals(geom.cin, 33);
    let dy = normals(ylen, 34);
    let (mut y, mut y_ref) = (vec![0f32; ylen], vec![0f32; ylen]);
    let mut dx = vec![0f32; n];
    let (mut gw, mut gw_dense) = (vec![0f32; wlen], vec![0f32; wlen]);
    let keep = 0.1;
    let k = select::kept_count(n, keep);
    let fmt = Format::smallest(n, k, ValueType::F32);
    let mut buf = packed_buf(fmt, n, k);
    let packed = pack_into(&x, k, fmt, &mut buf);
    let packed = packed.as_packed();
    let mut x_kept = vec![0f32; n];
    pack::unpack(&packed, &mut x_kept).unwrap();

    // Correctness, outside timing: the kernels equal the scalar reference, and the packed-input
    // gradient is the dense one of the kept input.
    depthwise::forward(&x, &geom, &w, Some(&bias), &mut y).unwrap();
    reference::depthwise_forward(&x, &geom, &w, Some(&bias), &mut y_ref).unwrap();
    assert_eq!(y, y_ref, "depthwise forward vs reference");
    spmm::depthwise_grad_w(&packed, &geom, &dy, &mut gw).unwrap();
    depthwise::grad_weight(&x_kept, &geom, &dy, &mut gw_dense).unwrap();
    assert_close("depthwise sparse grad_W", &gw, &gw_dense);

    let mut g = c.benchmark_group("depthwise");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        // Multiply-adds of the dense kernels (padding taps included).
        .throughput(Throughput::Elements((ylen * geom.kh * geom.kw) as u64));
    g.bench_function("forward", |b| {
        b.iter(|| depthwise::forward(black_box(&x), &geom, &w, Some(&bias), &mut y).unwrap())
    });
    g.bench_function("reference_forward", |b| {
        b.iter(|| {
            reference::depthwise_forward(black_box(&x), &geom, &w, Some(&bias), &mut y_ref).unwrap()
        })
    });
    g.bench_function("backward_input", |b| {
        b.iter(|| depthwise::backward_input(black_box(&dy), &geom, &w, &mut dx, false).unwrap())
    });
    g.bench_function("grad_weight", |b| {
        b.iter(|| {
            gw_dense.fill(0.0);
            depthwise::grad_weight(black_box(&x), &geom, black_box(&dy), &mut gw_dense).unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("sparse_grad_w", keep), |b| {
        b.iter(|| {
            gw.fill(0.0);
            spmm::depthwise_grad_w(black_box(&packed), &geom, black_box(&dy), &mut gw).unwrap()
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// reduce: the gradient norm's sum of squares over the mlp's 669 706 gradients, kernel vs twin.

fn bench_reduce(c: &mut Criterion) {
    use dropit_simd::{reduce, reference};
    let g = normals(669_706, 41);
    assert_eq!(
        reduce::sum_of_squares(&g).to_bits(),
        reference::sum_of_squares(&g).to_bits(),
        "sum of squares vs reference"
    );
    let mut grp = c.benchmark_group("reduce");
    grp.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(g.len() as u64));
    grp.bench_function("sum_of_squares", |b| {
        b.iter(|| reduce::sum_of_squares(black_box(&g)))
    });
    grp.bench_function("reference_sum_of_squares", |b| {
        b.iter(|| reference::sum_of_squares(black_box(&g)))
    });
    grp.finish();
}

// ---------------------------------------------------------------------------------------------
// norm: batch norm over one worker's share of the cnn's first block (32 samples × 28×28 pixels,
// 32 channels) and layer norm over the vit's 64 × 65 tokens of 192 channels, x̂ as f32, bf16
// and 8-bit codes.

fn bench_norm(c: &mut Criterion) {
    use dropit_simd::norm::{self, Affine, Back, Xhat};
    use half::bf16;
    let (ch, rows) = (32, 32 * 28 * 28);
    let x = normals(rows * ch, 51);
    let dy = normals(rows * ch, 52);
    let k = normals(4 * ch, 53);
    let inv_scale: Vec<f32> = k[..ch].iter().map(|v| v.abs() * 20.0 + 1.0).collect();
    let aff = Affine {
        mean: &k[..ch],
        inv: &k[ch..2 * ch],
        gamma: &k[2 * ch..3 * ch],
        beta: &k[3 * ch..],
        inv_scale: Some(&inv_scale),
    };
    let back = Back {
        k: &k[..ch],
        dbeta: &k[ch..2 * ch],
        dgamma: &k[2 * ch..3 * ch],
        m: rows as f32,
    };
    let mut y = vec![0.0f32; x.len()];
    let mut grp = c.benchmark_group("norm");
    grp.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(x.len() as u64));
    let (mut acc, mut lo, mut hi) = (vec![0.0f64; ch], vec![0.0f64; ch], vec![0.0f64; ch]);
    grp.bench_function("bn_channel_sums", |b| {
        b.iter(|| norm::channel_sums(black_box(&x), ch, None, &mut acc).unwrap())
    });
    grp.bench_function("bn_channel_sums_extremes", |b| {
        b.iter(|| {
            norm::channel_sums_extremes(black_box(&x), ch, &mut acc, &mut lo, &mut hi).unwrap()
        })
    });
    fn forms<H: Xhat + Default>(
        grp: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        (x, dy, y): (&[f32], &[f32], &mut [f32]),
        ch: usize,
        (aff, back): (Affine<'_>, Back<'_>),
    ) {
        let mut h = vec![H::default(); x.len()];
        grp.bench_function(BenchmarkId::new("bn_normalize", name), |b| {
            b.iter(|| norm::normalize(Some(black_box(x)), y, &mut h, ch, aff).unwrap())
        });
        let (mut db, mut dg) = (vec![0.0f64; ch], vec![0.0f64; ch]);
        grp.bench_function(BenchmarkId::new("bn_grad_sums", name), |b| {
            b.iter(|| norm::grad_sums(black_box(dy), &h, ch, &mut db, &mut dg).unwrap())
        });
        grp.bench_function(BenchmarkId::new("bn_grad_x", name), |b| {
            b.iter(|| norm::grad_x(Some(black_box(dy)), y, &h, ch, back, false).unwrap())
        });
        let (c, n) = (192, 64 * 65);
        let (x, dy) = (&x[..n * c], &dy[..n * c]);
        let (g, beta) = (&aff.inv[..1], &aff.mean[..1]);
        let (gamma, betas): (Vec<f32>, Vec<f32>) = (vec![g[0]; c], vec![beta[0]; c]);
        let mut hl = vec![H::default(); n * c];
        grp.bench_function(BenchmarkId::new("ln_normalize_rows", name), |b| {
            b.iter(|| {
                for ((xr, yr), hr) in x.chunks(c).zip(y.chunks_mut(c)).zip(hl.chunks_mut(c)) {
                    let s = norm::abs_max(xr, 0.1, 1.3);
                    let ms = (0.1, 1.3, 127.0 / s);
                    norm::normalize_row(Some(xr), yr, hr, ms, &gamma, &betas).unwrap();
                }
            })
        });
        let (inv, scale) = (vec![1.3f32; n], vec![0.02f32; n]);
        let (mut dgl, mut dbl) = (vec![0.0f64; c], vec![0.0f64; c]);
        grp.bench_function(BenchmarkId::new("ln_backward", name), |b| {
            b.iter(|| {
                let rows = (&inv[..], Some(&scale[..]));
                let dx = Some(&mut y[..n * c]);
                norm::ln_backward(
                    black_box(dy),
                    &hl,
                    &gamma,
                    rows,
                    &mut dgl,
                    &mut dbl,
                    dx,
                    false,
                )
                .unwrap()
            })
        });
    }
    let args = (&x[..], &dy[..], &mut y[..]);
    forms::<f32>(&mut grp, "f32", args, ch, (aff, back));
    let args = (&x[..], &dy[..], &mut y[..]);
    forms::<bf16>(&mut grp, "bf16", args, ch, (aff, back));
    let args = (&x[..], &dy[..], &mut y[..]);
    forms::<i8>(&mut grp, "i8", args, ch, (aff, back));
    grp.finish();
}

criterion_group!(
    benches,
    bench_reduce,
    bench_norm,
    bench_topk,
    bench_pack,
    bench_spmm_linear,
    bench_spmm_conv,
    bench_gemm,
    bench_conv,
    bench_depthwise
);
criterion_main!(benches);
