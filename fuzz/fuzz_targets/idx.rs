//! The IDX reader on arbitrary bytes, raw and gzip-wrapped: `read_idx` must return without
//! panicking, aborting, hanging or holding more than the stream justifies. The first byte picks
//! the form (odd: the rest is gzip-compressed first, so mutations reach the header and body
//! checks behind a valid deflate stream). What parses must agree with its header.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 1 {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(rest).unwrap();
        z.finish().unwrap()
    } else {
        rest.to_vec()
    };
    if let Ok(idx) = dropit::data::read_idx(&bytes) {
        assert!(!idx.dims.is_empty());
        assert_eq!(idx.dims.iter().product::<usize>(), idx.data.len());
    }
});
