//! A [`Backend`] that runs the device kernels on the host: `src/cuda/kernels/` compiled with
//! the host's C++ compiler against an emulation of CUDA's thread model (`tests/cuda_emu/`), the
//! dense products by matrixmultiply. It checks the device trainer's launch sequences, offsets and
//! kernels' logic on any machine; not CUDA's memory model or speed.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use dropit::Result;
use dropit::device::{Arg, Backend, Gemm, Grid};

type Launch = unsafe extern "C" fn(*const std::ffi::c_char, u32, u32, *const u64, usize) -> i32;

/// The emulated device: the kernels' library and one block of host memory.
pub struct Emulated {
    _lib: libloading::Library,
    launch: Launch,
    mem: Vec<u64>,
    /// `mem`'s first word: every access goes through this pointer.
    base: *mut u64,
    bytes: usize,
}

/// The kernels' library built into `dir`; why not where there is no C++20 compiler. A compiler
/// that takes C++20 but fails on the sources is a test failure, not a skip.
pub fn build(dir: &Path) -> std::result::Result<PathBuf, String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    std::fs::create_dir_all(dir).unwrap();
    let probe = dir.join("probe.cpp");
    std::fs::write(
        &probe,
        "#include <barrier>\nint main() { std::barrier<> b(1); }\n",
    )
    .unwrap();
    let cxx20 = Command::new(&cxx)
        .args(["-std=c++20", "-pthread", "-o"])
        .arg(dir.join("probe"))
        .arg(&probe)
        .output()
        .map_err(|e| format!("no C++ compiler ({cxx}: {e})"))?;
    if !cxx20.status.success() {
        return Err(format!("{cxx} has no C++20 <barrier>"));
    }
    // The library is loaded into this process: it must be built for this architecture (not so
    // under qemu, where the host's compiler builds for the host).
    let machine = Command::new(&cxx).arg("-dumpmachine").output();
    let machine = machine.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Ok(m) = machine
        && !m.starts_with(std::env::consts::ARCH)
    {
        return Err(format!(
            "{cxx} builds for {m}, this test runs on {}",
            std::env::consts::ARCH
        ));
    }
    let out = dir.join("libdropit_emu.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu/backend.cpp");
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-w", "-ffp-contract=off"])
        .args(["-shared", "-fPIC"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the emulated kernels do not build:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    Ok(out)
}

/// The emulated backend, its library built once per test binary; `None` (having printed one
/// SKIP line) where there is no C++20 compiler.
pub fn backend() -> Option<Emulated> {
    static LIB: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let lib = LIB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dropit-device-emu-{}", std::process::id()));
        match build(&dir) {
            Ok(lib) => Some(lib),
            Err(why) => {
                println!("SKIP the device under emulation: {why}");
                None
            }
        }
    });
    lib.as_deref().map(Emulated::new)
}

impl Emulated {
    /// The backend over the library at `lib` (from [`build`]).
    pub fn new(lib: &Path) -> Emulated {
        // SAFETY: the library is ours (tests/cuda_emu/backend.cpp); loading runs only its
        // static initializers.
        let lib = unsafe { libloading::Library::new(lib) }.unwrap();
        // SAFETY: `emu_launch` has this signature in backend.cpp.
        let launch = *unsafe { lib.get::<Launch>(b"emu_launch\0") }.unwrap();
        Emulated {
            _lib: lib,
            launch,
            mem: Vec::new(),
            base: std::ptr::null_mut(),
            bytes: 0,
        }
    }

    fn check(&self, at: usize, len: usize) -> Result<()> {
        match at.checked_add(len) {
            Some(end) if end <= self.bytes => Ok(()),
            _ => Err(dropit::Error::Gpu(format!(
                "{len} bytes at {at} of a block of {}",
                self.bytes
            ))),
        }
    }

    fn f32_at(&self, addr: u64) -> *mut f32 {
        addr as *mut f32
    }
}

impl Backend for Emulated {
    fn allocate(&mut self, bytes: usize) -> Result<()> {
        self.mem = vec![0u64; bytes.div_ceil(8).max(1)];
        self.base = self.mem.as_mut_ptr();
        self.bytes = bytes;
        Ok(())
    }

    fn base(&self) -> u64 {
        self.base as u64
    }

    fn len(&self) -> usize {
        self.bytes
    }

    fn write(&mut self, at: usize, bytes: &[u8]) -> Result<()> {
        self.check(at, bytes.len())?;
        // SAFETY: inside the block (checked); `bytes` is host memory apart from it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.base as *mut u8).add(at),
                bytes.len(),
            )
        };
        Ok(())
    }

    fn read(&self, at: usize, out: &mut [u8]) -> Result<()> {
        self.check(at, out.len())?;
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base as *const u8).add(at),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    fn zero(&mut self, at: usize, len: usize) -> Result<()> {
        self.check(at, len)?;
        // SAFETY: inside the block (checked).
        unsafe { std::ptr::write_bytes((self.base as *mut u8).add(at), 0, len) };
        Ok(())
    }

    unsafe fn launch(&mut self, name: &str, grid: Grid, args: &[Arg]) -> Result<()> {
        // Small blocks, and few, where the threads synchronize: each is an OS thread here,
        // started per launch (the kernels take any block and grid size).
        let (g, b) = match grid {
            Grid::Items(n) => (n.div_ceil(256).max(1) as u32, 256),
            Grid::Strided(n) => (n.div_ceil(8).clamp(1, 3) as u32, 8),
            Grid::OneBlock => (1, 8),
        };
        let words: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) | Arg::U64(p) => p,
                Arg::I32(v) => v as u32 as u64,
                Arg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let c = CString::new(name).unwrap();
        // SAFETY: the caller's contract (the arguments are the kernel's, addresses inside the
        // block with room for what it touches).
        let rc = unsafe { (self.launch)(c.as_ptr(), g, b, words.as_ptr(), words.len()) };
        match rc {
            0 => Ok(()),
            1 => Err(dropit::Error::Gpu(format!("no kernel {name}"))),
            _ => Err(dropit::Error::Gpu(format!(
                "{name}: {} arguments is not its count",
                args.len()
            ))),
        }
    }

    unsafe fn gemm(&mut self, g: &Gemm) -> Result<()> {
        // Column-major with leading dimensions, as strides (a transposed operand swaps them).
        let strides = |t: bool, ld: usize| match t {
            true => (ld as isize, 1),
            false => (1, ld as isize),
        };
        let ((rsa, csa), (rsb, csb)) = (strides(g.trans_a, g.a.1), strides(g.trans_b, g.b.1));
        for at in 0..g.batch {
            let [sa, sb, sc] = g.strides.map(|s| s * at);
            // SAFETY: the caller's contract (every matrix of every product inside the block
            // under its leading dimension and strides).
            unsafe {
                matrixmultiply::sgemm(
                    g.m,
                    g.k,
                    g.n,
                    g.alpha,
                    self.f32_at(g.a.0).add(sa),
                    rsa,
                    csa,
                    self.f32_at(g.b.0).add(sb),
                    rsb,
                    csb,
                    g.beta,
                    self.f32_at(g.c.0).add(sc),
                    1,
                    g.c.1 as isize,
                )
            };
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
