//! Checkpoint files, written atomically: a temporary file in the same directory, synced,
//! renamed over the target, and the directory synced — so a crash leaves the old file or the
//! new one, never a mix.

use std::format;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::string::ToString;

use crate::error::{Error, Result};
use crate::trainer::Trainer;

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Checkpoint {
        what: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.unwrap_or_else(|| "checkpoint".into()),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename is durable once the directory is (where directories can be opened).
        if let Ok(d) = File::open(dir) {
            d.sync_all()?;
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path, e)
    })
}

impl Trainer<'_> {
    /// Writes [`Trainer::checkpoint`] to `path` atomically (temporary file, fsync, rename,
    /// fsync of the directory).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.checkpoint()?)
    }

    /// Loads weights only (see [`Trainer::load_weights`]) from a safetensors file.
    pub fn load_weights_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let p = path.as_ref();
        self.load_weights(&fs::read(p).map_err(|e| io(p, e))?)
    }
}

impl Trainer<'static> {
    /// Loads a checkpoint file written by [`Trainer::save`] (see [`Trainer::from_checkpoint`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        Trainer::from_checkpoint(&fs::read(p).map_err(|e| io(p, e))?)
    }
}
