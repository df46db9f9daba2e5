//! Reductions over a whole buffer: the sum of squares behind the gradient norm.

/// Partial sums of [`sum_of_squares`]: element `i` goes to lane `i % LANES`.
pub const LANES: usize = 32;

/// Σ x² in f64. Element `i` is squared in f64 and added to lane `i % LANES` (each lane runs over
/// its elements in order), then the lanes are added in order from the first, so the result
/// does not depend on the CPU or on how the loop is vectorized: it has the bits of
/// [`crate::reference::sum_of_squares`]. A square of an f32 cannot overflow f64, so the result
/// is finite exactly when every element is.
///
/// ```
/// let x = [3.0f32, -4.0];
/// assert_eq!(dropit_simd::reduce::sum_of_squares(&x), 25.0);
/// ```
pub fn sum_of_squares(x: &[f32]) -> f64 {
    crate::isa::vectorized(|| lanes(x))
}

/// The loop: 32 independent f64 sums, which the compiler vectorizes (a square and an add per
/// element, never fused).
#[inline(always)]
fn lanes(x: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            let v = v as f64;
            *a += v * v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        let v = v as f64;
        *a += v * v;
    }
    acc.iter().sum()
}
