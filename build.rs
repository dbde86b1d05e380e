//! Compiles the seccomp policy in `policy/seccomp/*.json` into BPF at build time.
//!
//! The policy is reviewed data, not code: every rule must carry a `comment`
//! naming its caller, or the build fails. Each `<process>.json` key becomes one
//! variant of the generated `PolicyFilter` enum (`frontend.json` key `main` ->
//! `FrontendMain`), which `src/sandbox/seccomp.rs` maps exhaustively onto the
//! threads the code actually runs, so a thread without a filter, or a filter
//! without a thread, does not compile. Debug and release builds get the same
//! filters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use seccompiler::{BpfMap, TargetArch};

fn main() {
    seccomp_filters();
    procedure_table();
    admin_procedure_table();
}

/// One row of `policy/procedures.tsv`.
struct ProcRow {
    number: i32,
    variant: String,
    name: String,
    access: &'static str,
    api: String,
    family: String,
    status: &'static str,
}

/// Generates `rpc::RemoteProc` (the procedures served here) and
/// `rpc::remote::LIBVIRT_PROCS` (every procedure of libvirt 9.0) from
/// `policy/procedures.tsv`, refusing a table that contradicts itself.
fn procedure_table() {
    let path = Path::new("policy/procedures.tsv");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path).expect("policy/procedures.tsv");
    let mut rows: Vec<ProcRow> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = i + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [number, name, access, args, api, family, status] = cols[..] else {
            panic!("procedures.tsv:{at}: expected 7 columns");
        };
        let number: i32 = number.parse().unwrap_or_else(|_| panic!("procedures.tsv:{at}: bad number"));
        let access = match access {
            "read-only" => "ReadOnly",
            "read-write" => "ReadWrite",
            other => panic!("procedures.tsv:{at}: unknown access class {other}"),
        };
        let status = match status {
            "served" => "Served",
            "unsupported" => "Unsupported",
            "event" => "Event",
            "auth" => "Auth",
            other => panic!("procedures.tsv:{at}: unknown status {other}"),
        };
        if access == "ReadOnly" && args == "path" {
            panic!("procedures.tsv:{at}: read-only procedure {name} takes a host path");
        }
        match status {
            "Served" | "Unsupported" => {
                assert!(api.starts_with("vir"), "procedures.tsv:{at}: {name} names no API");
                // Only a served read-only procedure that is the daemon's own
                // (AUTH_LIST) may have no family: no error of the API's is sent.
                let own = status == "Served" && access == "ReadOnly" && family == "-";
                assert!(own || FAMILIES.contains(&family), "procedures.tsv:{at}: unknown family {family}");
            }
            _ => assert!(
                api == "-" && family == "-" && access == "ReadOnly",
                "procedures.tsv:{at}: {name} reaches no API: api and family are '-', access read-only"
            ),
        }
        if status != "Served" {
            assert_eq!(args, "-", "procedures.tsv:{at}: {name} is not served, so it decodes no arguments");
        }
        if let Some(last) = rows.last() {
            assert!(last.number < number, "procedures.tsv:{at}: numbers must ascend ({number} after {})", last.number);
        }
        rows.push(ProcRow {
            number,
            variant: camel(&name.to_ascii_lowercase()),
            name: name.to_owned(),
            access,
            api: api.to_owned(),
            family: family.to_owned(),
            status,
        });
    }
    let served: Vec<&ProcRow> = rows.iter().filter(|r| r.status == "Served").collect();
    let mut out = String::new();
    out.push_str("/// Every REMOTE procedure the daemon serves (`served` in `policy/procedures.tsv`).\n");
    out.push_str("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]\npub enum RemoteProc {\n");
    for r in &served {
        let _ = writeln!(out, "    /// `REMOTE_PROC_{}`.\n    {} = {},", r.name, r.variant, r.number);
    }
    out.push_str(
        "}\n\nimpl RemoteProc {\n    /// Every served procedure.\n    pub const ALL: &'static [RemoteProc] = &[",
    );
    for r in &served {
        let _ = write!(out, "RemoteProc::{}, ", r.variant);
    }
    out.push_str("];\n\n    /// The procedure with this number, if the daemon serves it.\n");
    out.push_str("    pub fn from_number(n: i32) -> Option<RemoteProc> {\n        match n {\n");
    for r in &served {
        let _ = writeln!(out, "            {} => Some(RemoteProc::{}),", r.number, r.variant);
    }
    out.push_str("            _ => None,\n        }\n    }\n\n    /// Its row of the table.\n");
    out.push_str("    pub fn entry(self) -> &'static ProcEntry {\n        match self {\n");
    for r in &served {
        let index = rows.iter().position(|x| x.number == r.number).expect("served rows are rows");
        let _ = writeln!(out, "            RemoteProc::{} => &LIBVIRT_PROCS[{index}],", r.variant);
    }
    out.push_str("        }\n    }\n}\n\n");
    out.push_str("/// Every REMOTE procedure of libvirt 9.0, by ascending number (`policy/procedures.tsv`).\n");
    out.push_str("pub static LIBVIRT_PROCS: &[ProcEntry] = &[\n");
    for r in &rows {
        let family = if r.family == "-" { "Daemon".to_owned() } else { camel(&r.family) };
        let _ = writeln!(
            out,
            "    ProcEntry {{ number: {}, name: \"{}\", access: Access::{}, api: \"{}\", family: ApiFamily::{family}, status: ProcStatus::{} }},",
            r.number, r.name, r.access, r.api, r.status
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("procedures.rs");
    std::fs::write(dest, out).expect("writable OUT_DIR");
}

/// Generates `rpc::admin::AdminProc` (every ADMIN procedure, its number,
/// name, API and where it is answered) from `policy/admin_procedures.tsv`.
fn admin_procedure_table() {
    let path = Path::new("policy/admin_procedures.tsv");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path).expect("policy/admin_procedures.tsv");
    let mut rows: Vec<(i32, String, String, bool, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = i + 1;
        let [number, name, answered, api] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("admin_procedures.tsv:{at}: expected 4 columns");
        };
        let number: i32 = number.parse().unwrap_or_else(|_| panic!("admin_procedures.tsv:{at}: bad number"));
        let forwarded = match answered {
            "frontend" => false,
            "broker" => true,
            other => panic!("admin_procedures.tsv:{at}: answered by {other}? (frontend or broker)"),
        };
        assert!(api.starts_with("virAdm"), "admin_procedures.tsv:{at}: {name} names no admin API");
        if let Some(last) = rows.last() {
            assert!(last.0 < number, "admin_procedures.tsv:{at}: numbers must ascend ({number} after {})", last.0);
        }
        rows.push((number, camel(&name.to_ascii_lowercase()), name.to_owned(), forwarded, api.to_owned()));
    }
    let mut out = String::new();
    out.push_str("/// ADMIN procedures, by number (`policy/admin_procedures.tsv`).\n");
    out.push_str("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]\npub enum AdminProc {\n");
    for (number, variant, name, _, _) in &rows {
        let _ = writeln!(out, "    /// `ADMIN_PROC_{name}`.\n    {variant} = {number},");
    }
    let _ = write!(
        out,
        "}}\n\nimpl AdminProc {{\n    /// Every procedure, in number order.\n    pub const ALL: [AdminProc; {}] = [",
        rows.len()
    );
    for (_, variant, ..) in &rows {
        let _ = write!(out, "AdminProc::{variant}, ");
    }
    out.push_str("];\n\n    /// The procedure numbered `n`.\n    pub fn from_number(n: i32) -> Option<AdminProc> {\n        match n {\n");
    for (number, variant, ..) in &rows {
        let _ = writeln!(out, "            {number} => Some(AdminProc::{variant}),");
    }
    out.push_str("            _ => None,\n        }\n    }\n\n");
    out.push_str(
        "    /// The public C API it implements.\n    pub fn api(self) -> &'static str {\n        match self {\n",
    );
    for (_, variant, _, _, api) in &rows {
        let _ = writeln!(out, "            AdminProc::{variant} => \"{api}\",");
    }
    out.push_str("        }\n    }\n\n");
    out.push_str("    /// Whether the frontend forwards it to the broker (an `AdminCall`) rather than answering it.\n");
    out.push_str("    pub fn forwarded(self) -> bool {\n        match self {\n");
    for (_, variant, _, forwarded, _) in &rows {
        let _ = writeln!(out, "            AdminProc::{variant} => {forwarded},");
    }
    out.push_str("        }\n    }\n}\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("admin_procedures.rs");
    std::fs::write(dest, out).expect("writable OUT_DIR");
}

/// The `family` values of `policy/procedures.tsv`: libvirt's `src/libvirt-<family>.c`.
const FAMILIES: [&str; 11] = [
    "domain",
    "host",
    "storage",
    "network",
    "nodedev",
    "interface",
    "snapshot",
    "nwfilter",
    "secret",
    "checkpoint",
    "libvirt",
];

fn seccomp_filters() {
    let dir = Path::new("policy/seccomp");
    println!("cargo:rerun-if-changed={}", dir.display());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => TargetArch::x86_64,
        Ok("aarch64") => TargetArch::aarch64,
        other => panic!("no seccomp policy for target architecture {other:?}"),
    };

    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("policy/seccomp must exist")
        .map(|e| e.expect("readable policy dir").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();

    let mut filters: BTreeMap<String, Vec<(u16, u8, u8, u32)>> = BTreeMap::new();
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let process = path.file_stem().and_then(|s| s.to_str()).expect("utf-8 file name");
        let text = std::fs::read_to_string(path).expect("readable policy file");
        require_comments(path, &text);
        let map: BpfMap =
            seccompiler::compile_from_json(text.as_bytes(), arch).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (thread, program) in map {
            let insns = program.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect();
            filters.insert(format!("{}{}", camel(process), camel(&thread)), insns);
        }
    }

    let mut out = String::new();
    out.push_str("/// One variant per `<process>.json` key in `policy/seccomp/`.\n");
    out.push_str("#[derive(Clone, Copy, Debug, PartialEq, Eq)]\npub enum PolicyFilter {\n");
    for name in filters.keys() {
        let _ = writeln!(out, "    /// Compiled from `policy/seccomp/`.\n    {name},");
    }
    out.push_str("}\n\nimpl PolicyFilter {\n");
    out.push_str("    /// Every compiled filter.\n    pub const ALL: &'static [PolicyFilter] = &[");
    for name in filters.keys() {
        let _ = write!(out, "PolicyFilter::{name}, ");
    }
    out.push_str("];\n\n");
    out.push_str("    /// BPF instructions as (code, jt, jf, k).\n");
    out.push_str("    pub fn instructions(self) -> &'static [(u16, u8, u8, u32)] {\n        match self {\n");
    for (name, insns) in &filters {
        let _ = writeln!(out, "            PolicyFilter::{name} => &{insns:?},");
    }
    out.push_str("        }\n    }\n}\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("seccomp_filters.rs");
    std::fs::write(dest, out).expect("writable OUT_DIR");
}

/// Fails the build when a rule has no `comment`: an unexplained syscall is not reviewable.
fn require_comments(path: &Path, text: &str) {
    let doc: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let threads = doc.as_object().unwrap_or_else(|| panic!("{}: not an object", path.display()));
    for (thread, filter) in threads {
        let rules = filter["filter"].as_array().unwrap_or_else(|| panic!("{thread}: no filter"));
        for rule in rules {
            let commented = rule.get("comment").and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty());
            if !commented {
                panic!("{}: {thread}: rule {} has no comment", path.display(), rule["syscall"]);
            }
        }
    }
}

fn camel(s: &str) -> String {
    s.split(['_', '-'])
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}
