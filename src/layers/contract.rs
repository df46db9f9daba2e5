//! The layer contract: what a layer declares about itself, once, in its own file — its
//! parameters and running statistics with PyTorch's `state_dict` names and layouts, what it saves
//! for backward as typed entries, its scratch, whether it can run in place, and the bytes
//! PyTorch's autograd would keep for the same module. The planner sizes the arena from these
//! declarations, the trainer splits each saved context by them, and the memory report reads them.

use crate::collections::msg;
use half::bf16;
use heapless::Vec as HVec;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::arena::{words_for_bytes, words_for_f32};
use crate::error::{Error, Result};
use crate::saved::{InputSave, SparseSave};
use crate::shape::Shape;
use dropit_simd::mask::mask_words;

use super::{Bwd, Fwd, Rb};

/// Most entries a layer saves for backward.
pub const MAX_ENTRIES: usize = 4;
/// Most parameter and state tensors a layer declares.
pub const MAX_PARAMS: usize = 4;

/// How the elements of a saved entry are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// f32.
    F32,
    /// bf16 (lean forms).
    Bf16,
    /// One bit per element (masks).
    Bit,
    /// One byte per element (codes).
    Byte,
}

impl Elem {
    /// Arena words `len` elements take.
    pub fn words(self, len: usize) -> usize {
        match self {
            Elem::F32 => words_for_f32(len),
            Elem::Bf16 => words_for_bytes(len.saturating_mul(2)),
            Elem::Bit => mask_words(len),
            Elem::Byte => words_for_bytes(len),
        }
    }
}

/// One region a layer saves for backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What it holds, for the memory report (`"1-bit mask"`, `"normalized bf16"`).
    pub what: &'static str,
    /// Element type.
    pub elem: Elem,
    /// Elements.
    pub len: usize,
}

impl Entry {
    /// An entry of `len` elements of `elem`.
    pub const fn new(what: &'static str, elem: Elem, len: usize) -> Self {
        Entry { what, elem, len }
    }

    /// Arena words it takes.
    pub fn words(&self) -> usize {
        self.elem.words(self.len)
    }
}

/// How a layer's output can be rebuilt in backward from what the layer keeps anyway: the
/// declared relation that lets a reader of the output (a Linear or convolution that needs it
/// for its weight gradient) keep nothing. The planner follows it (`crate::rebuild`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// It cannot.
    No,
    /// From its own saved context and parameters alone: a norm's `γ·x̂ + β`, GELU of its kept
    /// input. Bitwise the forward output when the context is f32; from a lean (bf16) context,
    /// to bf16's rounding of x̂.
    FromSaved,
    /// Elementwise from its rebuilt input and its saved context (ReLU, ReLU6, dropout's mask):
    /// the buffer holds the input and is transformed in place, bitwise as forward did.
    FromInput,
}

/// What a layer needs for `n` samples: declared once, read by the planner, the trainer and the
/// memory report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Needs {
    /// Its own saved context, entry by entry (a held input is not among them).
    pub saved: HVec<Entry, MAX_ENTRIES>,
    /// Backward reads the layer's f32 input as it is: the planner holds that tensor (once, for
    /// every reader).
    pub holds_input: bool,
    /// DropIT: the input is kept packed under these settings.
    pub packed: Option<SparseSave>,
    /// Scratch words while running forward or backward.
    pub scratch: usize,
    /// Forward can write its output over its (first) input and backward its input gradient
    /// over its output gradient.
    pub in_place: bool,
    /// Bytes PyTorch's autograd keeps for the same module, as dense f32.
    pub torch_bytes: usize,
    /// Backward can take its input rebuilt a piece at a time (`Bwd::rebuild`) with this much
    /// more scratch; `None`: it needs the whole input at once.
    pub rebuild_scratch: Option<usize>,
}

impl Needs {
    /// Nothing saved, no scratch, not in place.
    pub fn none() -> Self {
        Self::default()
    }

    /// An elementwise activation that keeps one bit per output element and runs in place;
    /// PyTorch keeps an f32 tensor of the output's size.
    pub fn one_bit_mask(elems: usize) -> Self {
        Self::none()
            .save(Entry::new("1-bit mask", Elem::Bit, elems))
            .in_place(true)
            .torch(4 * elems)
    }

    /// With a saved entry.
    pub fn save(mut self, e: Entry) -> Self {
        // MAX_ENTRIES bounds every layer's declaration; one more is a bug of that layer, caught
        // in tests (they run with debug assertions over every layer).
        let pushed = self.saved.push(e);
        debug_assert!(pushed.is_ok(), "more than {MAX_ENTRIES} saved entries");
        self
    }

    /// With scratch.
    pub fn scratch(mut self, words: usize) -> Self {
        self.scratch = words;
        self
    }

    /// In place.
    pub fn in_place(mut self, yes: bool) -> Self {
        self.in_place = yes;
        self
    }

    /// Taking a rebuilt input piece by piece with `words` more scratch.
    pub fn rebuild_scratch(mut self, words: usize) -> Self {
        self.rebuild_scratch = Some(words);
        self
    }

    /// With PyTorch's bytes.
    pub fn torch(mut self, bytes: usize) -> Self {
        self.torch_bytes = bytes;
        self
    }

    /// Keeping the f32 input `x` for the weight gradient: held as it is, or packed (DropIT).
    pub fn input(mut self, save: &InputSave, x_elems: usize) -> Self {
        self.holds_input = save.holds_input();
        self.packed = save.sparse().copied();
        self.torch_bytes += 4 * x_elems;
        self
    }

    /// Words of the own saved context.
    pub fn saved_words(&self) -> usize {
        self.saved
            .iter()
            .fold(0, |a, e| a.saturating_add(e.words()))
    }

    /// What a frozen layer needs: no context, no held or packed input.
    pub(crate) fn frozen(mut self) -> Self {
        self.saved.clear();
        self.holds_input = false;
        self.packed = None;
        self.torch_bytes = 0;
        self
    }
}

/// How our layout of a parameter maps to PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The same order.
    Same,
    /// Ours `[rows, cols]`, PyTorch's `[cols, rows]` (Linear: ours `[in, out]`).
    Transposed {
        /// Our rows.
        rows: usize,
        /// Our columns.
        cols: usize,
    },
    /// Ours `[kh, kw, cin, cout]`, PyTorch's `[cout, cin, kh, kw]` (Conv2d).
    Hwio {
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
    },
    /// Ours `[kh, kw, c]`, PyTorch's `[c, 1, kh, kw]` (depthwise Conv2d).
    Hwc {
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// Channels.
        c: usize,
    },
}

impl Layout {
    /// Where our element `i` lies in PyTorch's (row-major) tensor.
    pub fn torch_index(&self, i: usize) -> usize {
        match *self {
            Layout::Same => i,
            Layout::Transposed { rows, cols } => (i % cols) * rows + i / cols,
            Layout::Hwio { kh, kw, cin, cout } => {
                let (co, rest) = (i % cout, i / cout);
                let (ci, tap) = (rest % cin, rest / cin);
                let (a, b) = (tap / kw, tap % kw);
                ((co * cin + ci) * kh + a) * kw + b
            }
            Layout::Hwc { kh, kw, c } => {
                let (ch, tap) = (i % c, i / c);
                (ch * kh + tap / kw) * kw + tap % kw
            }
        }
    }
}

/// A parameter or running statistic, as PyTorch's `state_dict` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamDecl {
    /// The name under the module (`weight`, `running_mean`).
    pub name: &'static str,
    /// PyTorch's shape.
    pub torch_shape: HVec<usize, 4>,
    /// How our layout maps to PyTorch's.
    pub layout: Layout,
    /// Trained (a parameter) or not (a running statistic: optimizer and gradients skip it).
    pub trained: bool,
}

impl ParamDecl {
    /// A trained parameter of PyTorch shape `shape`.
    pub fn param(name: &'static str, shape: &[usize], layout: Layout) -> Self {
        ParamDecl {
            name,
            torch_shape: HVec::from_slice(shape).unwrap_or_default(),
            layout,
            trained: true,
        }
    }

    /// A running statistic of `len` elements.
    pub fn state(name: &'static str, len: usize) -> Self {
        ParamDecl {
            trained: false,
            ..Self::param(name, &[len], Layout::Same)
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.torch_shape.iter().product()
    }

    /// Elements, or `None` when the shape's product overflows (a corrupt declaration read from
    /// a file).
    pub fn len_checked(&self) -> Option<usize> {
        self.torch_shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    /// Little-endian PyTorch-ordered `bytes` (4 per element) into our order.
    pub(crate) fn read_torch(&self, bytes: &[u8], ours: &mut [f32]) {
        for (i, o) in ours.iter_mut().enumerate() {
            let j = 4 * self.layout.torch_index(i);
            *o = f32::from_le_bytes([bytes[j], bytes[j + 1], bytes[j + 2], bytes[j + 3]]);
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A layer's parameters and running statistics, in storage order (parameters first).
pub type Params = HVec<ParamDecl, MAX_PARAMS>;

/// Builds a [`Params`] list.
pub(crate) fn params<const N: usize>(list: [ParamDecl; N]) -> Params {
    list.into_iter().collect()
}

/// What forward is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A training step: batch statistics, the context is written for backward.
    Train,
    /// Evaluation: running statistics; the context's space exists but is never read.
    Eval,
    /// A frozen node, in training or evaluation: running statistics, no context at all.
    Frozen,
}

/// A tensor a call reads: its own buffer, or the output buffer it is overwritten in (in place).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input<'a> {
    /// In its own buffer.
    Buf(&'a [f32]),
    /// In the buffer the call writes (forward: `y`; backward: `dx`).
    InPlace,
}

impl<'a> Input<'a> {
    /// The buffer, unless in place.
    pub fn buf(&self) -> Option<&'a [f32]> {
        match *self {
            Input::Buf(x) => Some(x),
            Input::InPlace => None,
        }
    }

    /// Chunks of `len` as `Some`, then `None` forever; only `None` in place.
    pub fn chunks(&self, len: usize) -> impl Iterator<Item = Option<&'a [f32]>> + use<'a> {
        self.buf()
            .unwrap_or(&[])
            .chunks(len.max(1))
            .map(Some)
            .chain(core::iter::repeat(None))
    }
}

/// Splits a saved context into its declared entries (forward: writable).
pub(crate) struct SavedMut<'a> {
    parts: [&'a mut [u64]; MAX_ENTRIES],
    entries: &'a [Entry],
}

/// The same, read-only (backward).
#[derive(Clone, Copy)]
pub(crate) struct Saved<'a> {
    parts: [&'a [u64]; MAX_ENTRIES],
    entries: &'a [Entry],
}

fn wrong_entry(i: usize, want: Elem, entries: &[Entry]) -> Error {
    Error::Config {
        what: msg!("saved context"),
        detail: msg!(
            "entry {i} read as {want:?}, declared {:?}",
            entries.get(i).map(|e| e.elem)
        ),
    }
}

impl<'a> SavedMut<'a> {
    /// Splits `words` by `entries`, in order.
    pub fn split(mut words: &'a mut [u64], entries: &'a [Entry]) -> Result<Self> {
        let mut parts: [&'a mut [u64]; MAX_ENTRIES] = Default::default();
        for (p, e) in parts.iter_mut().zip(entries) {
            if words.len() < e.words() {
                return Err(wrong_entry(0, e.elem, entries));
            }
            let (head, rest) = core::mem::take(&mut words).split_at_mut(e.words());
            (*p, words) = (head, rest);
        }
        Ok(SavedMut { parts, entries })
    }

    fn take(&mut self, i: usize, want: Elem) -> Result<&'a mut [u64]> {
        match self.entries.get(i) {
            Some(e) if e.elem == want => Ok(core::mem::take(&mut self.parts[i])),
            _ => Err(wrong_entry(i, want, self.entries)),
        }
    }

    /// Entry `i` as its f32 elements.
    pub fn f32(&mut self, i: usize) -> Result<&'a mut [f32]> {
        let len = self.entries.get(i).map_or(0, |e| e.len);
        Ok(&mut bytemuck::cast_slice_mut(self.take(i, Elem::F32)?)[..len])
    }

    /// Entry `i` as its bf16 elements.
    pub fn bf16(&mut self, i: usize) -> Result<&'a mut [bf16]> {
        let len = self.entries.get(i).map_or(0, |e| e.len);
        Ok(&mut bytemuck::cast_slice_mut(self.take(i, Elem::Bf16)?)[..len])
    }

    /// Entry `i` as mask words.
    pub fn bits(&mut self, i: usize) -> Result<&'a mut [u64]> {
        self.take(i, Elem::Bit)
    }

    /// Entry `i` as its bytes.
    pub fn bytes(&mut self, i: usize) -> Result<&'a mut [u8]> {
        let len = self.entries.get(i).map_or(0, |e| e.len);
        Ok(&mut bytemuck::cast_slice_mut(self.take(i, Elem::Byte)?)[..len])
    }
}

impl<'a> Saved<'a> {
    /// Splits `words` by `entries`, in order.
    pub fn split(mut words: &'a [u64], entries: &'a [Entry]) -> Result<Self> {
        let mut parts: [&'a [u64]; MAX_ENTRIES] = Default::default();
        for (p, e) in parts.iter_mut().zip(entries) {
            if words.len() < e.words() {
                return Err(wrong_entry(0, e.elem, entries));
            }
            (*p, words) = words.split_at(e.words());
        }
        Ok(Saved { parts, entries })
    }

    fn get(&self, i: usize, want: Elem) -> Result<(&'a [u64], usize)> {
        match self.entries.get(i) {
            Some(e) if e.elem == want => Ok((self.parts[i], e.len)),
            _ => Err(wrong_entry(i, want, self.entries)),
        }
    }

    /// Entry `i` as its f32 elements.
    pub fn f32(&self, i: usize) -> Result<&'a [f32]> {
        let (w, len) = self.get(i, Elem::F32)?;
        Ok(&bytemuck::cast_slice(w)[..len])
    }

    /// Entry `i` as its bf16 elements.
    pub fn bf16(&self, i: usize) -> Result<&'a [bf16]> {
        let (w, len) = self.get(i, Elem::Bf16)?;
        Ok(&bytemuck::cast_slice(w)[..len])
    }

    /// Entry `i` as mask words.
    pub fn bits(&self, i: usize) -> Result<&'a [u64]> {
        Ok(self.get(i, Elem::Bit)?.0)
    }

    /// Entry `i` as its bytes.
    pub fn bytes(&self, i: usize) -> Result<&'a [u8]> {
        let (w, len) = self.get(i, Elem::Byte)?;
        Ok(&bytemuck::cast_slice(w)[..len])
    }
}

/// Shapes a declaration is made for: `n` samples of input `x` and output `y`, `threads` workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Samples.
    pub n: usize,
    /// One sample's input.
    pub x: Shape,
    /// One sample's output.
    pub y: Shape,
    /// Workers.
    pub threads: usize,
}

impl Dims {
    /// Input elements of all samples.
    pub fn x_elems(&self) -> usize {
        self.n * self.x.numel()
    }

    /// Output elements of all samples.
    pub fn y_elems(&self) -> usize {
        self.n * self.y.numel()
    }
}

/// What every layer implements, in its own file. Statically dispatched through [`super::Layer`].
pub(crate) trait Op {
    /// The kind, as PyTorch names the module.
    const KIND: &'static str;

    /// Inputs the layer takes.
    fn arity(&self) -> usize {
        1
    }

    /// The output shape for an input shape, or an error naming `name`, expected and given.
    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape>;

    /// Parameters (trained) then running statistics, with PyTorch's names and shapes.
    fn params(&self) -> Params {
        Params::new()
    }

    /// What the layer saves, its scratch and in-place ability for these dimensions.
    fn needs(&self, d: &Dims) -> Needs;

    /// Fills freshly planned parameters and running statistics.
    fn init(&self, _p: &mut [f32], _state: &mut [f32], _rng: &mut Xoshiro256PlusPlus) {}

    /// Forward.
    fn forward(&self, f: &mut Fwd<'_>) -> Result<()>;

    /// Backward.
    fn backward(&self, b: &mut Bwd<'_>) -> Result<()>;

    /// How the layer keeps its input for the weight gradient, if DropIT applies to it.
    fn input_save(&self) -> Option<&InputSave> {
        None
    }

    /// The same, to change it.
    fn input_save_mut(&mut self) -> Option<&mut InputSave> {
        None
    }

    /// Whether what forward staged can be committed (batch norm: its statistics are finite —
    /// a batch of huge but finite values could make the variance overflow). A step with a
    /// layer that cannot commit is skipped.
    fn can_commit(&self, _saved: &Saved<'_>) -> bool {
        true
    }

    /// Commits what forward staged once the step is accepted (finite loss and gradients): batch
    /// norm's running statistics. A skipped step changes nothing.
    fn commit(&self, _state: &mut [f32], _saved: &Saved<'_>) -> Result<()> {
        Ok(())
    }

    /// Step counters PyTorch keeps as int64 buffers of the same module (BatchNorm's
    /// `num_batches_tracked`): checkpoints write the trainer's step there and ignore it on load.
    fn counters(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether and how its output can be rebuilt in backward (see [`Rebuild`]).
    fn rebuilds(&self) -> Rebuild {
        Rebuild::No
    }

    /// Rebuilds elements `r.at ..` of the output of the last training forward into `r.y` (for
    /// [`Rebuild::FromInput`], `r.y` holds them rebuilt for its input), on the calling thread.
    fn rebuild(&self, _r: &mut Rb<'_, '_>) -> Result<()> {
        Err(super::planner_bug(Self::KIND, "cannot rebuild its output"))
    }

    /// Switches the layer's lean forms on or off (no-op without one).
    fn set_lean(&mut self, _lean: bool) {}

    /// With lean on, keep a norm's x̂ as 8-bit codes instead of bf16 (no-op for other layers).
    fn set_int8(&mut self, _int8: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_permutations() {
        let layouts = [
            (Layout::Same, 7),
            (Layout::Transposed { rows: 3, cols: 5 }, 15),
            (
                Layout::Hwio {
                    kh: 2,
                    kw: 3,
                    cin: 4,
                    cout: 5,
                },
                120,
            ),
            (Layout::Hwc { kh: 3, kw: 2, c: 4 }, 24),
        ];
        for (l, len) in layouts {
            let mut seen = alloc::vec![false; len];
            for i in 0..len {
                let j = l.torch_index(i);
                assert!(j < len && !seen[j], "{l:?}: {i} → {j}");
                seen[j] = true;
            }
        }
        // Linear: ours [in=3, out=5]; element (in 1, out 2) is PyTorch's weight[2][1].
        let t = Layout::Transposed { rows: 3, cols: 5 };
        assert_eq!(t.torch_index(5 + 2), 2 * 3 + 1);
        // Conv: ours [kh, kw, cin, cout] element (a 1, b 2, ci 3, co 4) is weight[4][3][1][2].
        let c = Layout::Hwio {
            kh: 2,
            kw: 3,
            cin: 4,
            cout: 5,
        };
        assert_eq!(
            c.torch_index(((3 + 2) * 4 + 3) * 5 + 4),
            ((4 * 4 + 3) * 2 + 1) * 3 + 2
        );
    }

    #[test]
    fn saved_views_check_the_declared_type() {
        let entries = [
            Entry::new("a", Elem::F32, 3),
            Entry::new("b", Elem::Bit, 70),
        ];
        let mut words = alloc::vec![0u64; 2 + 2];
        let mut s = SavedMut::split(&mut words, &entries).unwrap();
        assert!(s.bf16(0).is_err());
        assert_eq!(s.f32(0).unwrap().len(), 3);
        assert_eq!(s.bits(1).unwrap().len(), 2);
        assert!(s.f32(2).is_err());
        assert!(Saved::split(&words[..3], &entries).is_err());
    }
}
