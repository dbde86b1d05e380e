//! The command line of the manual page, libvirtd(8).
//!
//! Every option has its short and long form; bad options and values are one
//! line on stderr and exit status 1, as the daemon's callers (init scripts,
//! systemd) expect a plain failure rather than clap's usage block.

use std::path::PathBuf;

use clap::Parser;

/// Options of libvirtd(8).
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(
    name = "libvirtd",
    about = "libvirt management daemon (privilege-separated, in Rust)",
    disable_version_flag = true
)]
pub struct Cli {
    /// Run as a daemon & write PID file.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Use this configuration file, overriding the default value.
    #[arg(short = 'f', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listen for TCP/IP connections (not with systemd socket activation).
    #[arg(short = 'l', long = "listen")]
    pub listen: bool,

    /// Use this name for the PID file, overriding the default value.
    #[arg(short = 'p', long = "pid-file", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Exit after this many seconds with no client connections and no running domains.
    #[arg(short = 't', long = "timeout", value_name = "SECONDS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout: Option<u32>,

    /// Enable output of verbose messages (twice: debug messages).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Display version information then exit.
    #[arg(long = "version")]
    pub version: bool,
}

/// What `main` should do after parsing.
#[derive(Debug)]
pub enum Parsed {
    /// Run the daemon.
    Run(Cli),
    /// Print this text to stdout and exit 0 (`--help`, `--version`).
    Print(String),
    /// Print this one line to stderr and exit 1.
    Fail(String),
}

/// Parses `args` (including argv[0]) the way the daemon's `main` does.
pub fn parse<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) if cli.version => Parsed::Print(version_line()),
        Ok(cli) => Parsed::Run(cli),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Parsed::Print(e.to_string()),
        Err(e) => {
            let rendered = e.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let msg = first.strip_prefix("error: ").unwrap_or(first);
            Parsed::Fail(format!("libvirtd: {msg} (see 'libvirtd --help')"))
        }
    }
}

/// The `--version` line.
pub fn version_line() -> String {
    format!("libvirtd ({}) {}\n", crate::PROJECT, crate::VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Parsed {
        parse(std::iter::once("libvirtd").chain(args.iter().copied()))
    }

    #[test]
    fn short_and_long_forms_agree() {
        let short = run(&["-d", "-f", "/c", "-l", "-p", "/p", "-t", "5", "-v"]);
        let long = run(&["--daemon", "--config", "/c", "--listen", "--pid-file", "/p", "--timeout", "5", "--verbose"]);
        match (short, long) {
            (Parsed::Run(a), Parsed::Run(b)) => {
                assert_eq!(a, b);
                assert!(a.daemon && a.listen);
                assert_eq!(a.timeout, Some(5));
                assert_eq!(a.config, Some(PathBuf::from("/c")));
                assert_eq!(a.pid_file, Some(PathBuf::from("/p")));
                assert_eq!(a.verbose, 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_values_fail_in_one_line() {
        for args in [&["--timeout", "soon"][..], &["--bogus"], &["-t", "0"], &["-f"]] {
            match run(args) {
                Parsed::Fail(line) => {
                    assert!(!line.contains('\n'), "{line}");
                    assert!(line.starts_with("libvirtd: "), "{line}");
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn version_names_the_project() {
        match run(&["--version"]) {
            Parsed::Print(s) => {
                assert_eq!(s, format!("libvirtd (libvirtd-rs) {}\n", crate::VERSION))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_lists_every_option() {
        match run(&["-h"]) {
            Parsed::Print(s) => {
                for opt in ["--daemon", "--config", "--listen", "--pid-file", "--timeout", "--verbose", "--version"] {
                    assert!(s.contains(opt), "{opt} missing from help");
                }
            }
            other => panic!("{other:?}"),
        }
    }
}
