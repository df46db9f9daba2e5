//! Checkpoints in a caller's byte buffer (flash pages on a device without files): two
//! alternating slots, each a header — magic, sequence number, length, CRC-32 — and a
//! checkpoint. A save writes the slot that does not hold the newest checkpoint: first it
//! spoils that slot's magic, then writes the checkpoint, then the header. A write torn by power
//! loss anywhere leaves that slot invalid and the other one — the previous checkpoint — intact.

use alloc::vec::Vec;

use crate::error::{Result, ckpt_err};
use crate::trainer::Trainer;

/// Bytes of a slot's header (magic, sequence number, length, CRC-32, padding).
pub const SLOT_HEADER: usize = 32;
const MAGIC: [u8; 8] = *b"DROPITck";

/// The two slots of `flash`: each half, rounded down to 8 bytes.
fn halves(flash: &[u8]) -> [core::ops::Range<usize>; 2] {
    let half = flash.len() / 2 / 8 * 8;
    [0..half, half..2 * half]
}

fn crc(seq: u64, len: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The valid checkpoint in `slot`, with its sequence number.
fn read_slot(slot: &[u8]) -> Option<(u64, &[u8])> {
    if slot.len() < SLOT_HEADER || slot[..8] != MAGIC {
        return None;
    }
    let (seq, len) = (u64_at(slot, 8), u64_at(slot, 16));
    let end = usize::try_from(len).ok()?.checked_add(SLOT_HEADER)?;
    let payload = slot.get(SLOT_HEADER..end)?;
    let stored = u32::from_le_bytes([slot[24], slot[25], slot[26], slot[27]]);
    (crc(seq, len, payload) == stored).then_some((seq, payload))
}

/// The newest valid slot: (index, sequence number, checkpoint bytes).
fn newest(flash: &[u8]) -> Option<(usize, u64, &[u8])> {
    let [a, b] = halves(flash);
    let slots = [read_slot(&flash[a]), read_slot(&flash[b])];
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|(q, p)| (i, q, p)))
        .max_by_key(|&(_, q, _)| q)
}

/// The writes a save makes, in order: (offset, bytes).
pub(crate) fn plan_writes(
    flash_len: usize,
    current: Option<(usize, u64)>,
    payload: &[u8],
) -> Result<Vec<(usize, Vec<u8>)>> {
    let half = flash_len / 2 / 8 * 8;
    if SLOT_HEADER + payload.len() > half {
        return ckpt_err(
            "flash",
            alloc::format!(
                "a slot holds {} bytes, the checkpoint needs {}",
                half.saturating_sub(SLOT_HEADER),
                payload.len()
            ),
        );
    }
    let (slot, seq) = match current {
        Some((i, q)) => (1 - i, q + 1),
        None => (0, 1),
    };
    let at = slot * half;
    let len = payload.len() as u64;
    let mut header = Vec::with_capacity(SLOT_HEADER);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&seq.to_le_bytes());
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&crc(seq, len, payload).to_le_bytes());
    header.resize(SLOT_HEADER, 0);
    Ok(alloc::vec![
        (at, alloc::vec![0u8; 8]),
        (at + SLOT_HEADER, payload.to_vec()),
        (at, header),
    ])
}

impl Trainer<'_> {
    /// Writes a checkpoint into `flash` (at least twice the checkpoint plus two
    /// [`SLOT_HEADER`]s), in the slot that does not hold the newest one; returns its sequence
    /// number. A write torn at any point leaves the previous checkpoint loadable.
    pub fn save_to(&self, flash: &mut [u8]) -> Result<u64> {
        let payload = self.checkpoint()?;
        let current = newest(flash).map(|(i, q, _)| (i, q));
        for (at, bytes) in plan_writes(flash.len(), current, &payload)? {
            flash[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(current.map_or(1, |(_, q)| q + 1))
    }
}

impl Trainer<'static> {
    /// The newest valid checkpoint in `flash` (written by [`Trainer::save_to`]), with its
    /// sequence number.
    pub fn load_from(flash: &[u8]) -> Result<(Self, u64)> {
        match newest(flash) {
            Some((_, seq, payload)) => Ok((Trainer::from_checkpoint(payload)?, seq)),
            None => ckpt_err("flash", "no valid checkpoint in either slot"),
        }
    }
}
