//! `lsm-server`: parses the command line and hands it to [`lsm_server::cli::main`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    lsm_server::cli::main(lsm_server::cli::Cli::parse())
}
