//! Bounded random bytes into every parser of untrusted input — the IDX reader (raw and gzip),
//! the CIFAR-10 reader, packed DropIT buffers into the sparse kernels — in the normal suite: an
//! `Err` or a consistent result, never a panic. (The cargo-fuzz targets in `fuzz/` run the same
//! checks for minutes.)
use std::io::Write;

use dropit::kernels::format::{Format, Packed};
use dropit::kernels::pack::unpack;
use dropit::kernels::spmm::{ConvGeom, conv2d_grad_w, depthwise_grad_w, linear_grad_w};
use dropit::{PosForm, ValueType};
use proptest::prelude::*;

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(b).unwrap();
    z.finish().unwrap()
}

/// An IDX header followed by `body`, with dimensions near the body's length so that the
/// random cases reach the length checks (and sometimes pass them).
fn idx_like() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..4,
        0u8..3,
        prop::collection::vec(0u32..6, 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(ty, magic, dims, body)| {
            let mut v = vec![
                if magic == 0 { 1 } else { 0 },
                0,
                [8, 8, 8, 9][ty as usize],
                dims.len() as u8,
            ];
            dims.iter()
                .for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
            v.extend(body);
            v
        })
}

/// Packed buffers: a format, `n`, `k` and raw bytes of exactly the format's size.
fn packed_case() -> impl Strategy<Value = (Format, usize, usize, Vec<u8>)> {
    (0usize..9, 0usize..200, 0usize..220).prop_flat_map(|(f, n, k)| {
        let fmt = Format::new(
            [ValueType::F32, ValueType::Bf16, ValueType::F16][f % 3],
            [PosForm::Bitmap, PosForm::Block16, PosForm::U32][f / 3],
        );
        let len = fmt.bytes(n, k.min(n));
        (
            Just(fmt),
            Just(n),
            Just(k),
            prop::collection::vec(any::<u8>(), len..=len),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn idx_bytes_never_panic(raw in idx_like(), noise in prop::collection::vec(any::<u8>(), 0..48)) {
        for b in [&raw, &noise, &gzip(&raw), &gzip(&noise)] {
            if let Ok(idx) = dropit::data::read_idx(b) {
                prop_assert_eq!(idx.dims.iter().product::<usize>(), idx.data.len());
            }
        }
    }

    #[test]
    fn cifar_bytes_never_panic(len in 0usize..3 * 3073, byte in any::<u8>(), label in 0u8..12) {
        let mut b: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
        if len >= 3073 {
            b[3073 * (len / 3073 - 1)] = label;
        }
        match dropit::data::read_cifar10(&b) {
            Ok(d) => {
                prop_assert_eq!(d.len() * 3073, b.len());
                prop_assert!(d.check().is_ok());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn packed_bytes_never_panic_the_kernels((fmt, n, k, bytes) in packed_case(), geo in any::<[u8; 3]>()) {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        let buf = &bytemuck::cast_slice::<u64, u8>(&words)[..bytes.len()];
        let Ok(p) = Packed::from_bytes(fmt, n, k, buf) else {
            prop_assert!(k > n);
            return Ok(());
        };
        let mut x = vec![0f32; n];
        let valid = unpack(&p, &mut x).is_ok();
        let inp = 1 + geo[0] as usize % 6;
        if n.is_multiple_of(inp) {
            let (rows, out) = (n / inp, 2);
            let dy = vec![0.5f32; rows * out];
            let mut g = vec![0f32; inp * out];
            prop_assert_eq!(linear_grad_w(&p, rows, inp, &dy, out, &mut g).is_ok(), valid);
        }
        let (c, h) = (1 + geo[1] as usize % 3, 1 + geo[2] as usize % 5);
        if n > 0 && n.is_multiple_of(h * h * c) {
            let g = ConvGeom { n: n / (h * h * c), h, w: h, cin: c, cout: c, kh: 1, kw: 1, stride: (1, 1), pad: (0, 0) };
            let dy = vec![0.5f32; n];
            let mut gw = vec![0f32; c * c];
            prop_assert_eq!(conv2d_grad_w(&p, &g, &dy, &mut gw).is_ok(), valid);
            let mut gd = vec![0f32; c];
            prop_assert_eq!(depthwise_grad_w(&p, &g, &dy, &mut gd).is_ok(), valid);
        }
    }
}
