//! The `lsm` command-line tool; everything lives in `lsm_client::cli`.

fn main() -> std::process::ExitCode {
    lsm_client::cli::main()
}
