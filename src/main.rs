//! The `opencode-manager` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    opencode_manager::cli::run(opencode_manager::cli::Cli::parse())
}
