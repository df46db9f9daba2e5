//! Packing on the GPU into the CPU's formats, byte for byte (bitmap or u32 positions; f32 or
//! bf16 values), and back to dense.

use std::format;
use std::vec::Vec;

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use dropit_simd::format::{Format, Packed, PosForm, ValueType};

use super::{Gpu, GpuThreshold, gpu_err, launched, per_item};
use crate::error::{Error, Result};

/// A packed tensor on the device: the bytes of the CPU's packed buffer for this format
/// ([`Format::bytes`]`(n, k)` of them), so that either side unpacks what the other packed.
/// Made only by [`Gpu::pack`] or from checked bytes ([`GpuPacked::from_host`]), so that the
/// kernels that read it stay inside its buffers.
#[derive(Debug)]
pub struct GpuPacked {
    pub(super) format: Format,
    pub(super) n: usize,
    pub(super) k: usize,
    /// At least one byte (an empty tensor's device buffer is one byte).
    pub(super) bytes: CudaSlice<u8>,
}

/// The kernels' code for a value type (f32 0, bf16 1); f16 has no GPU kernels yet.
fn value_form(v: ValueType) -> Result<i32> {
    match v {
        ValueType::F32 => Ok(0),
        ValueType::Bf16 => Ok(1),
        ValueType::F16 => Err(Error::Gpu("f16 values are not packed on the GPU".into())),
    }
}

/// The kernels' value code of a format with bitmap or u32 positions (the ones the GPU packs).
pub(super) fn value_code(f: Format) -> Result<i32> {
    check_format(f)
}

/// Bitmap or u32 positions only.
fn check_format(f: Format) -> Result<i32> {
    match f.positions {
        PosForm::Bitmap | PosForm::U32 => value_form(f.values),
        PosForm::Block16 => Err(Error::Gpu(
            "Block16 positions are not packed on the GPU".into(),
        )),
    }
}

/// One block of 1024 threads (`scan_exclusive`).
const ONE_BLOCK: LaunchConfig = LaunchConfig {
    grid_dim: (1, 1, 1),
    block_dim: (1024, 1, 1),
    shared_mem_bytes: 0,
};

impl GpuPacked {
    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Elements of the dense tensor.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the dense tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Kept elements.
    pub fn kept(&self) -> usize {
        self.k
    }

    /// The packed bytes on the host: the CPU's buffer for the same tensor, threshold and format.
    pub fn to_host(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        let mut v = gpu.download(&self.bytes)?;
        v.truncate(self.format.bytes(self.n, self.k));
        Ok(v)
    }

    /// A buffer the CPU packed (or read from anywhere), checked as the CPU checks it — its
    /// length, positions in range and in order, as many as `k` — then copied to the device.
    pub fn from_host(gpu: &Gpu, format: Format, n: usize, k: usize, bytes: &[u8]) -> Result<Self> {
        check_format(format)?;
        let p = Packed::from_bytes(format, n, k, bytes)?;
        let mut seen = 0usize;
        dropit_simd::pack::for_each_kept(&p, |_, _| seen += 1)?;
        if seen != k {
            return Err(Error::Gpu(format!(
                "packed tensor: {seen} kept positions, {k} declared"
            )));
        }
        Ok(GpuPacked {
            format,
            n,
            k,
            bytes: gpu.upload(&bytes[..format.bytes(n, k)])?,
        })
    }
}

impl Gpu {
    /// Exclusive prefix sums of `counts` (one block).
    fn scan(&self, counts: &CudaSlice<u32>, len: usize) -> Result<CudaSlice<u64>> {
        let mut out = self.zeros::<u64>(len)?;
        let f = self.kernel("scan_exclusive")?;
        let len64 = len as u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(counts).arg(&mut out).arg(&len64);
        // SAFETY: counts and out hold at least `len` entries; the one block reads counts[..len]
        // and writes out[..len].
        launched("scan_exclusive", unsafe { b.launch(ONE_BLOCK) }.map(|_| ()))?;
        Ok(out)
    }

    /// The last entry of a device array.
    fn last<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        v: &CudaSlice<T>,
        len: usize,
    ) -> Result<T> {
        let tail: CudaView<'_, T> = v.slice(len - 1..len);
        let mut one = [T::default()];
        self.stream
            .memcpy_dtoh(&tail, &mut one)
            .map_err(gpu_err("copying from the device"))?;
        Ok(one[0].clone())
    }

    /// Packs the elements of `x` that `t` keeps into `format` (bitmap or u32 positions; f32 or
    /// bf16 values), byte for byte the CPU's `dropit_simd::pack::pack` of the same tensor.
    pub fn pack(&self, x: &CudaSlice<f32>, t: &GpuThreshold, format: Format) -> Result<GpuPacked> {
        let form = check_format(format)?;
        let (n, k) = (x.len(), t.kept());
        if k > n {
            return Err(Error::Gpu(format!("pack: {k} kept of {n} elements")));
        }
        let mut bytes = self.zeros::<u8>(format.bytes(n, k))?;
        if n == 0 {
            return Ok(GpuPacked {
                format,
                n,
                k,
                bytes,
            });
        }
        let words = n.div_ceil(64);
        let (n64, w64, key, ties) = (n as u64, words as u64, t.key(), t.ties() as u64);
        // Ties before each word, then each word's kept bits and count.
        let mut equal = self.zeros::<u32>(words)?;
        let f = self.kernel("word_ties")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(&n64).arg(&key).arg(&mut equal).arg(&w64);
        // SAFETY: x has n floats, equal ⌈n/64⌉ counts; thread w reads its word, writes equal[w].
        launched(
            "word_ties",
            unsafe { b.launch(per_item(words)) }.map(|_| ()),
        )?;
        let eq_before = self.scan(&equal, words)?;
        // The bitmap is the position region itself; u32 positions take it from scratch.
        let (mut positions, mut values) = bytes.split_at_mut(format.position_bytes(n, k));
        let mut scratch = match format.positions {
            PosForm::Bitmap => None,
            _ => Some(self.zeros::<u8>(8 * words)?),
        };
        let mut kept = self.zeros::<u32>(words)?;
        {
            let mut bits = match scratch.as_mut() {
                Some(s) => s.slice_mut(..),
                None => positions.slice_mut(..),
            };
            let f = self.kernel("keep_words")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(x).arg(&n64).arg(&key).arg(&ties).arg(&equal);
            b.arg(&eq_before).arg(&mut bits).arg(&mut kept).arg(&w64);
            // SAFETY: `bits` holds ⌈n/64⌉ u64 words (the bitmap region, or scratch), the
            // counts as many entries, x n floats; thread w writes word w and kept[w].
            launched(
                "keep_words",
                unsafe { b.launch(per_item(words)) }.map(|_| ()),
            )?;
        }
        let at = self.scan(&kept, words)?;
        let total = self.last(&at, words)? + self.last(&kept, words)? as u64;
        if total != k as u64 {
            return Err(Error::Gpu(format!(
                "pack: the threshold keeps {total} elements of this tensor, not its {k}"
            )));
        }
        let f = self.kernel("write_kept")?;
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x);
        match scratch.as_ref() {
            Some(s) => b
                .arg(s)
                .arg(&at)
                .arg(&mut values)
                .arg(&form)
                .arg(&mut positions),
            None => b
                .arg(&mut positions)
                .arg(&at)
                .arg(&mut values)
                .arg(&form)
                .arg(&null),
        };
        b.arg(&w64);
        // SAFETY: the words' kept counts sum to k (checked above), so the values region (k
        // values of the format's size) and, for u32 positions, the index region (k u32) hold
        // every slot `at[w] + j` written; both regions start 8-byte aligned in `bytes`.
        launched(
            "write_kept",
            unsafe { b.launch(per_item(words)) }.map(|_| ()),
        )?;
        Ok(GpuPacked {
            format,
            n,
            k,
            bytes,
        })
    }

    /// Dense `out` (`p.n` floats) from a packed tensor: kept values in place, zeros elsewhere —
    /// the CPU's `dropit_simd::pack::unpack`.
    pub fn unpack(&self, p: &GpuPacked, out: &mut CudaSlice<f32>) -> Result<()> {
        let form = check_format(p.format)?;
        if out.len() != p.n {
            return Err(Error::Gpu(format!(
                "unpack: {} outputs for {} elements",
                out.len(),
                p.n
            )));
        }
        if p.n == 0 {
            return Ok(());
        }
        let (positions, values) = p.bytes.split_at(p.format.position_bytes(p.n, p.k));
        match p.format.positions {
            PosForm::U32 => {
                self.stream
                    .memset_zeros(out)
                    .map_err(gpu_err("clearing the output"))?;
                let f = self.kernel("unpack_u32")?;
                let k64 = p.k as u64;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&positions).arg(&values).arg(&form).arg(out).arg(&k64);
                // SAFETY: k indices and values; the indices are below n (checked when the
                // bytes came from the host, written by `pack` otherwise) and out has n floats.
                launched("unpack_u32", unsafe { b.launch(per_item(p.k)) }.map(|_| ()))
            }
            _ => {
                let words = p.n.div_ceil(64);
                let at = self.bitmap_offsets(&positions, words)?;
                let f = self.kernel("unpack_bitmap")?;
                let (n64, w64) = (p.n as u64, words as u64);
                let mut b = self.stream.launch_builder(&f);
                b.arg(&positions).arg(&at).arg(&values).arg(&form);
                b.arg(out).arg(&n64).arg(&w64);
                // SAFETY: ⌈n/64⌉ bitmap words whose bits total k (as packed or checked), k
                // values, n outputs; thread w writes its word's elements.
                launched(
                    "unpack_bitmap",
                    unsafe { b.launch(per_item(words)) }.map(|_| ()),
                )
            }
        }
    }

    /// Each bitmap word's first value slot: the exclusive prefix sums of the words' popcounts.
    pub(super) fn bitmap_offsets(
        &self,
        bits: &CudaView<'_, u8>,
        words: usize,
    ) -> Result<CudaSlice<u64>> {
        let mut kept = self.zeros::<u32>(words)?;
        let f = self.kernel("word_popcounts")?;
        let w64 = words as u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(bits).arg(&mut kept).arg(&w64);
        // SAFETY: `bits` holds ⌈n/64⌉ words (the format's position region), kept as many counts.
        launched(
            "word_popcounts",
            unsafe { b.launch(per_item(words)) }.map(|_| ()),
        )?;
        self.scan(&kept, words)
    }
}
