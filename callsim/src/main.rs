//! `callsim` CLI: see `callsim --help`.

fn main() -> std::process::ExitCode {
    callsim::cli::main()
}
