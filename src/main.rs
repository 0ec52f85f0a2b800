//! The `hookops` binary: argument parsing and exit codes only; everything else is the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = hookops::cli::Cli::parse();
    match hookops::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors go to stderr as one sentence (or one line per problem for invalid files).
            eprintln!("hookops: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
