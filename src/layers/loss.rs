//! Softmax cross-entropy, mean over the batch, with optional label smoothing.

/// Loss and accuracy of one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LossOut {
    pub loss: f32,
    pub correct: usize,
}

/// Computes the mean loss over `labels.len()` rows of `logits` (`[n × classes]`) and, when
/// `grad` is set, overwrites the logits with d(loss)/d(logits). Labels must be checked first.
pub(crate) fn softmax_cross_entropy(
    logits: &mut [f32],
    labels: &[u32],
    classes: usize,
    smoothing: f32,
    grad: bool,
) -> LossOut {
    let n = labels.len();
    let mut total = 0.0f64;
    let mut correct = 0;
    let off = smoothing / classes as f32;
    let on = 1.0 - smoothing + off;
    for (row, &label) in logits.chunks_exact_mut(classes).zip(labels) {
        let label = label as usize;
        let (mut arg, mut max) = (0, f32::NEG_INFINITY);
        for (j, &v) in row.iter().enumerate() {
            if v > max {
                (arg, max) = (j, v);
            }
        }
        correct += (arg == label) as usize;
        let sum: f32 = row.iter().map(|&v| libm::expf(v - max)).sum();
        let lse = max + libm::logf(sum);
        // −Σ q_j log p_j with q = (1 − ε)·onehot + ε/C.
        let mut loss = 0.0f32;
        for (j, &v) in row.iter().enumerate() {
            let q = if j == label { on } else { off };
            loss += q * (lse - v);
        }
        total += loss as f64;
        if grad {
            for (j, v) in row.iter_mut().enumerate() {
                let q = if j == label { on } else { off };
                *v = (libm::expf(*v - lse) - q) / n as f32;
            }
        }
    }
    LossOut {
        loss: (total / n.max(1) as f64) as f32,
        correct,
    }
}
