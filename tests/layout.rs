//! The README's code map is a promise: every path it names exists.

use std::path::Path;

#[test]
fn every_path_in_the_code_map_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let map = readme.split("### Code map").nth(1).expect("README has a code map");
    let mut checked = 0;
    for line in map.lines().take_while(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix("- `") else {
            continue;
        };
        let path = rest.split('`').next().unwrap();
        assert!(root.join(path).exists(), "README names {path}, which does not exist");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} entries found");
}

#[test]
fn every_source_module_is_in_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for entry in std::fs::read_dir(root.join("src")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "lib.rs" {
            continue;
        }
        let shown = if entry.path().is_dir() { format!("`src/{name}/`") } else { format!("`src/{name}`") };
        assert!(readme.contains(&shown), "{shown} is missing from the README's code map");
    }
}

#[test]
fn the_man_pages_render() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let have_man = std::process::Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_man {
        assert!(!ci, "CI requires man (tests/run installs man-db)");
        eprintln!("not run here: needs man");
        return;
    }
    for page in ["man/libvirtd.8", "man/libvirtd.conf.5"] {
        let out = std::process::Command::new("man")
            .args(["-l", "-Tutf8"])
            .arg(root.join(page))
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{page}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("libvirtd"), "{page} rendered empty");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(!warnings.contains("warning"), "{page}: {warnings}");
    }
}
