//! vCPU threads as a small state machine the control thread drives.
//!
//! Each vCPU is `Running`, `Paused` or `Exited`. The control thread says
//! what it wants (run, pause, exit), kicks the threads out of `KVM_RUN`
//! ([`kick`]), and waits for them to get there, but never longer than a
//! bound: a vCPU that does not park (one blocked writing guest output to a
//! console nobody reads, say) makes [`Vcpus::pause`] fail after
//! [`PAUSE_BOUND`], the others run again, and the control thread goes on
//! answering its broker. At the end every vCPU is told to exit and its
//! thread joined ([`Vcpus::exit`]). A vCPU's registers are read on its own
//! thread, where its KVM fd lives ([`Vcpus::registers`]).
//!
//! The vCPU threads' seccomp filter has no clock: only the control thread
//! waits with a timeout.

pub mod kick;
pub mod kvm;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libvirtd::privsep::helper::StopReason;
use serde::{Deserialize, Serialize};

/// How long a pause waits for every vCPU to park. Well inside the broker's
/// 5 s for an answer, so the client hears the helper's own reason.
pub const PAUSE_BOUND: Duration = Duration::from_secs(1);
/// How long the end of the VM waits for every vCPU thread to leave.
pub const EXIT_BOUND: Duration = Duration::from_secs(1);

/// Where one vCPU is, as the control thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// In (or on its way to) `KVM_RUN`.
    Running,
    /// Parked until told to run or exit.
    Paused,
    /// Its run loop has ended; its thread can be joined.
    Exited,
}

/// What the control thread wants of every vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Run,
    Pause,
    Exit,
}

/// A vCPU's registers, as plain data: what save/restore will carry (with
/// the FPU, MSR, LAPIC and event state it will add).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuRegisters {
    /// rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8 to r15 (`kvm_regs` order).
    pub gprs: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// Control registers 0, 3 and 4.
    pub cr: [u64; 3],
    /// Extended feature enable register.
    pub efer: u64,
}

/// The guest side of one vCPU: KVM in the helper, a stand-in in tests.
pub trait VcpuRun: Send {
    /// Called first on the vCPU's own thread (to aim kicks at it).
    fn enter(&mut self) {}
    /// Runs the guest to its next exit; `Some` when the VM is to stop.
    fn run(&mut self) -> Option<(StopReason, String)>;
    /// This vCPU's registers; called only on its own thread.
    fn registers(&mut self) -> Result<VcpuRegisters, String>;
    /// Called last on its own thread, before the vCPU is dropped.
    fn leave(&mut self) {}
}

/// Why the control thread did not get what it wanted.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Some vCPUs did not park in time; the others run again.
    #[error("vCPU {} did not stop within {} ms; the guest runs on", list(.stuck), .bound.as_millis())]
    DidNotPause {
        /// Which.
        stuck: Vec<usize>,
        /// The bound.
        bound: Duration,
    },
    /// Some vCPU threads did not leave in time; they are not joined.
    #[error("vCPU {} did not leave within {} ms", list(.stuck), .bound.as_millis())]
    DidNotExit {
        /// Which.
        stuck: Vec<usize>,
        /// The bound.
        bound: Duration,
    },
    /// Registers are read only while every vCPU is paused.
    #[error("the vCPUs are not paused")]
    NotPaused,
    /// A paused vCPU did not answer, or its registers could not be read.
    #[error("vCPU {index} registers: {reason}")]
    Registers {
        /// Which.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A thread could not be started.
    #[error("vCPU thread: {0}")]
    Spawn(std::io::Error),
}

fn list(v: &[usize]) -> String {
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

struct Shared {
    want: Want,
    states: Vec<VcpuState>,
    /// Bumped for each register read the control thread asks for.
    read_round: u64,
    /// Each vCPU's answer to the latest read, tagged with its round.
    answers: Vec<Option<(u64, Result<VcpuRegisters, String>)>>,
}

/// What the control thread and the vCPU threads share.
struct Control {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Plain data: a thread that panicked holding it left it usable.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a vCPU thread waits before each run: parks while a pause is
    /// wanted (answering register reads), and says whether to go on.
    fn checkpoint(&self, index: usize, vcpu: &mut dyn VcpuRun) -> bool {
        let mut s = self.lock();
        loop {
            match s.want {
                Want::Run => {
                    s.states[index] = VcpuState::Running;
                    return true;
                }
                Want::Exit => return false,
                Want::Pause => {
                    if s.states[index] != VcpuState::Paused {
                        s.states[index] = VcpuState::Paused;
                        self.changed.notify_all();
                    }
                    let round = s.read_round;
                    if round != 0 && s.answers[index].as_ref().is_none_or(|(r, _)| *r != round) {
                        s.answers[index] = Some((round, vcpu.registers()));
                        self.changed.notify_all();
                    }
                    s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    fn exited(&self, index: usize) {
        self.lock().states[index] = VcpuState::Exited;
        self.changed.notify_all();
    }

    /// Waits (until `deadline`) for every vCPU `done` accepts; returns those it does not.
    fn wait_for<'a>(
        &'a self,
        mut s: MutexGuard<'a, Shared>,
        deadline: Instant,
        done: impl Fn(&Shared, usize) -> bool,
    ) -> (MutexGuard<'a, Shared>, Vec<usize>) {
        loop {
            let missing: Vec<usize> = (0..s.states.len()).filter(|&i| !done(&s, i)).collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if missing.is_empty() || left.is_zero() {
                return (s, missing);
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// The vCPU threads, driven from the control thread.
pub struct Vcpus {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    /// Set for good once the VM stops, for the console writer.
    stopping: Arc<AtomicBool>,
}

impl Vcpus {
    /// Starts one thread per vCPU. Each runs `confine` with its index first
    /// (its seccomp filter) and does not run the guest if that fails; `report` hears a
    /// vCPU's reason when it ends the VM. `stopping` is set when they are
    /// told to exit.
    pub fn spawn<V: VcpuRun + 'static>(
        vcpus: Vec<V>,
        confine: impl Fn(usize) -> Result<(), String> + Clone + Send + 'static,
        report: impl Fn(StopReason, String) + Clone + Send + 'static,
        stopping: Arc<AtomicBool>,
    ) -> Result<Vcpus, VcpuError> {
        let n = vcpus.len();
        let shared =
            Shared { want: Want::Run, states: vec![VcpuState::Running; n], read_round: 0, answers: vec![None; n] };
        let control = Arc::new(Control { shared: Mutex::new(shared), changed: Condvar::new() });
        let mut this = Vcpus { control, threads: Vec::with_capacity(n), stopping };
        for (index, mut vcpu) in vcpus.into_iter().enumerate() {
            let (control, confine, report) = (this.control.clone(), confine.clone(), report.clone());
            let thread = std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || {
                let outcome = match confine(index) {
                    Ok(()) => {
                        vcpu.enter();
                        let mut outcome = None;
                        while outcome.is_none() && control.checkpoint(index, &mut vcpu) {
                            outcome = vcpu.run();
                        }
                        vcpu.leave();
                        outcome
                    }
                    Err(e) => Some((StopReason::Failed, format!("vCPU sandbox: {e}"))),
                };
                control.exited(index);
                if let Some((reason, detail)) = outcome {
                    report(reason, detail);
                }
            });
            match thread {
                Ok(t) => this.threads.push(t),
                Err(e) => {
                    // The threads already started: `this` drops, telling them to exit.
                    this.control.lock().states.truncate(index);
                    return Err(VcpuError::Spawn(e));
                }
            }
        }
        Ok(this)
    }

    /// Kicks every vCPU that has not exited out of `KVM_RUN`.
    fn kick_all(&self, s: &Shared) {
        for (t, state) in self.threads.iter().zip(&s.states) {
            // Under the lock: a thread marks itself exited only with it held.
            if *state != VcpuState::Exited {
                kick::kick(std::os::unix::thread::JoinHandleExt::as_pthread_t(t));
            }
        }
    }

    /// Parks every vCPU, waiting at most `bound`. On failure the vCPUs
    /// that did park run again: the guest is running, as before.
    pub fn pause(&self, bound: Duration) -> Result<(), VcpuError> {
        let mut s = self.control.lock();
        if s.want == Want::Exit {
            return Ok(());
        }
        s.want = Want::Pause;
        self.kick_all(&s);
        let parked = |s: &Shared, i: usize| s.states[i] != VcpuState::Running;
        let (mut s, stuck) = self.control.wait_for(s, Instant::now() + bound, parked);
        if stuck.is_empty() {
            return Ok(());
        }
        s.want = Want::Run;
        self.control.changed.notify_all();
        Err(VcpuError::DidNotPause { stuck, bound })
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        let mut s = self.control.lock();
        if s.want == Want::Pause {
            s.want = Want::Run;
            self.control.changed.notify_all();
        }
    }

    /// Whether a pause is in force.
    pub fn paused(&self) -> bool {
        self.control.lock().want == Want::Pause
    }

    /// Where each vCPU is.
    #[cfg(test)]
    pub fn states(&self) -> Vec<VcpuState> {
        self.control.lock().states.clone()
    }

    /// The vCPU threads, for their CPU clocks.
    pub fn threads(&self) -> Vec<libc::pthread_t> {
        self.threads.iter().map(std::os::unix::thread::JoinHandleExt::as_pthread_t).collect()
    }

    /// Every vCPU's registers, each read on its own thread, while they are
    /// paused; waits at most `bound` for them.
    #[cfg_attr(not(test), expect(dead_code, reason = "save/restore and migration will call it; unit tests do now"))]
    pub fn registers(&self, bound: Duration) -> Result<Vec<VcpuRegisters>, VcpuError> {
        let mut s = self.control.lock();
        if s.want != Want::Pause || s.states.contains(&VcpuState::Running) {
            return Err(VcpuError::NotPaused);
        }
        s.read_round += 1;
        let round = s.read_round;
        self.control.changed.notify_all();
        let answered = |s: &Shared, i: usize| {
            s.answers[i].as_ref().is_some_and(|(r, _)| *r == round) || s.states[i] == VcpuState::Exited
        };
        let (s, missing) = self.control.wait_for(s, Instant::now() + bound, answered);
        if let Some(&index) = missing.first() {
            return Err(VcpuError::Registers { index, reason: "did not answer".into() });
        }
        let mut out = Vec::with_capacity(s.answers.len());
        for (index, answer) in s.answers.iter().enumerate() {
            match answer {
                Some((r, Ok(regs))) if *r == round => out.push(regs.clone()),
                Some((r, Err(reason))) if *r == round => {
                    return Err(VcpuError::Registers { index, reason: reason.clone() });
                }
                _ => return Err(VcpuError::Registers { index, reason: "exited".into() }),
            }
        }
        Ok(out)
    }

    /// Tells every vCPU to exit, waits at most `bound`, and joins the
    /// threads that left. Threads that did not are not waited for (they
    /// end with the process); the error names them.
    pub fn exit(mut self, bound: Duration) -> Result<(), VcpuError> {
        self.stop(bound)
    }

    fn stop(&mut self, bound: Duration) -> Result<(), VcpuError> {
        self.stopping.store(true, Ordering::SeqCst);
        let mut s = self.control.lock();
        s.want = Want::Exit;
        self.control.changed.notify_all();
        self.kick_all(&s);
        let left = |s: &Shared, i: usize| s.states[i] == VcpuState::Exited;
        let (s, stuck) = self.control.wait_for(s, Instant::now() + bound, left);
        drop(s);
        for (i, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            // An exited thread has only its vCPU's drop and its exit left.
            if !stuck.contains(&i) {
                let _ = t.join();
            }
        }
        if stuck.is_empty() { Ok(()) } else { Err(VcpuError::DidNotExit { stuck, bound }) }
    }
}

impl Drop for Vcpus {
    /// A VM that ends without [`Vcpus::exit`] (an error in the control
    /// loop) still stops its vCPUs before anything else of it goes.
    fn drop(&mut self) {
        if !self.threads.is_empty()
            && let Err(e) = self.stop(EXIT_BOUND)
        {
            eprintln!("libvirt-helper: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::mpsc;

    use super::*;

    /// A vCPU whose every run takes a millisecond, or, while `stuck` is
    /// set, blocks until released (it never parks, as a vCPU blocked on a
    /// console nobody reads).
    struct Fake {
        index: u64,
        runs: Arc<AtomicU32>,
        stuck: Option<Arc<Mutex<mpsc::Receiver<()>>>>,
        stop_after: Option<u32>,
    }

    impl VcpuRun for Fake {
        fn run(&mut self) -> Option<(StopReason, String)> {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            match &self.stuck {
                // Released, it runs as any other from then on.
                Some(rx) => {
                    if rx.lock().unwrap().recv_timeout(Duration::from_secs(20)).is_ok() {
                        self.stuck = None;
                    }
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
            self.stop_after.filter(|&k| n >= k).map(|_| (StopReason::PowerOff, "fake power-off".into()))
        }
        fn registers(&mut self) -> Result<VcpuRegisters, String> {
            // Which thread answers is the point: each reports its own.
            Ok(VcpuRegisters { rip: 0x1000 + self.index, ..Default::default() })
        }
    }

    type Reports = Arc<Mutex<Vec<(StopReason, String)>>>;

    fn start(fakes: Vec<Fake>) -> (Vcpus, Reports) {
        kick::install_handler().unwrap();
        let reports: Reports = Arc::default();
        let r = reports.clone();
        let report = move |reason, detail| r.lock().unwrap().push((reason, detail));
        let vcpus = Vcpus::spawn(fakes, |_| Ok(()), report, Arc::default()).unwrap();
        (vcpus, reports)
    }

    fn fake(index: u64) -> (Fake, Arc<AtomicU32>) {
        let runs = Arc::new(AtomicU32::new(0));
        (Fake { index, runs: runs.clone(), stuck: None, stop_after: None }, runs)
    }

    #[test]
    fn pause_parks_every_vcpu_and_resume_lets_them_run() {
        let ((a, runs_a), (b, _)) = (fake(0), fake(1));
        let (vcpus, _) = start(vec![a, b]);
        vcpus.pause(PAUSE_BOUND).unwrap();
        assert!(vcpus.paused());
        assert_eq!(vcpus.states(), [VcpuState::Paused, VcpuState::Paused]);
        let before = runs_a.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs_a.load(Ordering::SeqCst), before, "a paused vCPU ran");
        vcpus.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(runs_a.load(Ordering::SeqCst) > before);
        assert_eq!(vcpus.states(), [VcpuState::Running, VcpuState::Running]);
        vcpus.exit(EXIT_BOUND).unwrap();
    }

    #[test]
    fn a_vcpu_that_never_parks_fails_the_pause_within_its_bound_and_the_rest_run_on() {
        let (release, rx) = mpsc::channel();
        let (mut stuck, _) = fake(0);
        stuck.stuck = Some(Arc::new(Mutex::new(rx)));
        let (other, other_runs) = fake(1);
        let (vcpus, _) = start(vec![stuck, other]);
        std::thread::sleep(Duration::from_millis(20));
        let bound = Duration::from_millis(300);
        let started = Instant::now();
        let err = vcpus.pause(bound).unwrap_err();
        let took = started.elapsed();
        assert!(took >= bound && took < bound + Duration::from_millis(500), "took {took:?}");
        assert!(matches!(&err, VcpuError::DidNotPause { stuck, .. } if stuck == &[0]), "{err}");
        assert_eq!(err.to_string(), "vCPU 0 did not stop within 300 ms; the guest runs on");
        // The control side still answers, and the vCPU that parked runs again.
        assert!(!vcpus.paused());
        let before = other_runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert!(other_runs.load(Ordering::SeqCst) > before, "the parked vCPU was left parked");
        release.send(()).unwrap();
        vcpus.pause(PAUSE_BOUND).unwrap();
        vcpus.exit(EXIT_BOUND).unwrap();
    }

    #[test]
    fn registers_are_read_by_each_vcpus_own_thread_while_paused() {
        let ((a, _), (b, _)) = (fake(0), fake(1));
        let (vcpus, _) = start(vec![a, b]);
        assert!(matches!(vcpus.registers(PAUSE_BOUND), Err(VcpuError::NotPaused)));
        vcpus.pause(PAUSE_BOUND).unwrap();
        let regs = vcpus.registers(PAUSE_BOUND).unwrap();
        assert_eq!(regs.iter().map(|r| r.rip).collect::<Vec<_>>(), [0x1000, 0x1001]);
        assert_eq!(vcpus.registers(PAUSE_BOUND).unwrap(), regs, "a second round is answered too");
        vcpus.exit(EXIT_BOUND).unwrap();
    }

    #[test]
    fn exit_joins_every_thread_paused_or_running() {
        let ((a, _), (b, _)) = (fake(0), fake(1));
        let (vcpus, reports) = start(vec![a, b]);
        vcpus.pause(PAUSE_BOUND).unwrap();
        let stopping = vcpus.stopping.clone();
        vcpus.exit(EXIT_BOUND).unwrap();
        assert!(stopping.load(Ordering::SeqCst));
        assert!(reports.lock().unwrap().is_empty(), "told to exit is no reason to stop the VM");
        let (c, _) = fake(0);
        let (running, _) = start(vec![c]);
        running.exit(EXIT_BOUND).unwrap();
    }

    #[test]
    fn a_vcpu_that_ends_the_vm_reports_why_and_is_exited() {
        let (mut a, _) = fake(0);
        a.stop_after = Some(3);
        let (vcpus, reports) = start(vec![a]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while reports.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(reports.lock().unwrap()[0], (StopReason::PowerOff, "fake power-off".into()));
        assert_eq!(vcpus.states(), [VcpuState::Exited]);
        assert!(vcpus.pause(PAUSE_BOUND).is_ok(), "an exited vCPU counts as stopped");
        vcpus.exit(EXIT_BOUND).unwrap();
    }

    #[test]
    fn a_thread_that_does_not_leave_is_named_and_not_waited_for() {
        let (release, rx) = mpsc::channel();
        let (mut stuck, _) = fake(0);
        stuck.stuck = Some(Arc::new(Mutex::new(rx)));
        let (vcpus, _) = start(vec![stuck]);
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        let err = vcpus.exit(Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, VcpuError::DidNotExit { ref stuck, .. } if stuck == &[0]), "{err}");
        release.send(()).unwrap();
    }
}
