//! Dataset readers: valid files read back exactly; truncated or corrupt ones are errors that
//! name the problem, never panics.
use std::io::Write;
use std::path::PathBuf;

use dropit::data::{Batcher, fashion_mnist, idx_pair, read_cifar10, read_idx};
use dropit::{Error, Shape};

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_reads_raw_and_gzip_and_refuses_corruption() {
    let data: Vec<u8> = (0..24).collect();
    let raw = idx(&[2, 3, 4], &data);
    for bytes in [raw.clone(), gzip(&raw)] {
        let a = read_idx(&bytes).unwrap();
        assert_eq!((a.dims, a.data), (vec![2, 3, 4], data.clone()));
    }
    let truncated = &raw[..raw.len() - 1];
    assert!(
        read_idx(truncated)
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    assert!(
        read_idx(&gzip(truncated))
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    let mut long = raw.clone();
    long.push(7);
    assert!(
        read_idx(&long)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
    assert!(
        read_idx(&[1, 0, 8, 1])
            .unwrap_err()
            .to_string()
            .contains("magic")
    );
    assert!(
        read_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0])
            .unwrap_err()
            .to_string()
            .contains("type")
    );
    assert!(
        read_idx(&[0, 0, 8, 3, 0, 0])
            .unwrap_err()
            .to_string()
            .contains("header")
    );
    assert!(
        read_idx(&idx(&[u32::MAX, u32::MAX, u32::MAX], &[]))
            .unwrap_err()
            .to_string()
            .contains("too large")
    );
    let mut bad_gz = gzip(&raw);
    let mid = bad_gz.len() / 2;
    bad_gz.truncate(mid);
    assert!(read_idx(&bad_gz).is_err());
    assert!(read_idx(&[]).is_err());
}

#[test]
fn idx_pairs_check_counts_and_labels() {
    let dir = std::env::temp_dir().join(format!("dropit-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let im = write("im", idx(&[3, 2, 2], &[0; 12]));
    let ok = write("ok", idx(&[3], &[0, 9, 4]));
    let d = idx_pair(&im, &ok, 10).unwrap();
    assert_eq!(
        (d.len(), d.shape, d.labels.clone()),
        (3, Shape::new(2, 2, 1), vec![0, 9, 4])
    );
    let short = write("short", idx(&[2], &[0, 1]));
    assert!(matches!(idx_pair(&im, &short, 10), Err(Error::Data { .. })));
    let big = write("big", idx(&[3], &[0, 10, 1]));
    let e = idx_pair(&im, &big, 10).unwrap_err();
    assert!(e.to_string().contains("label 10"), "{e}");
    let e = idx_pair(&dir.join("missing"), &ok, 10).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cifar_records_become_channels_last() {
    let mut rec = vec![7u8];
    rec.extend((0..3072).map(|i| (i / 1024) as u8 * 100 + (i % 2) as u8));
    let d = read_cifar10(&rec).unwrap();
    assert_eq!(
        (d.len(), d.labels[0], d.shape),
        (1, 7, Shape::new(32, 32, 3))
    );
    assert_eq!(&d.images[..6], &[0, 100, 200, 1, 101, 201]);
    assert!(read_cifar10(&rec[..3000]).is_err());
    rec[0] = 10;
    assert!(
        read_cifar10(&rec)
            .unwrap_err()
            .to_string()
            .contains("label 10")
    );
}

#[test]
fn bundled_subset_and_batcher() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fashion-mnist-subset"
    ));
    let (train, test) = fashion_mnist(&dir).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.shape),
        (10_000, 2_000, Shape::new(28, 28, 1))
    );
    let counts = (0..10).map(|c| train.labels.iter().filter(|&&l| l == c).count());
    assert!(
        counts.clone().all(|n| (900..1100).contains(&n)),
        "{:?}",
        counts.collect::<Vec<_>>()
    );

    let small = train.take(100);
    let order = |seed| {
        let mut b = Batcher::new(&small, 32, &[0.2860], &[0.3530], seed).unwrap();
        let mut seen = Vec::new();
        for _ in 0..b.batches_per_epoch() {
            seen.extend_from_slice(b.next_batch().1);
        }
        (seen, b.next_batch().0.to_vec())
    };
    let (a, xa) = order(1);
    assert_eq!(order(1), (a.clone(), xa), "same seed, same order");
    assert_ne!(order(2).0, a, "another seed, another order");
    let mut sorted = a.clone();
    sorted.sort();
    let mut want = small.labels.clone();
    want.sort();
    assert_eq!(sorted, want, "an epoch sees every sample once");
    // Normalization: pixel 0 maps to −mean/std.
    let mut b = Batcher::new(&small, 4, &[0.5], &[0.25], 0).unwrap();
    let (x, _) = b.next_batch();
    let min = x.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!((min + 2.0).abs() < 1e-6, "{min}");
    assert!(Batcher::new(&small, 4, &[0.5, 0.1], &[0.25], 0).is_err());
    assert!(Batcher::new(&small, 0, &[0.5], &[0.25], 0).is_err());
}
