//! Pack / unpack against the scalar twin, in every format.
mod common;

use common::{Buf, FORMATS, normals, round_to};
use dropit_simd::Error;
use dropit_simd::format::{BLOCK16, Format, Packed, PosForm, ValueType};
use dropit_simd::pack::{pack, pack_blocks, select_and_pack, unpack};
use dropit_simd::reference;
use dropit_simd::select::{Threshold, kept_count, topk_blocks, topk_threshold};
use proptest::prelude::*;

/// Packs `x` (tensor-wide, k kept) with the kernel and the twin in `fmt`; checks the bytes are
/// identical and the round trip is exact up to the value type's rounding.
fn check(x: &[f32], k: usize, fmt: Format) {
    let t = topk_threshold(x, k).unwrap();
    let mut a = Buf::new(fmt, x.len(), k);
    let mut b = Buf::new(fmt, x.len(), k);
    pack(x, &t, &mut a.packed_mut()).unwrap();
    let blocks = if x.is_empty() { 0 } else { 1 };
    reference::pack_blocks(x, x.len().max(1), &[t][..blocks], &mut b.packed_mut()).unwrap();
    assert_eq!(
        a.bytes(),
        b.bytes(),
        "{fmt:?}: packed bytes differ from the twin"
    );

    let mut flags = vec![false; x.len()];
    reference::keep_flags(x, &t, &mut flags).unwrap();
    let mut dense = vec![f32::NAN; x.len()];
    unpack(&a.packed(), &mut dense).unwrap();
    let mut twin = vec![f32::NAN; x.len()];
    reference::unpack(&a.packed(), &mut twin).unwrap();
    for i in 0..x.len() {
        let want = if flags[i] { round_to(fmt, x[i]) } else { 0.0 };
        assert_eq!(dense[i].to_bits(), want.to_bits(), "{fmt:?} element {i}");
        assert_eq!(
            twin[i].to_bits(),
            want.to_bits(),
            "{fmt:?} twin element {i}"
        );
    }
}

fn values() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -50.0f32..50.0,
        1 => prop::sample::select(vec![0.0f32, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, 1e-40, 70000.0]),
    ]
}

proptest! {
    #[test]
    fn every_format_matches_twin(x in prop::collection::vec(values(), 0..400), kf in 0.0f64..=1.0) {
        let k = (x.len() as f64 * kf) as usize;
        for fmt in FORMATS {
            check(&x, k, fmt);
        }
    }

    #[test]
    fn per_block_matches_twin(x in prop::collection::vec(values(), 1..400), block in 1usize..100, keep in 0.0f32..=1.0) {
        let mut t = vec![Threshold::NONE; x.len().div_ceil(block)];
        topk_blocks(&x, block, keep, &mut t).unwrap();
        let k = t.iter().map(Threshold::kept).sum();
        for fmt in FORMATS {
            let mut a = Buf::new(fmt, x.len(), k);
            let mut b = Buf::new(fmt, x.len(), k);
            pack_blocks(&x, block, &t, &mut a.packed_mut()).unwrap();
            reference::pack_blocks(&x, block, &t, &mut b.packed_mut()).unwrap();
            prop_assert_eq!(a.bytes(), b.bytes());
            let mut c = Buf::new(fmt, x.len(), k);
            select_and_pack(&x, block, keep, &mut c.packed_mut()).unwrap();
            prop_assert_eq!(a.bytes(), c.bytes());
        }
    }
}

#[test]
fn edge_cases() {
    for fmt in FORMATS {
        check(&[], 0, fmt);
        check(&[1.0], 0, fmt);
        check(&[-1.0], 1, fmt);
        check(&[0.0; 33], 5, fmt);
        check(&[-0.0; 33], 33, fmt);
        check(
            &[
                f32::NAN,
                1.0,
                f32::INFINITY,
                -0.0,
                1e-40,
                -1e-44,
                3.0,
                2.0,
                1.0,
            ],
            4,
            fmt,
        );
        for n in [7, 8, 9, 63, 64, 65, 129] {
            let x = normals(n, 3);
            for k in [0, 1, n / 2, n] {
                check(&x, k, fmt);
            }
        }
    }
}

#[test]
fn nan_survives_packing() {
    for fmt in FORMATS {
        let x = [1.0, f32::NAN, 2.0];
        let t = topk_threshold(&x, 1).unwrap();
        let mut a = Buf::new(fmt, 3, 1);
        pack(&x, &t, &mut a.packed_mut()).unwrap();
        let mut d = [0.0; 3];
        unpack(&a.packed(), &mut d).unwrap();
        assert!(
            d[1].is_nan() && d[0] == 0.0 && d[2] == 0.0,
            "{fmt:?}: {d:?}"
        );
    }
}

#[test]
fn half_precision_rounds_to_nearest_even() {
    // 1 + 2^-8 is halfway between two bf16 values: ties to even gives 1.0; 1 + 3·2^-8 gives 1 + 2^-6.
    let x = [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 70000.0];
    let mut a = Buf::new(Format::new(ValueType::Bf16, PosForm::U32), 3, 3);
    pack(&x, &Threshold::all(3), &mut a.packed_mut()).unwrap();
    let mut d = [0.0; 3];
    unpack(&a.packed(), &mut d).unwrap();
    assert_eq!(d[0], 1.0);
    assert_eq!(d[1], 1.0 + 4.0 / 256.0);
    let mut h = Buf::new(Format::new(ValueType::F16, PosForm::U32), 3, 3);
    pack(&x, &Threshold::all(3), &mut h.packed_mut()).unwrap();
    unpack(&h.packed(), &mut d).unwrap();
    assert_eq!(d[2], f32::INFINITY, "f16 overflows to inf above 65504");
}

#[test]
fn blocks_of_exactly_65536() {
    let n = 2 * BLOCK16 + 5;
    let x = normals(n, 9);
    for k in [1, kept_count(n, 0.1), BLOCK16, n] {
        check(&x, k, Format::new(ValueType::F32, PosForm::Block16));
        check(&x, k, Format::new(ValueType::Bf16, PosForm::Bitmap));
    }
    check(
        &normals(BLOCK16, 1),
        1000,
        Format::new(ValueType::F16, PosForm::Block16),
    );
}

#[test]
fn sizes_are_known_before_data() {
    let fmt = Format::new(ValueType::Bf16, PosForm::Bitmap);
    assert_eq!(fmt.bytes(1 << 20, 1 << 17), (1 << 17) + 2 * (1 << 17));
    assert_eq!(
        Format::new(ValueType::F32, PosForm::U32).bytes(100, 10),
        40 + 40
    );
    assert_eq!(
        Format::new(ValueType::F16, PosForm::Block16).bytes(BLOCK16 + 1, 3),
        8 + 8 + 8
    );
    for (n, k) in [
        (0, 0),
        (1000, 10),
        (1000, 100),
        (1 << 20, 1 << 10),
        (1 << 20, 1 << 18),
    ] {
        for v in [ValueType::F32, ValueType::Bf16, ValueType::F16] {
            let best = Format::smallest(n, k, v);
            assert_eq!(best.values, v);
            for f in FORMATS.iter().filter(|f| f.values == v) {
                assert!(best.bytes(n, k) <= f.bytes(n, k));
            }
        }
    }
    assert_eq!(
        Format::smallest(1 << 20, 1 << 17, ValueType::Bf16).positions,
        PosForm::Bitmap
    );
    assert_eq!(
        Format::smallest(1 << 20, 100, ValueType::Bf16).positions,
        PosForm::Block16
    );
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let x = normals(100, 1);
    let fmt = Format::new(ValueType::F32, PosForm::U32);
    // Wrong k for the threshold.
    let t = topk_threshold(&x, 10).unwrap();
    let mut b = Buf::new(fmt, 100, 9);
    assert!(matches!(
        pack(&x, &t, &mut b.packed_mut()),
        Err(Error::Length { .. })
    ));
    // A threshold computed on other data keeps a different number of elements.
    let louder: Vec<f32> = x.iter().map(|v| v * 10.0).collect();
    let mut b = Buf::new(fmt, 100, 10);
    assert!(matches!(
        pack(&louder, &t, &mut b.packed_mut()),
        Err(Error::Invalid { .. })
    ));
    let quieter: Vec<f32> = x.iter().map(|v| v * 0.1).collect();
    assert!(matches!(
        pack(&quieter, &t, &mut b.packed_mut()),
        Err(Error::Length { .. })
    ));
    // Wrong buffer sizes and alignment.
    let mut words = vec![0u64; 20];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    assert!(matches!(
        Packed::from_bytes(fmt, 100, 10, &bytes[..79]),
        Err(Error::Length { .. })
    ));
    assert_eq!(
        Packed::from_bytes(fmt, 100, 10, &bytes[1..81]).err(),
        Some(Error::Misaligned)
    );
    assert!(matches!(
        Packed::from_bytes(fmt, 5, 10, &bytes[..80]),
        Err(Error::KTooLarge { .. })
    ));
    // Corrupt positions: an index out of range, and a bitmap whose count differs from k.
    let mut b = Buf::new(fmt, 100, 10);
    pack(&x, &t, &mut b.packed_mut()).unwrap();
    if let dropit_simd::format::PositionsMut::U32(i) = b.packed_mut().positions {
        i[3] = 100;
    }
    let mut d = vec![0.0; 100];
    assert!(unpack(&b.packed(), &mut d).is_err());
    let bm = Format::new(ValueType::F32, PosForm::Bitmap);
    let mut b = Buf::new(bm, 100, 10);
    pack(&x, &t, &mut b.packed_mut()).unwrap();
    if let dropit_simd::format::PositionsMut::Bitmap(w) = b.packed_mut().positions {
        w[1] |= 1 << 40; // bit 104 lies past n = 100
    }
    assert!(unpack(&b.packed(), &mut d).is_err());
    assert!(matches!(
        unpack(&Buf::new(bm, 100, 0).packed(), &mut d[..5]),
        Err(Error::Length { .. })
    ));
    // Block16 offsets that repeat or fall back inside a block, which the sparse kernels would
    // index out of range with.
    let b16 = Format::new(ValueType::F32, PosForm::Block16);
    for spoil in [|o: &mut [u16]| o[4] = o[3], |o: &mut [u16]| o.swap(2, 3)] {
        let mut b = Buf::new(b16, 100, 10);
        pack(&x, &t, &mut b.packed_mut()).unwrap();
        if let dropit_simd::format::PositionsMut::Block16 { offsets, .. } = b.packed_mut().positions
        {
            spoil(offsets);
        }
        assert!(unpack(&b.packed(), &mut d).is_err());
        let mut gw = vec![0.0; 10 * 3];
        let dy = vec![1.0; 10 * 3];
        assert!(dropit_simd::spmm::linear_grad_w(&b.packed(), 10, 10, &dy, 3, &mut gw).is_err());
    }
}

/// Packs `x` under its top-k threshold split into parts of `chunk` (counted, split, packed in
/// reverse order) and checks the bytes equal one `pack` and the scalar twin.
fn check_parts(x: &[f32], k: usize, fmt: Format, chunk: usize) {
    use dropit_simd::pack::{PackPart, chunk_counts, pack_part, split_parts};
    let t = topk_threshold(x, k).unwrap();
    let mut a = Buf::new(fmt, x.len(), k);
    let mut b = Buf::new(fmt, x.len(), k);
    pack(x, &t, &mut a.packed_mut()).unwrap();
    let counts: Vec<(usize, usize)> = x.chunks(chunk).map(|c| chunk_counts(c, &t)).collect();
    let mut parts: Vec<Option<PackPart<'_>>> = (0..counts.len() + 2).map(|_| None).collect();
    let mut out = b.packed_mut();
    split_parts(&t, chunk, &counts, &mut out, &mut parts).unwrap();
    assert!(parts[counts.len()..].iter().all(Option::is_none));
    for p in parts.into_iter().flatten().rev() {
        let (s, l) = (p.start(), p.len());
        pack_part(&x[s..s + l], p).unwrap();
    }
    assert_eq!(
        a.bytes(),
        b.bytes(),
        "{fmt:?} chunk {chunk}: parts differ from one pack"
    );
    let mut c = Buf::new(fmt, x.len(), k);
    let blocks = if x.is_empty() { 0 } else { 1 };
    reference::pack_blocks(x, x.len().max(1), &[t][..blocks], &mut c.packed_mut()).unwrap();
    assert_eq!(
        b.bytes(),
        c.bytes(),
        "{fmt:?} chunk {chunk}: parts differ from the twin"
    );
}

fn part_chunk(fmt: Format, units: usize) -> usize {
    units
        * match fmt.positions {
            PosForm::Bitmap => 64,
            PosForm::Block16 => BLOCK16,
            PosForm::U32 => 1,
        }
}

proptest! {
    #[test]
    fn parts_match_one_pack(x in prop::collection::vec(values(), 1..1200), kf in 0.0f64..=1.0, units in 1usize..9) {
        let k = (x.len() as f64 * kf) as usize;
        for fmt in FORMATS {
            check_parts(&x, k, fmt, part_chunk(fmt, units));
        }
    }
}

#[test]
fn parts_split_ties_across_chunk_borders() {
    // One tie class across every chunk, NaN and zeros, sizes past a Block16 block.
    let n = 2 * BLOCK16 + 1000;
    let mut x = normals(n, 17);
    x[1000..BLOCK16 + 5000].fill(-1.25);
    x[70_000] = f32::NAN;
    x[n - 10..].fill(0.0);
    for k in [0, 1, 3000, 40_000, n - 1, n] {
        for fmt in FORMATS {
            for units in [1, 2, 5] {
                let chunk = part_chunk(fmt, units).min(n);
                let chunk = if fmt.positions == PosForm::U32 {
                    777 * units
                } else {
                    chunk
                };
                check_parts(&x, k, fmt, chunk);
            }
        }
    }
}

#[test]
fn parts_refuse_misaligned_chunks_and_wrong_counts() {
    use dropit_simd::pack::{PackPart, split_parts};
    let x = normals(256, 1);
    let t = topk_threshold(&x, 30).unwrap();
    let fmt = Format::new(ValueType::F32, PosForm::Bitmap);
    let mut b = Buf::new(fmt, x.len(), 30);
    let mut out = b.packed_mut();
    {
        let mut parts: Vec<Option<PackPart<'_>>> = (0..8).map(|_| None).collect();
        assert!(split_parts(&t, 100, &[(0, 0); 3], &mut out, &mut parts).is_err());
    }
    // Counts that do not add up to k.
    let mut parts: Vec<Option<PackPart<'_>>> = (0..8).map(|_| None).collect();
    assert!(split_parts(&t, 64, &[(1, 0); 4], &mut out, &mut parts).is_err());
}
