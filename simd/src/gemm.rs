//! Dense GEMM: a checked, safe face on `matrixmultiply::sgemm`.
//!
//! Layouts are passed as strides, so a transposed operand costs nothing: `Mat::t()` swaps them.

use crate::{Error, Result};

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A writable matrix view (see [`Mat`]).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Checks that every element of a `rows × cols` view with strides `(rs, cs)` lies in `len`.
fn fits(
    what: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
    match last {
        Some(l) if l < len && rs <= isize::MAX as usize && cs <= isize::MAX as usize => Ok(()),
        _ => Err(Error::Length {
            what,
            expected: last.map_or(usize::MAX, |l| l + 1),
            given: len,
        }),
    }
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A matrix with explicit strides.
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        fits("matrix view", data.len(), rows, cols, rs, cs)?;
        Ok(Mat {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// The transpose (a view; nothing is copied).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl<'a> MatMut<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        fits("output matrix view", data.len(), rows, cols, cols, 1)?;
        Ok(MatMut {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        })
    }
}

/// `c = alpha · a · b + beta · c`. With `beta == 0` the old contents of `c` are ignored (even NaN).
pub fn sgemm(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: MatMut<'_>) -> Result<()> {
    let shape_err = |what, expected, given| {
        Err(Error::Length {
            what,
            expected,
            given,
        })
    };
    if a.cols != b.rows {
        return shape_err("gemm: rows of B (columns of A)", a.cols, b.rows);
    }
    if c.rows != a.rows {
        return shape_err("gemm: rows of C (rows of A)", a.rows, c.rows);
    }
    if c.cols != b.cols {
        return shape_err("gemm: columns of C (columns of B)", b.cols, c.cols);
    }
    if c.rows == 0 || c.cols == 0 {
        return Ok(());
    }
    // SAFETY: `fits` checked, when each view was made, that every element addressed by its
    // shape and strides lies inside its slice, and that the strides fit in isize; the shapes
    // agree (checked above), so sgemm reads only inside `a` and `b` and writes only inside `c`,
    // which is a unique borrow and so cannot alias them.
    unsafe {
        matrixmultiply::sgemm(
            a.rows,
            a.cols,
            b.cols,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.data.as_mut_ptr(),
            c.rs as isize,
            c.cs as isize,
        );
    }
    Ok(())
}
