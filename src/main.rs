//! The `pgflip` binary: parses arguments, calls the library, renders results and events.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
