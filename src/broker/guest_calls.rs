//! Calls on a guest's life: start, create, shutdown, reboot, reset,
//! suspend, resume, console and destroy. Those that ask the guest's helper
//! something it answers (a start, a pause, a resume, a graceful stop) are
//! [`Answer::Later`]: the supervisor settles them when the helper answers,
//! and the client's reply goes out then.

use super::audit::{Auditor, Value};
use super::call_audit::{audit, audit_change};
use super::calls::{Answer, Caller};
use super::state::Ctx;
use super::supervisor::{Asker, Wait};
use crate::domain::Uuid;
use crate::privsep::helper::HelperCommand;
use crate::privsep::{Call, CallError, CallValue};

/// `VIR_DOMAIN_START_PAUSED`.
const START_PAUSED: u32 = 1;
/// `VIR_DOMAIN_START_VALIDATE`.
const START_VALIDATE: u32 = 16;
/// `VIR_DOMAIN_DESTROY_GRACEFUL`.
const DESTROY_GRACEFUL: u32 = 1;

/// Whether `call` is one of this module's.
pub fn handles(call: &Call) -> bool {
    matches!(
        call,
        Call::Create { .. }
            | Call::CreateXml { .. }
            | Call::Shutdown { .. }
            | Call::Reboot { .. }
            | Call::Reset { .. }
            | Call::Suspend { .. }
            | Call::Resume { .. }
            | Call::OpenConsole { .. }
            | Call::Destroy { .. }
    )
}

/// Carries out a call on a guest's life, one row per call.
pub fn handle(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, call: Call) -> Answer {
    match call {
        Call::Create { uuid, flags } => create(ctx, auditor, caller, &uuid, flags),
        Call::CreateXml { xml, flags } => create_xml(ctx, auditor, caller, &xml, flags),
        Call::Shutdown { uuid, flags } => request(ctx, auditor, caller, &uuid, flags, "shutdown"),
        Call::Reboot { uuid, flags } => request(ctx, auditor, caller, &uuid, flags, "reboot"),
        Call::Reset { uuid, flags } => request(ctx, auditor, caller, &uuid, flags, "reset"),
        Call::Suspend { uuid } => pause(ctx, auditor, caller, &uuid, false),
        Call::Resume { uuid } => pause(ctx, auditor, caller, &uuid, true),
        Call::OpenConsole { uuid, flags } => console(ctx, auditor, caller, uuid, flags).into(),
        Call::Destroy { uuid, flags } => destroy(ctx, auditor, caller, &uuid, flags),
        _ => Answer::Now(Err(CallError::Internal("not a call on a guest's life".into()))),
    }
}

/// `virDomainCreateWithFlags`: answered and audited when the helper has
/// started the guest.
fn create(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, uuid: &Uuid, flags: u32) -> Answer {
    // START_PAUSED (1); START_VALIDATE (16) is accepted: definitions are always validated.
    if flags & !(START_PAUSED | START_VALIDATE) != 0 {
        return Answer::Now(Err(CallError::UnsupportedFlags { flags, function: "qemuDomainCreateWithFlags".into() }));
    }
    let result = ctx.start(uuid, None, flags & START_PAUSED != 0, "start", Asker::of(caller));
    if let Err(e) = &result {
        audit_change(auditor, caller, "start", uuid, &Err(e.clone()), &[]);
    }
    Answer::when_settled(result)
}

/// `virDomainCreateXML`: a transient domain, answered and audited when the
/// helper has started it.
fn create_xml(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, xml: &str, flags: u32) -> Answer {
    if flags & !(START_PAUSED | START_VALIDATE) != 0 {
        return Answer::Now(Err(CallError::UnsupportedFlags { flags, function: "qemuDomainCreateXML".into() }));
    }
    let paused = flags & START_PAUSED != 0;
    let result = ctx.domains.add_transient(xml, flags & START_VALIDATE != 0).and_then(|uuid| {
        ctx.start(&uuid, None, paused, "create", Asker::of(caller)).inspect_err(|_| ctx.domains.forget(&uuid))
    });
    if let Err(e) = &result {
        audit(auditor, caller, "create", &[("reason", Value::Text(&e.to_string()))], false);
    }
    Answer::when_settled(result)
}

/// `virDomainShutdownFlags`, `virDomainReboot`, `virDomainReset`: the
/// helper does not answer them; their effect arrives as an event.
fn request(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, uuid: &Uuid, flags: u32, op: &str) -> Answer {
    let (command, function) = match op {
        "shutdown" => (HelperCommand::CtrlAltDel, "qemuDomainShutdownFlags"),
        "reboot" => (HelperCommand::Reset, "qemuDomainReboot"),
        _ => (HelperCommand::Reset, "qemuDomainReset"),
    };
    // Only the default mode: the guest is asked through its i8042
    // (ctrl-alt-del) or reset; ACPI power button, agent, initctl,
    // signal and paravirt modes are not available.
    if flags != 0 {
        return Answer::Now(Err(CallError::UnsupportedFlags { flags, function: function.into() }));
    }
    let result = ctx.request(uuid, command, op == "reset");
    let named = result.as_ref().map(|(n, _)| n.clone()).map_err(Clone::clone);
    let pid = result.as_ref().map_or(-1, |(_, p)| *p);
    audit_change(auditor, caller, op, uuid, &named, &[("vm-pid", Value::Num(pid.into()))]);
    result.map(|_| CallValue::Unit).into()
}

/// `virDomainSuspend` / `virDomainResume`: answered and audited when the
/// helper answers.
fn pause(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, uuid: &Uuid, resume: bool) -> Answer {
    let result = ctx.pause(uuid, resume, Asker::of(caller));
    if let Err(e) = &result {
        let op = if resume { "resume" } else { "suspend" };
        audit_change(auditor, caller, op, uuid, &Err(e.clone()), &[]);
    }
    Answer::when_settled(result)
}

/// `virDomainOpenConsole`: the console's fd goes to the frontend with the
/// answer.
fn console(
    ctx: &mut Ctx,
    auditor: &mut Auditor,
    caller: &Caller,
    uuid: Uuid,
    flags: u32,
) -> Result<CallValue, CallError> {
    // FORCE (1) takes the console from its current client; SAFE (2)
    // is what we do anyway (one client at a time).
    if flags & !3 != 0 {
        return Err(CallError::UnsupportedFlags { flags, function: "qemuDomainOpenConsole".into() });
    }
    let name = ctx.domains.by_uuid(&uuid)?.def.name.clone();
    // Its helper never got this daemon's end of a console.
    ctx.guests.get(&uuid).ok_or(CallError::NotRunning)?.manageable(&name)?;
    let g = &mut ctx.guests;
    // Held is held, by this connection's other stream as much as by
    // another client's (libvirt's chrdev lock knows no connections).
    match g.consoles.get(&uuid) {
        Some(_) if flags & 1 == 0 => {
            return Err(CallError::OperationFailed("Active console session exists for this domain".into()));
        }
        Some(_) => g.consoles_taken.push(uuid),
        None => {}
    }
    g.consoles.insert(uuid, caller.conn);
    audit_change(auditor, caller, "console", &uuid, &Ok(name), &[]);
    Ok(CallValue::Console)
}

/// `virDomainDestroyFlags`: the helper is killed at once, or with GRACEFUL
/// stops the guest itself (it never kills); either is answered once the
/// helper process has exited, and with it released the guest's image
/// locks (`exits.rs`).
fn destroy(ctx: &mut Ctx, auditor: &mut Auditor, caller: &Caller, uuid: &Uuid, flags: u32) -> Answer {
    // GRACEFUL (1) never kills; REMOVE_LOGS (2) is accepted, there are no logs to remove.
    if flags & !3 != 0 {
        return Answer::Now(Err(CallError::UnsupportedFlags { flags, function: "qemuDomainDestroyFlags".into() }));
    }
    if flags & DESTROY_GRACEFUL != 0 {
        let result = ctx.ask(uuid, HelperCommand::Stop, Wait::Stopped, "destroy", Asker::of(caller));
        if let Err(e) = &result {
            audit_change(auditor, caller, "destroy", uuid, &Err(e.clone()), &[]);
        }
        return Answer::when_settled(result);
    }
    let name = ctx.domains.by_uuid(uuid).map(|e| e.def.name.clone());
    let result = name.and_then(|n| ctx.destroy(uuid).map(|pid| (n, pid)));
    let pid = result.as_ref().map_or(-1, |(_, p)| *p);
    let named = result.as_ref().map(|(n, _)| n.clone()).map_err(Clone::clone);
    audit_change(auditor, caller, "destroy", uuid, &named, &[("vm-pid", Value::Num(pid.into()))]);
    if let Err(e) = result {
        return Answer::Now(Err(e));
    }
    let reply = (caller.conn, caller.request, Ok(CallValue::Unit));
    match ctx.exits.after_exit(nix::unistd::Pid::from_raw(pid), reply) {
        Some((_, _, value)) => Answer::Now(value),
        None => Answer::Later,
    }
}
