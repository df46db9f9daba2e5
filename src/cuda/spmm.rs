//! The sparse Linear weight gradient on the GPU, from a packed input.

use std::format;

use cudarc::cublas::{Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaSlice, PushKernelArg};
use dropit_simd::format::PosForm;

use super::{Gpu, GpuPacked, launched, per_item};
use crate::error::{Error, Result};

impl Gpu {
    /// `gwt[i, :] += x[r, i] · dy[r, :]` for every kept `(r, i)` of the packed input `x`
    /// (`rows × inp`, row-major), `dy` being `rows × out` and `gwt` grad_Wᵀ (`inp × out`) — the
    /// CPU's `dropit_simd::spmm::linear_grad_w`. The products are added atomically, in no fixed
    /// order, so the sums agree with the CPU's within f32 rounding.
    pub fn linear_grad_w(
        &self,
        x: &GpuPacked,
        (rows, inp, out): (usize, usize, usize),
        dy: &CudaSlice<f32>,
        gwt: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_sizes(
            "linear grad_W: a packed input",
            (rows, inp, out),
            x.n,
            dy,
            gwt,
        )?;
        if x.n == 0 || x.k == 0 {
            return Ok(());
        }
        let form = super::pack::value_code(x.format)?;
        let (positions, values) = x.bytes.split_at(x.format.position_bytes(x.n, x.k));
        let (inp, out) = (inp as u64, out as u64);
        match x.format.positions {
            PosForm::U32 => {
                let f = self.kernel("linear_grad_w_u32")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&positions).arg(&values).arg(&form).arg(dy);
                let k64 = x.k as u64;
                b.arg(&inp).arg(&out).arg(gwt).arg(&k64);
                // SAFETY: k indices below rows·inp and k values; dy has rows·out floats and
                // gwt inp·out (checked above), so every (r, i, j) touched is in range.
                launched(
                    "linear_grad_w_u32",
                    unsafe { b.launch(per_item(x.k)) }.map(|_| ()),
                )
            }
            _ => {
                let words = x.n.div_ceil(64);
                let at = self.bitmap_offsets(&positions, words)?;
                let f = self.kernel("linear_grad_w_bitmap")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&positions).arg(&at).arg(&values).arg(&form).arg(dy);
                let w64 = words as u64;
                b.arg(&inp).arg(&out).arg(gwt).arg(&w64);
                // SAFETY: ⌈n/64⌉ words whose set bits (below n = rows·inp) total k, k values;
                // dy has rows·out floats and gwt inp·out (checked above).
                launched(
                    "linear_grad_w_bitmap",
                    unsafe { b.launch(per_item(words)) }.map(|_| ()),
                )
            }
        }
    }

    /// The dense Linear weight gradient through cuBLAS: `gwt += xᵀ · dy` with `x` dense
    /// (`rows × inp`), `dy` `rows × out` and `gwt` grad_Wᵀ (`inp × out`), all row-major — what
    /// [`Gpu::linear_grad_w`] computes from the kept elements only.
    pub fn linear_grad_w_dense(
        &self,
        x: &CudaSlice<f32>,
        (rows, inp, out): (usize, usize, usize),
        dy: &CudaSlice<f32>,
        gwt: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_sizes("dense grad_W: x", (rows, inp, out), x.len(), dy, gwt)?;
        let blas = self
            .blas
            .as_ref()
            .ok_or_else(|| Error::Gpu("no cuBLAS library (libcublas) on this machine".into()))?;
        let int = |v: usize| {
            i32::try_from(v)
                .map_err(|_| Error::Gpu(format!("dense grad_W: {v} is past cuBLAS's int")))
        };
        // Column-major, grad_Wᵀ row-major is (out × inp): dYᶜ (out × rows) · (xᶜ)ᵀ, xᶜ (inp × rows).
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_N,
            transb: cublasOperation_t::CUBLAS_OP_T,
            m: int(out)?,
            n: int(inp)?,
            k: int(rows)?,
            alpha: 1.0f32,
            lda: int(out)?,
            ldb: int(inp)?,
            beta: 1.0f32,
            ldc: int(out)?,
        };
        // SAFETY: the lengths match the shapes (checked above), so every element cuBLAS reads
        // or writes under these leading dimensions is inside its buffer.
        unsafe { blas.gemm(cfg, dy, x, gwt) }.map_err(|e| Error::Gpu(format!("cuBLAS sgemm: {e}")))
    }
}

/// That `x` (of `x_len` elements), `dy` and grad_Wᵀ `gwt` are `rows × inp`, `rows × out` and
/// `inp × out`.
fn check_sizes(
    what: &str,
    (rows, inp, out): (usize, usize, usize),
    x_len: usize,
    dy: &CudaSlice<f32>,
    gwt: &CudaSlice<f32>,
) -> Result<()> {
    let sizes = (
        rows.checked_mul(inp),
        rows.checked_mul(out),
        inp.checked_mul(out),
    );
    if sizes == (Some(x_len), Some(dy.len()), Some(gwt.len())) {
        return Ok(());
    }
    Err(Error::Gpu(format!(
        "{what} of {x_len}, dY of {} and grad_Wᵀ of {} for rows {rows} × in {inp} × out {out}",
        dy.len(),
        gwt.len()
    )))
}
