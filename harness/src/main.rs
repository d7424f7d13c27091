//! The `harness` binary. Exit codes: 0 success, 1 some run failed, 2 bad input.
use clap::Parser;

fn main() {
    restore_sigpipe();
    harness::env::preload_cuda();
    let cli = harness::cli::Cli::parse();
    let code = match harness::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if harness::error::is_input_error(&e) { 2 } else { 1 }
        }
    };
    std::process::exit(code);
}

/// Rust ignores SIGPIPE, which turns `harness report ... | head` into a panic on the next print;
/// the default action ends the process quietly, as for any Unix filter.
fn restore_sigpipe() {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: called first thing in main, before any thread exists.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}
