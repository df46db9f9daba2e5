//! A process killed (SIGKILL) at random points of [`Trainer::save`] leaves the last complete
//! checkpoint loadable.
//!
//! The test re-runs its own binary as a child (`child_saver`, which does nothing unless
//! [`CHILD_VAR`] names a directory): the child loads the checkpoint there if there is one, then
//! steps and saves, forever. The parent, [`ROUNDS`] times: starts a child, waits for its first
//! save, sleeps a random 0–3 save durations (so the kill lands anywhere in a save: serialising,
//! writing the temporary file, syncing it, renaming, syncing the directory), kills it, and
//! checks that the checkpoint loads and that its step grew.
//!
//! A kill during a save leaves that child's `.ckpt.safetensors.tmp-PID`: the next child has
//! another PID, so nothing would ever remove it. The parent counts those (never more than one a
//! kill) and removes them after each round.
mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{data, labels};
use dropit::{Model, Trainer, TrainerConfig};

/// Set (to the checkpoint directory) in the child's environment only.
const CHILD_VAR: &str = "DROPIT_KILL_CHILD";
const CKPT: &str = "ckpt.safetensors";
/// What the child prints after its first save.
const READY: &str = "dropit-kill-child: saved step";
const ROUNDS: usize = 200;
const BATCH: usize = 8;

fn fresh() -> Trainer<'static> {
    let mut cfg = TrainerConfig::sgd_recipe(BATCH, 1000);
    cfg.seed = 3;
    cfg.threads = 1;
    Trainer::new(Model::mlp().unwrap(), cfg).unwrap()
}

/// One step on a batch chosen by the step number.
fn step(t: &mut Trainer<'_>) {
    let s = t.steps();
    let (x, y) = (data(BATCH * 784, s), labels(BATCH, 10, s + (1 << 32)));
    t.step(&x, &y).unwrap();
}

/// The child. Started by the parent with [`CHILD_VAR`] set; returns at once otherwise.
#[test]
fn child_saver() {
    let Some(dir) = std::env::var_os(CHILD_VAR) else {
        return;
    };
    let path = Path::new(&dir).join(CKPT);
    let mut t = if path.exists() {
        Trainer::load(&path).unwrap()
    } else {
        fresh()
    };
    step(&mut t);
    t.save(&path).unwrap();
    println!("{READY} {}", t.steps());
    loop {
        step(&mut t);
        t.save(&path).unwrap();
    }
}

/// xorshift64: the sleeps are the same every run (as fractions of a save's duration).
struct Rng(u64);

impl Rng {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Kills a child that a failed assertion would leave saving forever.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the test's directory, also when an assertion fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn temps(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-"))
        .collect()
}

#[test]
fn killed_saves_leave_the_last_checkpoint() {
    if std::env::var_os(CHILD_VAR).is_some() {
        return;
    }
    let started = Instant::now();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("dropit-kill-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let path = dir.join(CKPT);

    // How long a save takes here (median of 5), the same model as the child's.
    let mut t = fresh();
    step(&mut t);
    let mut saves: Vec<Duration> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            t.save(dir.join("calibrate.safetensors")).unwrap();
            t0.elapsed()
        })
        .collect();
    saves.sort();
    let save = saves[2];
    fs::remove_file(dir.join("calibrate.safetensors")).unwrap();
    drop(t);

    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut last, mut mid_save, mut later_saves) = (0u64, 0usize, 0usize);
    for round in 0..ROUNDS {
        let mut child = Reap(
            Command::new(&exe)
                .args(["--exact", "child_saver", "--nocapture", "--test-threads=1"])
                .env(CHILD_VAR, &dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        // Wait for this child's first save.
        let mut out = BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        let ready: u64 = loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "round {round}: the child ended before saving: {:?}",
                    child.0.wait()
                );
            }
            // After libtest's `test child_saver ... ` on the same line.
            if let Some((_, s)) = line.split_once(READY) {
                break s.trim().parse().unwrap();
            }
        };
        assert!(
            ready > last,
            "round {round}: child saved step {ready} after {last}"
        );
        std::thread::sleep(save.mul_f64(3.0 * rng.unit()));
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "round {round}: {status}");
        }
        #[cfg(not(unix))]
        let _ = status;

        let stray = temps(&dir);
        assert!(stray.len() <= 1, "round {round}: {stray:?}");
        mid_save += stray.len();
        let t = Trainer::load(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(t.steps() >= ready, "round {round}: {} < {ready}", t.steps());
        later_saves += usize::from(t.steps() > ready);
        last = t.steps();
        for p in stray {
            fs::remove_file(p).unwrap();
        }
    }
    let entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries, std::slice::from_ref(&path));
    println!(
        "{ROUNDS} kills, {mid_save} with a temporary file left (mid-save), {later_saves} after a \
         second save had completed; a save takes {save:.1?}; checkpoint at step {last}; {:.1?} \
         in all",
        started.elapsed()
    );
}
