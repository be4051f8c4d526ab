//! The `multigate` binary: see `cli`.

mod cli;

// glibc malloc page-faults on every large temporary; mimalloc is 3.5x faster on big tables.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run()
}
