//! Packed DropIT buffers from arbitrary bytes feeding the sparse kernels. The input's first
//! bytes choose the format, `n`, `k` and a geometry; the rest is the packed buffer. Viewing it,
//! unpacking it and every sparse weight gradient (Linear, Conv2d, depthwise) must return without
//! panicking; the kernels refuse exactly the buffers `unpack` refuses, and what they accept
//! gives the dense weight gradient of the unpacked tensor.
#![no_main]

use dropit::kernels::format::{Format, Packed};
use dropit::kernels::spmm::{ConvGeom, conv2d_grad_w, depthwise_grad_w, linear_grad_w};
use dropit::kernels::{depthwise, pack::unpack};
use dropit::{PosForm, ValueType};
use libfuzzer_sys::fuzz_target;

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| !(x.is_finite() && y.is_finite()) || (x - y).abs() <= 1e-3 * (1.0 + y.abs()))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (head, body) = data.split_at(10);
    let values = [ValueType::F32, ValueType::Bf16, ValueType::F16][head[0] as usize % 3];
    let positions = [PosForm::Bitmap, PosForm::Block16, PosForm::U32][head[0] as usize / 3 % 3];
    let fmt = Format::new(values, positions);
    // Up to 2^17 elements (two Block16 blocks); k anything up to 2^24.
    let n = u32::from_le_bytes([head[1], head[2], head[3] & 1, 0]) as usize;
    let k = u32::from_le_bytes([head[4], head[5], head[6], 0]) as usize;
    // The buffer as given (length checks), then padded or cut to the format's size.
    let mut words = vec![0u64; body.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..body.len()].copy_from_slice(body);
    let _ = Packed::from_bytes(
        fmt,
        n,
        k,
        &bytemuck::cast_slice::<u64, u8>(&words)[..body.len()],
    );
    let need = fmt.bytes(n, k.min(n));
    words.resize(need.div_ceil(8), 0);
    let buf = &bytemuck::cast_slice::<u64, u8>(&words)[..need];
    let Ok(p) = Packed::from_bytes(fmt, n, k, buf) else {
        assert!(k > n, "a buffer of the format's size must view");
        return;
    };
    let mut x = vec![0f32; n];
    let valid = unpack(&p, &mut x).is_ok();

    // Linear: rows × inp = n.
    let inp = 1 + head[7] as usize % 8;
    if n.is_multiple_of(inp) {
        let (rows, out) = (n / inp, 3);
        let dy: Vec<f32> = (0..rows * out).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut gwt = vec![0f32; inp * out];
        let r = linear_grad_w(&p, rows, inp, &dy, out, &mut gwt);
        assert_eq!(r.is_ok(), valid, "linear: {r:?}");
        if valid {
            let mut want = vec![0f32; inp * out];
            for r in 0..rows {
                for i in 0..inp {
                    for o in 0..out {
                        want[i * out + o] += x[r * inp + i] * dy[r * out + o];
                    }
                }
            }
            assert!(close(&gwt, &want), "linear grad_W differs from dense");
        }
    }

    // Convolutions: [b, h, h, c] = n with a small kernel.
    let (c, h) = (1 + head[8] as usize % 3, 1 + head[9] as usize % 8);
    if n > 0 && n.is_multiple_of(h * h * c) {
        let (kk, s, pad) = (
            1 + head[8] as usize / 3 % 3,
            1 + head[9] as usize / 8 % 2,
            head[9] as usize / 16 % 2,
        );
        let g = ConvGeom {
            n: n / (h * h * c),
            h,
            w: h,
            cin: c,
            cout: c,
            kh: kk,
            kw: kk,
            stride: (s, s),
            pad: (pad, pad),
        };
        if let Ok((ho, wo)) = g.out_hw() {
            let dy: Vec<f32> = (0..g.n * ho * wo * c)
                .map(|i| (i % 7) as f32 * 0.5 - 1.5)
                .collect();
            let mut gw = vec![0f32; kk * kk * c * c];
            let r = conv2d_grad_w(&p, &g, &dy, &mut gw);
            assert_eq!(r.is_ok(), valid, "conv: {r:?}");
            let mut gd = vec![0f32; depthwise::weight_len(&g)];
            let r = depthwise_grad_w(&p, &g, &dy, &mut gd);
            assert_eq!(r.is_ok(), valid, "depthwise: {r:?}");
        }
    }
});
