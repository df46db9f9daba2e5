//! The firmware proper (Cortex-M only): see `main.rs`.

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use dropit_cortex_m4::{Samples, evaluate, fine_tune, tiny, trainer};

/// The trainer's arena: the plan must fit (`Trainer::with_arena` says so if not).
const ARENA: usize = 224 * 1024;
static mut ARENA_BUF: [u8; ARENA] = [0; ARENA];
/// One normalized batch.
static mut X: [f32; tiny::BATCH * tiny::PIXELS] = [0.0; tiny::BATCH * tiny::PIXELS];

/// The pre-trained weights: a safetensors checkpoint written on the desktop.
static WEIGHTS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weights.safetensors"));
static TUNE_IMAGES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tune-images.bin"));
static TUNE_LABELS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tune-labels.bin"));
static TEST_IMAGES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test-images.bin"));
static TEST_LABELS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test-labels.bin"));

/// SysTick wraps (each 2²⁴ ticks).
static WRAPS: AtomicU32 = AtomicU32::new(0);
/// Emulated instructions per SysTick tick: with `-icount shift=0` an instruction takes 1 ns of
/// virtual time, and the MPS2's SysTick runs at its 25 MHz system clock.
const INSNS_PER_TICK: u64 = 40;
const RELOAD: u32 = 0x00FF_FFFF;

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Emulated instructions since SysTick started.
fn instructions() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let v = cortex_m::peripheral::SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == w {
            return (w as u64 * (RELOAD as u64 + 1) + (RELOAD - v) as u64) * INSNS_PER_TICK;
        }
    }
}

unsafe extern "C" {
    static mut __sheap: u32;
    static _stack_start: u32;
    static __sdata: u32;
    static __ebss: u32;
}

const PAINT: u32 = 0xDEAD_BEEF;

/// Paints the free stack below the current frame (minus a margin) with [`PAINT`].
#[inline(never)]
fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize - 256;
    let mut p = addr_of_mut!(__sheap) as usize;
    while p < sp {
        // SAFETY: [__sheap, sp) is RAM between the end of static data and the live stack,
        // which nothing else uses (there is no heap); words are aligned.
        unsafe { (p as *mut u32).write_volatile(PAINT) };
        p += 4;
    }
}

/// Bytes of stack ever used: from the top down to the lowest overwritten painted word.
fn stack_high_water() -> usize {
    let top = &raw const _stack_start as usize;
    let mut p = addr_of_mut!(__sheap) as usize;
    // SAFETY: reads aligned words of the painted region, which is RAM.
    while p < top && unsafe { (p as *const u32).read_volatile() } == PAINT {
        p += 4;
    }
    top - p
}

fn fail(what: &str, e: dropit::Error) -> ! {
    hprintln!("error: {}: {}", what, e);
    debug::exit(debug::EXIT_FAILURE);
    halt()
}

/// Waits forever (after a semihosting exit, qemu has already stopped).
fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

#[entry]
fn main() -> ! {
    paint_stack();
    let mut cp = cortex_m::Peripherals::take().unwrap_or_else(|| halt());
    cp.SYST.set_clock_source(SystClkSource::Core);
    cp.SYST.set_reload(RELOAD);
    cp.SYST.clear_current();
    cp.SYST.enable_interrupt();
    cp.SYST.enable_counter();

    let tune = Samples {
        images: TUNE_IMAGES,
        labels: TUNE_LABELS,
    };
    let test = Samples {
        images: TEST_IMAGES,
        labels: TEST_LABELS,
    };
    // SAFETY: `main` runs once and these statics are used nowhere else.
    let (arena, x) = unsafe { (&mut *addr_of_mut!(ARENA_BUF), &mut *addr_of_mut!(X)) };

    let mut t = trainer(arena, WEIGHTS).unwrap_or_else(|e| fail("trainer", e));
    let r = t.memory_report();
    hprintln!(
        "plan: {} B of a {} B arena: params {} | grads {} | optimizer {} | running stats {} | saved {} | activations {} | scratch {}",
        r.total,
        ARENA,
        r.params,
        r.grads,
        r.optimizer,
        r.state,
        r.saved,
        r.activations,
        r.scratch
    );
    let before = evaluate(&mut t, test, x).unwrap_or_else(|e| fail("evaluate", e));
    hprintln!(
        "before: held-out accuracy {}/{} = {:.2}%, loss {:.4}",
        before.correct,
        before.samples,
        before.percent(),
        before.loss
    );
    let (mut first, mut total, mut last_at, mut steps) = (0u64, 0u64, instructions(), 0u64);
    let last = fine_tune(&mut t, tune, x, |i, loss| {
        let now = instructions();
        let d = now - last_at;
        last_at = now;
        if i == 0 {
            first = d;
        }
        total += d;
        steps += 1;
        if i % 32 == 0 {
            hprintln!("step {}: loss {:.4} ({} instructions)", i, loss, d);
        }
    })
    .unwrap_or_else(|e| fail("fine-tune", e));
    let after = evaluate(&mut t, test, x).unwrap_or_else(|e| fail("evaluate", e));
    hprintln!(
        "after: held-out accuracy {}/{} = {:.2}%, loss {:.4} (final training loss {:.4})",
        after.correct,
        after.samples,
        after.percent(),
        after.loss,
        last
    );
    let statics = &raw const __ebss as usize - &raw const __sdata as usize;
    let stack = stack_high_water();
    hprintln!(
        "instructions per step: {} mean over {} steps (first {})",
        total / steps.max(1),
        steps,
        first
    );
    hprintln!(
        "RAM: static {} B (.data + .bss, the arena included), stack high-water {} B, total {} B of 327680",
        statics,
        stack,
        statics + stack
    );
    let improved = after.correct > before.correct;
    hprintln!(
        "result: accuracy {}",
        if improved {
            "improved"
        } else {
            "did not improve"
        }
    );
    debug::exit(if improved {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    halt()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    halt()
}
