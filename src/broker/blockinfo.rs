//! The disk calls: `virDomainGetBlockInfo` (from the image itself), and
//! `virDomainBlockStats(Flags)` and `virDomainGetDiskErrors` for a running
//! guest with disks, from its helper's counters.
//!
//! The counters are asked of the helper (`HelperCommand::DiskStats`,
//! through its queue of questions, `helper_asks.rs`) and the clients
//! answered when its `DiskStats` event comes through the event loop, or
//! with an error at the deadline: the broker never waits on a helper.
//! Clients that ask while a `DiskStats` is out wait for the same answer.

use std::time::Instant;

use super::calls::{Answer, Caller, Ctx};
use super::helper_asks::{self, ASK_TIMEOUT, Question as Asked, Reply};
use crate::domain::{DomainDef, LiveDisk, Uuid};
use crate::privsep::admin::{Param, ParamValue};
use crate::privsep::helper::DiskCounters;
use crate::privsep::{Call, CallError, CallValue};
use crate::rpc::stats as limits;
/// `VIR_TYPED_PARAM_STRING_OKAY`.
const STRING_OKAY: u32 = 4;
/// `virDomainDiskErrorCode`: UNSPEC, NO_SPACE.
const DISK_ERROR_UNSPEC: i32 = 1;
const DISK_ERROR_NO_SPACE: i32 = 2;

/// What a waiting client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// `virDomainBlockStats` (`params` `None`) or `virDomainBlockStatsFlags`.
    Stats {
        /// Disk target or path, "" for all.
        path: String,
        /// `nparams` and flags.
        params: Option<(i32, u32)>,
    },
    /// `virDomainGetDiskErrors`.
    Errors {
        /// Room for this many.
        maxerrors: u32,
    },
}

/// One client waiting for a helper's counters.
#[derive(Debug)]
pub struct Waiter {
    /// Its connection.
    pub conn: u64,
    /// The frontend request to answer.
    pub reply_to: u32,
    /// What it asked.
    pub question: Question,
}

/// `virDomainGetBlockInfo`: the disk named by target or source path.
pub fn block_info(def: &DomainDef, path: &str, flags: u32) -> Result<CallValue, CallError> {
    if flags != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetBlockInfo".into() });
    }
    let disk = def
        .disks
        .iter()
        .find(|d| d.target == path || d.path == path)
        .ok_or_else(|| CallError::InvalidArg(format!("invalid path {path} not assigned to domain")))?;
    let (allocation, capacity, physical) =
        super::disks::block_info(disk).map_err(|e| CallError::OperationFailed(e.to_string()))?;
    Ok(CallValue::BlockInfo { allocation, capacity, physical })
}

/// The `block` group of `virConnectGetAllDomainStats` for `def`, with
/// libvirt's QEMU driver's names and types: the count, then per disk its
/// name, its image's index in the live XML (`backingIndex`, a running
/// guest's `live` disks given), its path, the I/O counters its helper
/// reported (none when it did not answer in time), and, where its image
/// can be read, allocation, capacity and physical size. No `errors`: in
/// libvirt that field is Xen's.
pub fn stats_group(def: &DomainDef, live: Option<&[LiveDisk]>, counters: Option<&[DiskCounters]>) -> Vec<Param> {
    let ull = |field: String, v: u64| Param { field, value: ParamValue::ULLong(v) };
    let mut p = vec![Param { field: "block.count".into(), value: ParamValue::UInt(def.disks.len() as u32) }];
    // libvirt numbers every image of a running domain from 1, top layers first.
    let mut next_index = 1u32;
    for (i, disk) in def.disks.iter().enumerate() {
        p.push(Param { field: format!("block.{i}.name"), value: ParamValue::Text(disk.target.clone()) });
        if let Some(live) = live {
            p.push(Param { field: format!("block.{i}.backingIndex"), value: ParamValue::UInt(next_index) });
            next_index += 1 + live.get(i).map_or(0, |l| l.backing.len() as u32);
        }
        p.push(Param { field: format!("block.{i}.path"), value: ParamValue::Text(disk.path.clone()) });
        if let Some(c) = counters.and_then(|all| all.iter().find(|c| c.alias == disk.alias())) {
            let figures = [
                ("rd.reqs", c.rd_reqs),
                ("rd.bytes", c.rd_bytes),
                ("rd.times", c.rd_total_ns),
                ("wr.reqs", c.wr_reqs),
                ("wr.bytes", c.wr_bytes),
                ("wr.times", c.wr_total_ns),
                ("fl.reqs", c.flush_reqs),
                ("fl.times", c.flush_total_ns),
            ];
            p.extend(figures.into_iter().map(|(name, v)| ull(format!("block.{i}.{name}"), v)));
        }
        if let Ok((allocation, capacity, physical)) = super::disks::block_info(disk) {
            for (name, v) in [("allocation", allocation), ("capacity", capacity), ("physical", physical)] {
                p.push(ull(format!("block.{i}.{name}"), v));
            }
        }
    }
    p
}

/// Checks a question before anything is asked: its sizes, flags, and that
/// it names one of the domain's disks.
fn check(def: &DomainDef, question: &Question) -> Result<(), CallError> {
    match question {
        Question::Stats { path, params } => {
            if let Some((nparams, flags)) = *params {
                if nparams > limits::BLOCK_STATS_PARAMETERS_MAX {
                    return Err(CallError::Internal("nparams too large".into()));
                }
                if nparams < 0 {
                    return Err(CallError::InvalidArg(
                        "nparams in virDomainBlockStatsFlags must be non-negative".into(),
                    ));
                }
                if flags & !STRING_OKAY != 0 {
                    return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainBlockStatsFlags".into() });
                }
            }
            if !path.is_empty() && !def.disks.iter().any(|d| &d.target == path || &d.path == path) {
                return Err(CallError::InvalidArg(format!("invalid path: {path}")));
            }
        }
        Question::Errors { maxerrors } => {
            if *maxerrors > crate::rpc::blockdev::DISK_ERRORS_MAX {
                return Err(CallError::Internal("maxerrors > REMOTE_DOMAIN_DISK_ERRORS_MAX".into()));
            }
        }
    }
    Ok(())
}

/// Whether [`handle`] answers `call`: the questions the helper's counters answer.
pub fn handles(call: &Call) -> bool {
    matches!(call, Call::BlockStats { .. } | Call::DiskErrors { .. })
}

/// Answers `BlockStats` and `DiskErrors`: now when the guest has nothing to
/// count (or the question is wrong), else when its helper's counters arrive.
pub fn handle(ctx: &mut Ctx, caller: &Caller, call: Call) -> Answer {
    let asked = match call {
        Call::BlockStats { uuid, path, params } => ask(ctx, caller, &uuid, Question::Stats { path, params }),
        Call::DiskErrors { flags, .. } if flags != 0 => {
            Err(CallError::UnsupportedFlags { flags, function: "qemuDomainGetDiskErrors".into() })
        }
        Call::DiskErrors { uuid, maxerrors, .. } => ask(ctx, caller, &uuid, Question::Errors { maxerrors }),
        _ => Err(CallError::Internal("not a question about a guest's disks".into())),
    };
    match asked {
        Ok(None) => Answer::Later,
        Ok(Some(value)) => Answer::Now(Ok(value)),
        Err(e) => Answer::Now(Err(e)),
    }
}

/// Asks guest `uuid`'s helper for its disks' counters on behalf of
/// `caller`, who is answered when they arrive (see [`answer`]). A domain
/// that is not running, or runs without disks, is answered at once.
fn ask(ctx: &mut Ctx, caller: &Caller, uuid: &Uuid, question: Question) -> Result<Option<CallValue>, CallError> {
    let e = ctx.domains.by_uuid(uuid)?;
    check(&e.def, &question)?;
    if e.id.is_none() || !ctx.guests.contains_key(uuid) {
        return Err(CallError::NotRunning);
    }
    if e.def.disks.is_empty() {
        return match &question {
            Question::Stats { path, params } => super::stats::block_stats(e, path, *params),
            Question::Errors { .. } => answer(&e.def, &[], &question),
        }
        .map(Some);
    }
    let waiter = helper_asks::Waiter::Disk(Waiter { conn: caller.conn, reply_to: caller.request, question });
    helper_asks::ask(ctx, uuid, Asked::DiskStats, Some(waiter), Instant::now() + ASK_TIMEOUT)?;
    Ok(None)
}

/// Guest `uuid`'s helper reported its disks' `counters`: the answer for
/// waiter `w`.
pub fn settle(ctx: &Ctx, uuid: &Uuid, w: Waiter, counters: &[DiskCounters]) -> Reply {
    let result = ctx.domains.by_uuid(uuid).and_then(|e| answer(&e.def, counters, &w.question));
    (w.conn, w.reply_to, result)
}

/// The counters of the disk `path` names ("" sums every disk).
fn counters_for(def: &DomainDef, counters: &[DiskCounters], path: &str) -> DiskCounters {
    let mut sum = DiskCounters::default();
    for d in def.disks.iter().filter(|d| path.is_empty() || d.target == path || d.path == path) {
        if let Some(c) = counters.iter().find(|c| c.alias == d.alias()) {
            sum.rd_reqs += c.rd_reqs;
            sum.rd_bytes += c.rd_bytes;
            sum.rd_total_ns += c.rd_total_ns;
            sum.wr_reqs += c.wr_reqs;
            sum.wr_bytes += c.wr_bytes;
            sum.wr_total_ns += c.wr_total_ns;
            sum.flush_reqs += c.flush_reqs;
            sum.flush_total_ns += c.flush_total_ns;
            sum.errors += c.errors;
        }
    }
    sum
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The answer to `question` from the helper's `counters`.
pub fn answer(def: &DomainDef, counters: &[DiskCounters], question: &Question) -> Result<CallValue, CallError> {
    Ok(match question {
        Question::Stats { path, params } => {
            let c = counters_for(def, counters, path);
            // libvirt's QEMU driver's fields and order, and errs.
            let fields = [
                ("wr_bytes", c.wr_bytes),
                ("wr_operations", c.wr_reqs),
                ("rd_bytes", c.rd_bytes),
                ("rd_operations", c.rd_reqs),
                ("flush_operations", c.flush_reqs),
                ("wr_total_times", c.wr_total_ns),
                ("rd_total_times", c.rd_total_ns),
                ("flush_total_times", c.flush_total_ns),
                ("errs", c.errors),
            ];
            match params {
                None => CallValue::Figures(vec![
                    int(c.rd_reqs),
                    int(c.rd_bytes),
                    int(c.wr_reqs),
                    int(c.wr_bytes),
                    int(c.errors),
                ]),
                Some((0, _)) => CallValue::Params { params: Vec::new(), count: fields.len() as i32 },
                Some((n, _)) => {
                    let params: Vec<Param> = fields
                        .iter()
                        .take(*n as usize)
                        .map(|(f, v)| Param { field: (*f).into(), value: ParamValue::LLong(int(*v)) })
                        .collect();
                    let count = params.len() as i32;
                    CallValue::Params { params, count }
                }
            }
        }
        Question::Errors { maxerrors } => {
            let failing: Vec<(String, i32)> = def
                .disks
                .iter()
                .filter_map(|d| {
                    let c = counters.iter().find(|c| c.alias == d.alias())?;
                    let e = c.last_error.as_deref()?;
                    let code = if e.contains("No space") { DISK_ERROR_NO_SPACE } else { DISK_ERROR_UNSPEC };
                    Some((d.target.clone(), code))
                })
                .collect();
            let count = failing.len() as i32;
            match maxerrors {
                0 => CallValue::DiskErrors { errors: Vec::new(), count },
                m => {
                    let errors: Vec<(String, i32)> = failing.into_iter().take(*m as usize).collect();
                    let count = errors.len() as i32;
                    CallValue::DiskErrors { errors, count }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> DomainDef {
        let xml = "<domain type='kvm'><name>b</name><memory>65536</memory><os><type>hvm</type><kernel>/k</kernel>\
                   </os><devices><disk><source file='/a'/><target dev='vda'/></disk>\
                   <disk><source file='/b'/><target dev='vdb'/></disk></devices></domain>";
        crate::domain::parse(xml, false).unwrap().0
    }

    fn counters(alias: &str, rd: u64, error: Option<&str>) -> DiskCounters {
        DiskCounters {
            alias: alias.into(),
            rd_reqs: rd,
            rd_bytes: rd * 512,
            wr_reqs: 1,
            errors: u64::from(error.is_some()),
            last_error: error.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn counters_are_answered_per_disk_by_target_or_path_and_summed_for_all() {
        let d = def();
        let c = [counters("virtio-disk0", 3, None), counters("virtio-disk1", 4, Some("EIO"))];
        let ask = |path: &str, params| answer(&d, &c, &Question::Stats { path: path.into(), params }).unwrap();
        assert_eq!(ask("vda", None), CallValue::Figures(vec![3, 1536, 1, 0, 0]));
        assert_eq!(ask("/b", None), CallValue::Figures(vec![4, 2048, 1, 0, 1]));
        assert_eq!(ask("", None), CallValue::Figures(vec![7, 3584, 2, 0, 1]));
        assert_eq!(ask("vda", Some((0, 0))), CallValue::Params { params: Vec::new(), count: 9 });
        let CallValue::Params { params, count } = ask("vdb", Some((4, 0))) else { panic!() };
        assert_eq!(count, 4);
        assert_eq!(params[3], Param { field: "rd_operations".into(), value: ParamValue::LLong(4) });
        let errors = answer(&d, &c, &Question::Errors { maxerrors: 0 }).unwrap();
        assert_eq!(errors, CallValue::DiskErrors { errors: Vec::new(), count: 1 });
        let errors = answer(&d, &c, &Question::Errors { maxerrors: 8 }).unwrap();
        assert_eq!(errors, CallValue::DiskErrors { errors: vec![("vdb".into(), DISK_ERROR_UNSPEC)], count: 1 });
    }

    #[test]
    fn the_block_group_has_libvirts_names_types_and_image_indices() {
        let d = def();
        let c = DiskCounters {
            alias: "virtio-disk1".into(),
            rd_reqs: 1,
            rd_bytes: 2,
            rd_total_ns: 3,
            wr_reqs: 4,
            wr_bytes: 5,
            wr_total_ns: 6,
            flush_reqs: 7,
            flush_total_ns: 8,
            errors: 9,
            last_error: None,
        };
        // vda has one backing layer: vdb's image is the domain's third.
        let live = [
            LiveDisk {
                backing: vec![crate::domain::BackingLayer {
                    kind: crate::domain::DiskKind::File,
                    path: "/base".into(),
                    format: crate::domain::DiskFormat::Raw,
                }],
            },
            LiveDisk::default(),
        ];
        let got: Vec<(String, ParamValue)> = stats_group(&d, Some(&live), Some(std::slice::from_ref(&c)))
            .into_iter()
            .map(|p| (p.field, p.value))
            .collect();
        let text = |f: &str, v: &str| (f.to_owned(), ParamValue::Text(v.into()));
        let ull = |f: &str, v: u64| (f.to_owned(), ParamValue::ULLong(v));
        let uint = |f: &str, v: u32| (f.to_owned(), ParamValue::UInt(v));
        // The images /a and /b do not exist: no sizes.
        assert_eq!(
            got,
            [
                uint("block.count", 2),
                text("block.0.name", "vda"),
                uint("block.0.backingIndex", 1),
                text("block.0.path", "/a"),
                text("block.1.name", "vdb"),
                uint("block.1.backingIndex", 3),
                text("block.1.path", "/b"),
                ull("block.1.rd.reqs", 1),
                ull("block.1.rd.bytes", 2),
                ull("block.1.rd.times", 3),
                ull("block.1.wr.reqs", 4),
                ull("block.1.wr.bytes", 5),
                ull("block.1.wr.times", 6),
                ull("block.1.fl.reqs", 7),
                ull("block.1.fl.times", 8),
            ]
        );
        // A shut-off domain: names and paths, no image indices.
        let off: Vec<String> = stats_group(&d, None, None).into_iter().map(|p| p.field).collect();
        assert_eq!(off, ["block.count", "block.0.name", "block.0.path", "block.1.name", "block.1.path"]);
    }

    #[test]
    fn questions_are_checked_before_a_helper_is_asked() {
        let d = def();
        let stats = |path: &str, params| check(&d, &Question::Stats { path: path.into(), params });
        assert_eq!(stats("vdc", None), Err(CallError::InvalidArg("invalid path: vdc".into())));
        assert!(matches!(stats("vda", Some((17, 0))), Err(CallError::Internal(_))));
        assert!(matches!(stats("vda", Some((-1, 0))), Err(CallError::InvalidArg(_))));
        assert!(matches!(stats("vda", Some((2, 1))), Err(CallError::UnsupportedFlags { .. })));
        assert!(check(&d, &Question::Errors { maxerrors: 257 }).is_err());
        assert!(matches!(block_info(&d, "vdq", 0), Err(CallError::InvalidArg(m)) if m.contains("not assigned")));
    }
}
