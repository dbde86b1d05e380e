//! The access table in `policy/procedures.tsv` is the daemon's: every
//! procedure of libvirt 9.0 has a row, the served ones are those it
//! dispatches, and the rows agree with libvirt 9.0's own read-only rules.

use libvirtd::rpc::remote::{Access, LIBVIRT_PROCS, ProcStatus, RemoteProc};

/// Procedures whose public API refuses a read-only connection in libvirt 9.0
/// (`virCheckReadOnlyGoto` called unconditionally in `src/libvirt-*.c`; spec
/// section 6.4, plus 366, 390, 396, 418 and 439, which it missed). 14
/// (GetXMLDesc), 186, 388 and 412 (their kin) refuse only with SECURE, 200
/// (GetVcpusFlags) only with GUEST and 353 (InterfaceAddresses) only from the
/// AGENT, and are left out.
const LIBVIRT_READ_WRITE: &[i32] = &[
    8, 9, 10, 11, 12, 13, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 39, 40, 41, 42, 48, 49, 53, 54, 55, 58, 61, 62, 63,
    75, 76, 77, 78, 79, 80, 81, 82, 83, 90, 93, 94, 103, 104, 108, 109, 118, 119, 120, 123, 124, 125, 131, 132, 133,
    134, 135, 136, 142, 144, 145, 146, 148, 160, 161, 164, 165, 166, 174, 180, 181, 182, 184, 185, 192, 193, 196, 197,
    199, 201, 204, 205, 207, 208, 209, 210, 211, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 225, 226, 231, 232,
    233, 234, 235, 236, 237, 239, 240, 242, 245, 249, 250, 251, 252, 254, 256, 258, 259, 260, 261, 264, 266, 267, 277,
    279, 288, 290, 291, 294, 295, 296, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 334, 335, 336, 337, 338,
    342, 343, 345, 347, 349, 350, 352, 355, 356, 357, 358, 364, 366, 371, 372, 384, 386, 389, 390, 392, 393, 394, 395,
    396, 399, 400, 402, 406, 408, 410, 411, 417, 418, 420, 421, 424, 425, 427, 428, 429, 430, 431, 432, 433, 434, 437,
    439, 440, 441, 442, 443,
];

fn table() -> Vec<(i32, String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/procedures.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0].parse().unwrap(), c[1].to_owned(), c[2].to_owned())
        })
        .collect()
}

#[test]
fn every_dispatched_procedure_has_exactly_one_row() {
    let rows = table();
    for &p in RemoteProc::ALL {
        let matching: Vec<_> = rows.iter().filter(|(n, ..)| *n == p as i32).collect();
        assert_eq!(matching.len(), 1, "{p:?} must have one row in policy/procedures.tsv");
        assert_eq!(matching[0].1, p.name());
        let want = if p.access() == Access::ReadOnly { "read-only" } else { "read-write" };
        assert_eq!(matching[0].2, want, "{p:?}");
    }
    // libvirt 9.0's REMOTE program runs from 1 to 443 with no gaps.
    let numbers: Vec<i32> = rows.iter().map(|(n, ..)| *n).collect();
    assert_eq!(numbers, (1..=443).collect::<Vec<i32>>());
    assert_eq!(LIBVIRT_PROCS.len(), rows.len());
    let served = LIBVIRT_PROCS.iter().filter(|e| e.status == ProcStatus::Served).count();
    assert_eq!(served, RemoteProc::ALL.len(), "a served row with no procedure behind it");
}

#[test]
fn the_table_agrees_with_libvirts_read_only_rules() {
    for e in LIBVIRT_PROCS.iter().filter(|e| matches!(e.status, ProcStatus::Served | ProcStatus::Unsupported)) {
        let libvirt_rw = LIBVIRT_READ_WRITE.contains(&e.number);
        assert_eq!(e.access == Access::ReadWrite, libvirt_rw, "{e:?} disagrees with libvirt 9.0");
    }
}

#[test]
fn read_only_procedures_never_take_a_host_path() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/procedures.tsv")).unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let c: Vec<&str> = line.split_whitespace().collect();
        assert!(!(c[2] == "read-only" && c[3] == "path"), "{line}");
    }
}
