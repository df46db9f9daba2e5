//! The CIFAR-10 reader on arbitrary bytes: `read_cifar10` must return without panicking or
//! aborting; what parses is consistent (one label below 10 and 3072 channels-last bytes per
//! record, the first pixel's channels taken from the three planes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = dropit::data::read_cifar10(data) {
        assert_eq!(d.len() * 3073, data.len());
        assert_eq!(d.images.len(), d.len() * 3072);
        assert!(d.labels.iter().all(|&l| l < 10));
        assert!(d.check().is_ok());
        assert_eq!(&d.images[..3], &[data[1], data[1 + 1024], data[1 + 2048]]);
    }
});
