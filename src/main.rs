//! `libvirtd`: the broker by default, the frontend when the broker execs it.

use std::process::ExitCode;

use libvirtd::cli::{self, Parsed};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == libvirtd::frontend::FRONTEND_ARG) {
        return libvirtd::frontend::main();
    }
    match cli::parse(std::env::args_os()) {
        Parsed::Print(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Parsed::Fail(line) => {
            eprintln!("{line}");
            ExitCode::FAILURE
        }
        Parsed::Run(cli) => libvirtd::broker::run(cli),
    }
}
