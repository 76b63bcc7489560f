//! The `stress` command; everything lives in the library so tests can drive it.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(stress::main_from_args(std::env::args_os()))
}
