//! The `harness` binary. Exit codes: 0 success, 1 some run failed, 2 bad input.
use clap::Parser;

fn main() {
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
