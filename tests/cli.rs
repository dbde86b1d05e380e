//! The manual page's command line, run as a user would run it.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_libvirtd");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_prints_the_project_and_exits_zero() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("libvirtd (libvirtd-rs) {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_describes_every_option_in_both_forms() {
    for flag in ["-h", "--help"] {
        let (code, out, _) = run(&[flag]);
        assert_eq!(code, 0);
        for opt in [
            "-d, --daemon",
            "-f, --config",
            "-l, --listen",
            "-p, --pid-file",
            "-t, --timeout",
            "-v, --verbose",
            "--version",
        ] {
            assert!(out.contains(opt), "{opt} missing from:\n{out}");
        }
    }
}

#[test]
fn bad_options_and_values_fail_with_one_line_and_status_1() {
    for args in [&["--no-such-option"][..], &["-t", "soon"], &["--timeout", "-3"], &["-f"], &["extra"]] {
        let (code, out, err) = run(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty());
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("libvirtd: "), "{err}");
    }
}

#[test]
fn a_missing_config_file_given_with_f_is_an_error_naming_it() {
    let (code, _, err) = run(&["-f", "/nonexistent/libvirtd.conf", "-p", "/nonexistent/pid"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/libvirtd.conf"), "{err}");
}

#[test]
fn a_bad_config_value_is_rejected_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.conf");
    std::fs::write(&conf, "tcp_port = \"many\"\n").unwrap();
    let (code, _, err) = run(&["-f", conf.to_str().unwrap(), "-p", dir.path().join("p").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("'tcp_port'"), "{err}");
}
