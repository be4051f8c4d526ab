//! The `multigate` binary: see `cli`.

mod cli;

// glibc malloc page-faults on every large temporary; mimalloc is 3.5x faster on big tables.
// Wrapped to count allocations, which `bench` reports per step.
#[global_allocator]
static GLOBAL: cli::CountingAlloc = cli::CountingAlloc(mimalloc::MiMalloc);

extern "C" {
    /// mimalloc's `mi_option_set` (linked in by the `mimalloc` crate).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v2 and v3: how long freed memory waits before it
/// goes back to the OS. Training frees and reallocates the same large buffers every
/// step; returning them makes each step page-fault them in again (8% of a step).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[cfg(unix)]
extern "C" {
    /// libc's `signal`, to restore SIGPIPE's default action.
    fn signal(signum: std::ffi::c_int, handler: usize) -> usize;
}

fn main() -> std::process::ExitCode {
    // SAFETY: sets a plain integer option of the allocator; no memory is involved.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // A closed pipe (`multigate predict ... | head`) ends the process quietly, as it does
    // for other command-line tools, instead of a failed write panicking. SIGPIPE is 13
    // and SIG_DFL is 0 on Linux and macOS.
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition to the default before any thread starts.
    unsafe {
        signal(13, 0)
    };
    cli::run()
}
