//! The questions out to each running guest's helper, oldest first, and who
//! waits for each answer: the one way every module (`blockinfo.rs`,
//! `netinfo.rs`, `sampling.rs`, `balloon.rs`) asks a helper something.
//!
//! The helper answers its commands in the order it read them, and its
//! answers carry no tag: `NetStats` answers both `NetStats` and `SetLink`,
//! `Balloon` answers all three balloon commands. So the broker keeps ONE
//! queue per helper of what it sent, and an answer settles the oldest
//! question of its kind. Were there one queue per module, two modules
//! asking the same helper would each take the same answer for their own
//! (a `domif-setlink` would be answered with the counters a bulk
//! `domstats` asked for before it).
//!
//! A question that only reads (`DiskStats`, `NetStats`, `BalloonStats`) is
//! not sent again while one of its kind is the newest out: its answer
//! serves every reader that joins it. Commands (`SetLink`, `SetBalloon`,
//! ...) are always sent. A queue holds at most [`MAX_OUT`] questions and
//! [`MAX_WAITERS`] waiters, beyond which asking is refused: a wedged
//! helper cannot make the broker grow. A waiter whose deadline passes is
//! answered with an error, while its question stays queued until the late
//! answer comes, so that answer is not taken for a later question's. A
//! helper that ends (or is replaced by a restart) fails every waiter.
//! Nothing here waits on a helper.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::calls::Ctx;
use super::sampling::Counters;
use crate::domain::Uuid;
use crate::privsep::helper::{BalloonFigures, DiskCounters, HelperCommand, NicCounters};
use crate::privsep::{CallError, CallValue};

/// How long a client gets to wait for a helper's answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most questions out to one helper.
pub const MAX_OUT: usize = 64;
/// Most waiters on one helper's answers.
pub const MAX_WAITERS: usize = 1024;

/// The event a question is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `HelperEvent::DiskStats`.
    Disks,
    /// `HelperEvent::NetStats`.
    Nics,
    /// `HelperEvent::Balloon`.
    Balloon,
}

impl Kind {
    /// What the helper failed to report, for a client's error.
    fn what(self) -> &'static str {
        match self {
            Kind::Disks => "its disks' counters",
            Kind::Nics => "its interfaces",
            Kind::Balloon => "its balloon",
        }
    }
}

/// A question for a helper: the commands it answers with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// `HelperCommand::DiskStats`.
    DiskStats,
    /// `HelperCommand::NetStats`.
    NetStats,
    /// `HelperCommand::SetLink`.
    SetLink {
        /// The interface's alias.
        alias: String,
        /// Up or down.
        up: bool,
    },
    /// `HelperCommand::BalloonStats`.
    BalloonStats,
    /// `HelperCommand::SetBalloon`.
    SetBalloon {
        /// The target in MiB.
        target_mib: u64,
    },
    /// `HelperCommand::SetBalloonPeriod`.
    SetBalloonPeriod {
        /// The period in seconds.
        seconds: u32,
    },
}

impl Question {
    /// The event that answers it.
    pub fn kind(&self) -> Kind {
        match self {
            Question::DiskStats => Kind::Disks,
            Question::NetStats | Question::SetLink { .. } => Kind::Nics,
            Question::BalloonStats | Question::SetBalloon { .. } | Question::SetBalloonPeriod { .. } => Kind::Balloon,
        }
    }

    /// Whether it changes nothing, so that an answer of its kind that is
    /// still to come serves it as well.
    fn reads(&self) -> bool {
        matches!(self, Question::DiskStats | Question::NetStats | Question::BalloonStats)
    }

    /// The command sent.
    pub fn command(&self) -> HelperCommand {
        match self {
            Question::DiskStats => HelperCommand::DiskStats,
            Question::NetStats => HelperCommand::NetStats,
            Question::SetLink { alias, up } => HelperCommand::SetLink { alias: alias.clone(), up: *up },
            Question::BalloonStats => HelperCommand::BalloonStats,
            Question::SetBalloon { target_mib } => HelperCommand::SetBalloon { target_mib: *target_mib },
            Question::SetBalloonPeriod { seconds } => HelperCommand::SetBalloonPeriod { seconds: *seconds },
        }
    }
}

/// A helper's answer, as its event carried it.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `HelperEvent::DiskStats`.
    Disks(Vec<DiskCounters>),
    /// `HelperEvent::NetStats`.
    Nics(Vec<NicCounters>),
    /// `HelperEvent::Balloon`.
    Balloon(Option<BalloonFigures>),
}

impl Answer {
    /// Which questions it answers.
    pub fn kind(&self) -> Kind {
        match self {
            Answer::Disks(_) => Kind::Disks,
            Answer::Nics(_) => Kind::Nics,
            Answer::Balloon(_) => Kind::Balloon,
        }
    }
}

/// What became of a question asked of a [`Queue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// It is queued as a new question: send its command now (or
    /// [`Queue::unsend`] it if that fails).
    Send,
    /// It joined the question of its kind already out.
    Joined,
}

/// Why a question was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// One question out and who waits for its answer, each until a deadline.
#[derive(Debug)]
struct Out<W> {
    question: Question,
    waiters: Vec<(W, Instant)>,
}

/// The questions out to one helper, in the order they were sent: the pure
/// core of this module (no fds, no context), generic over who waits.
#[derive(Debug)]
pub struct Queue<W> {
    out: VecDeque<Out<W>>,
}

impl<W> Default for Queue<W> {
    fn default() -> Self {
        Queue { out: VecDeque::new() }
    }
}

/// What an answer settled.
#[derive(Debug)]
pub struct Settled<W> {
    /// The question it answered and its waiters, unless no question of its
    /// kind was out (an answer nobody asked for).
    pub answered: Option<(Question, Vec<W>)>,
    /// Waiters on older questions of other kinds: the helper answers in
    /// order, so it skipped them and never will answer them.
    pub skipped: Vec<(Kind, W)>,
}

impl<W> Queue<W> {
    /// Queues `question` for `waiter` (none: nobody waits, the answer only
    /// refreshes what the broker keeps), who waits until `deadline`.
    pub fn ask(&mut self, question: Question, waiter: Option<W>, deadline: Instant) -> Result<Asked, Full> {
        if self.waiters() >= MAX_WAITERS {
            return Err(Full);
        }
        let kind = question.kind();
        if question.reads()
            && let Some(newest) = self.out.iter_mut().rev().find(|o| o.question.kind() == kind)
        {
            newest.waiters.extend(waiter.map(|w| (w, deadline)));
            return Ok(Asked::Joined);
        }
        if self.out.len() >= MAX_OUT {
            return Err(Full);
        }
        self.out.push_back(Out { question, waiters: waiter.map(|w| (w, deadline)).into_iter().collect() });
        Ok(Asked::Send)
    }

    /// Takes back the question [`Queue::ask`] just queued to be sent, when
    /// sending it failed; its waiters.
    pub fn unsend(&mut self) -> Vec<W> {
        self.out.pop_back().map(|o| o.waiters.into_iter().map(|(w, _)| w).collect()).unwrap_or_default()
    }

    /// An answer of `kind` arrived: it settles the oldest question of that
    /// kind; questions of other kinds before it were skipped.
    pub fn answered(&mut self, kind: Kind) -> Settled<W> {
        let Some(at) = self.out.iter().position(|o| o.question.kind() == kind) else {
            return Settled { answered: None, skipped: Vec::new() };
        };
        let mut skipped = Vec::new();
        for o in self.out.drain(..at) {
            let k = o.question.kind();
            skipped.extend(o.waiters.into_iter().map(|(w, _)| (k, w)));
        }
        let answered = self.out.pop_front().map(|o| (o.question, o.waiters.into_iter().map(|(w, _)| w).collect()));
        Settled { answered, skipped }
    }

    /// The waiters whose deadline passed by `now`, taken off their
    /// questions, which stay out for their answers.
    pub fn expire(&mut self, now: Instant) -> Vec<(Kind, W)> {
        let mut late = Vec::new();
        for o in &mut self.out {
            let kind = o.question.kind();
            let (gone, kept): (Vec<_>, Vec<_>) =
                std::mem::take(&mut o.waiters).into_iter().partition(|(_, d)| *d <= now);
            o.waiters = kept;
            late.extend(gone.into_iter().map(|(w, _)| (kind, w)));
        }
        late
    }

    /// Every waiter, the queue emptied: its helper is gone.
    pub fn abandon(&mut self) -> Vec<(Kind, W)> {
        self.out
            .drain(..)
            .flat_map(|o| {
                let kind = o.question.kind();
                o.waiters.into_iter().map(move |(w, _)| (kind, w))
            })
            .collect()
    }

    /// The earliest deadline of a waiter.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.out.iter().flat_map(|o| o.waiters.iter().map(|(_, d)| *d)).min()
    }

    /// How many questions are out.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether no question is out.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    fn waiters(&self) -> usize {
        self.out.iter().map(|o| o.waiters.len()).sum()
    }
}

/// Who in the broker waits for a helper's answer.
#[derive(Debug)]
pub enum Waiter {
    /// A client's disk call (`blockinfo.rs`).
    Disk(super::blockinfo::Waiter),
    /// A client's interface call (`netinfo.rs`).
    Net(super::netinfo::Waiter),
    /// A bulk statistics round (`sampling.rs`), by its number.
    Round(u64),
}

/// The queues of the running guests, by guest and helper (a guest
/// restarted meanwhile runs in another helper, with a queue of its own).
pub type Asks = HashMap<(Uuid, Pid), Queue<Waiter>>;

/// An answer for a waiting client: its connection, request and result.
pub type Reply = (u64, u32, Result<CallValue, CallError>);

/// Asks running guest `uuid`'s helper `question` for `waiter`, who waits
/// until `deadline`: sent now, or joined to the same question already out.
pub fn ask(
    ctx: &mut Ctx,
    uuid: &Uuid,
    question: Question,
    waiter: Option<Waiter>,
    deadline: Instant,
) -> Result<(), CallError> {
    let e = ctx.domains.by_uuid(uuid)?;
    let running = ctx.guests.get(uuid).filter(|_| e.id.is_some()).ok_or(CallError::NotRunning)?;
    let name = &e.def.name;
    running.manageable(name)?;
    let queue = ctx.helper_asks.entry((*uuid, running.pid)).or_default();
    let kind = question.kind();
    let command = question.command();
    match queue.ask(question, waiter, deadline) {
        Ok(Asked::Joined) => Ok(()),
        Ok(Asked::Send) => running.channel.send(&command, &[]).map_err(|err| {
            queue.unsend();
            CallError::OperationFailed(format!("guest '{name}' did not answer: {err}"))
        }),
        Err(Full) => Err(CallError::OperationFailed(format!(
            "guest '{name}' has too many requests for {} in flight",
            kind.what()
        ))),
    }
}

/// Guest `uuid`'s helper `pid` answered: the answer goes to whoever waits
/// for it (and the balloon's figures to the broker's cache), and waiters
/// on questions it skipped fail.
pub fn answered(ctx: &mut Ctx, uuid: &Uuid, pid: Pid, answer: Answer) -> Vec<Reply> {
    if let Answer::Balloon(figures) = &answer {
        super::balloon::answered(ctx, uuid, pid, figures.clone());
    }
    let Some(queue) = ctx.helper_asks.get_mut(&(*uuid, pid)) else { return Vec::new() };
    let Settled { answered, skipped } = queue.answered(answer.kind());
    if queue.is_empty() {
        ctx.helper_asks.remove(&(*uuid, pid));
    }
    let mut replies = Vec::new();
    let name = name_of(ctx, uuid);
    for (kind, w) in skipped {
        let e = CallError::OperationFailed(format!("guest '{name}' did not report {}", kind.what()));
        replies.extend(fail(ctx, uuid, kind, w, e));
    }
    let Some((question, waiters)) = answered else {
        log::debug!("guest '{name}': an answer nobody asked for ({:?})", answer.kind());
        return replies;
    };
    for w in waiters {
        match (w, &answer) {
            (Waiter::Disk(w), Answer::Disks(c)) => replies.push(super::blockinfo::settle(ctx, uuid, w, c)),
            (Waiter::Net(w), Answer::Nics(c)) => replies.push(super::netinfo::settle(ctx, uuid, w, c)),
            (Waiter::Round(round), Answer::Disks(c)) => {
                replies.extend(super::sampling::arrived(ctx, round, uuid, Counters::Disks(c.clone())));
            }
            (Waiter::Round(round), Answer::Nics(c)) => {
                replies.extend(super::sampling::arrived(ctx, round, uuid, Counters::Nics(c.clone())));
            }
            // A waiter is only ever queued on a question its answer fits.
            (w, a) => {
                let e = CallError::Internal(format!("{question:?} was answered with {:?}", a.kind()));
                replies.extend(fail(ctx, uuid, a.kind(), w, e));
            }
        }
    }
    replies
}

/// Waiters whose helper is gone (its guest stopped or runs in another
/// helper) or whose deadline passed, with their errors; and the bulk
/// rounds due now.
pub fn overdue(ctx: &mut Ctx, now: Instant) -> Vec<Reply> {
    let mut failed: Vec<(Uuid, Kind, Waiter, CallError)> = Vec::new();
    let keys: Vec<(Uuid, Pid)> = ctx.helper_asks.keys().copied().collect();
    for (uuid, pid) in keys {
        let gone = ctx.guests.get(&uuid).is_none_or(|r| r.pid != pid);
        let name = name_of(ctx, &uuid);
        let Some(queue) = ctx.helper_asks.get_mut(&(uuid, pid)) else { continue };
        if gone {
            failed.extend(queue.abandon().into_iter().map(|(k, w)| (uuid, k, w, CallError::NotRunning)));
            ctx.helper_asks.remove(&(uuid, pid));
            continue;
        }
        for (kind, w) in queue.expire(now) {
            let e = CallError::OperationFailed(format!(
                "guest '{name}' did not report {} within {} s",
                kind.what(),
                ASK_TIMEOUT.as_secs()
            ));
            failed.push((uuid, kind, w, e));
        }
    }
    let mut replies = Vec::new();
    for (uuid, kind, w, e) in failed {
        replies.extend(fail(ctx, &uuid, kind, w, e));
    }
    replies.extend(super::sampling::overdue(ctx, now));
    replies
}

/// The earliest deadline of a waiter on a helper.
pub fn next_deadline(ctx: &Ctx) -> Option<Instant> {
    ctx.helper_asks.values().filter_map(Queue::next_deadline).min()
}

/// Answers waiter `w` on guest `uuid`'s answer of `kind` with `error`: a
/// client gets it, a bulk round goes on without those counters.
fn fail(ctx: &mut Ctx, uuid: &Uuid, kind: Kind, w: Waiter, error: CallError) -> Vec<Reply> {
    match w {
        Waiter::Disk(w) => vec![(w.conn, w.reply_to, Err(error))],
        Waiter::Net(w) => vec![(w.conn, w.reply_to, Err(error))],
        Waiter::Round(round) => super::sampling::given_up(ctx, round, uuid, kind),
    }
}

fn name_of(ctx: &Ctx, uuid: &Uuid) -> String {
    ctx.domains.by_uuid(uuid).map(|e| e.def.name.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who waits, in the tests: a bulk round or a client call, by number.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum W {
        Round(u64),
        Client(u32),
    }

    fn later() -> Instant {
        Instant::now() + ASK_TIMEOUT
    }

    fn set_link(up: bool) -> Question {
        Question::SetLink { alias: "net0".into(), up }
    }

    #[test]
    fn a_link_change_asked_after_a_bulk_round_gets_the_second_answer_not_the_first() {
        // The bug this module exists for: a bulk round's NetStats, then a
        // domif-setlink, to the same helper; both answered with NetStats.
        let mut q = Queue::default();
        assert_eq!(q.ask(Question::NetStats, Some(W::Round(1)), later()), Ok(Asked::Send));
        assert_eq!(q.ask(set_link(false), Some(W::Client(7)), later()), Ok(Asked::Send), "a command is always sent");
        let first = q.answered(Kind::Nics);
        assert_eq!(first.answered, Some((Question::NetStats, vec![W::Round(1)])));
        assert!(first.skipped.is_empty());
        let second = q.answered(Kind::Nics);
        assert_eq!(second.answered, Some((set_link(false), vec![W::Client(7)])));
        assert!(q.is_empty());
    }

    #[test]
    fn reads_join_the_newest_question_of_their_kind_and_commands_never_do() {
        let mut q = Queue::default();
        assert_eq!(q.ask(Question::DiskStats, Some(W::Client(1)), later()), Ok(Asked::Send));
        assert_eq!(q.ask(Question::NetStats, Some(W::Round(1)), later()), Ok(Asked::Send));
        assert_eq!(q.ask(Question::DiskStats, Some(W::Round(1)), later()), Ok(Asked::Joined));
        assert_eq!(q.ask(set_link(true), Some(W::Client(2)), later()), Ok(Asked::Send));
        // A read after the link change waits for the answer that shows it.
        assert_eq!(q.ask(Question::NetStats, Some(W::Client(3)), later()), Ok(Asked::Joined));
        assert_eq!(q.ask(Question::BalloonStats, None, later()), Ok(Asked::Send));
        assert_eq!(q.ask(Question::BalloonStats, None, later()), Ok(Asked::Joined));
        assert_eq!(q.ask(Question::SetBalloon { target_mib: 64 }, None, later()), Ok(Asked::Send));
        assert_eq!(q.len(), 5);
        // Mixed kinds, answered in order, each to its own waiters.
        let disks = q.answered(Kind::Disks);
        assert_eq!(disks.answered, Some((Question::DiskStats, vec![W::Client(1), W::Round(1)])));
        assert_eq!(q.answered(Kind::Nics).answered, Some((Question::NetStats, vec![W::Round(1)])));
        assert_eq!(q.answered(Kind::Nics).answered, Some((set_link(true), vec![W::Client(2), W::Client(3)])));
        assert_eq!(q.answered(Kind::Balloon).answered, Some((Question::BalloonStats, vec![])));
        assert_eq!(q.answered(Kind::Balloon).answered, Some((Question::SetBalloon { target_mib: 64 }, vec![])));
        assert!(q.answered(Kind::Disks).answered.is_none(), "an answer nobody asked for settles nothing");
    }

    #[test]
    fn an_answer_of_one_kind_fails_the_older_questions_of_other_kinds_it_overtook() {
        let mut q = Queue::default();
        q.ask(Question::DiskStats, Some(W::Client(1)), later()).unwrap();
        q.ask(Question::NetStats, Some(W::Client(2)), later()).unwrap();
        let s = q.answered(Kind::Nics);
        assert_eq!(s.skipped, vec![(Kind::Disks, W::Client(1))]);
        assert_eq!(s.answered, Some((Question::NetStats, vec![W::Client(2)])));
        assert!(q.is_empty());
    }

    #[test]
    fn a_late_answer_is_taken_by_the_question_that_timed_out_not_the_next_one() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.ask(Question::NetStats, Some(W::Client(1)), now + Duration::from_secs(1)).unwrap();
        assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(q.expire(now), vec![], "not yet");
        assert_eq!(q.expire(now + Duration::from_secs(1)), vec![(Kind::Nics, W::Client(1))]);
        assert_eq!(q.next_deadline(), None);
        // The question stays out: a link change after it is sent on its own.
        assert_eq!(q.ask(set_link(false), Some(W::Client(2)), later()), Ok(Asked::Send));
        let late = q.answered(Kind::Nics);
        assert_eq!(late.answered, Some((Question::NetStats, vec![])), "the late answer goes to nobody");
        assert_eq!(q.answered(Kind::Nics).answered, Some((set_link(false), vec![W::Client(2)])));
    }

    #[test]
    fn a_helper_that_ends_fails_every_waiter_and_a_failed_send_is_taken_back() {
        let mut q = Queue::default();
        q.ask(Question::DiskStats, Some(W::Client(1)), later()).unwrap();
        q.ask(Question::DiskStats, Some(W::Round(4)), later()).unwrap();
        q.ask(set_link(true), Some(W::Client(2)), later()).unwrap();
        q.ask(Question::BalloonStats, None, later()).unwrap();
        assert_eq!(q.unsend(), Vec::<W>::new(), "the balloon question had no waiter");
        let mut all = q.abandon();
        all.sort_by_key(|(_, w)| format!("{w:?}"));
        assert_eq!(all, vec![(Kind::Disks, W::Client(1)), (Kind::Nics, W::Client(2)), (Kind::Disks, W::Round(4))]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_queue_is_bounded_in_questions_and_waiters() {
        let mut q = Queue::default();
        for i in 0..MAX_OUT {
            assert_eq!(q.ask(set_link(i % 2 == 0), Some(W::Client(i as u32)), later()), Ok(Asked::Send));
        }
        assert_eq!(q.ask(set_link(true), Some(W::Client(999)), later()), Err(Full));
        // Reads still join the question out, up to the waiters' bound.
        let mut joined = MAX_OUT;
        while joined < MAX_WAITERS {
            assert_eq!(q.ask(Question::NetStats, Some(W::Round(joined as u64)), later()), Ok(Asked::Joined));
            joined += 1;
        }
        assert_eq!(q.ask(Question::NetStats, Some(W::Round(0)), later()), Err(Full));
        assert_eq!(q.ask(Question::DiskStats, None, later()), Err(Full));
        assert_eq!(q.len(), MAX_OUT);
    }
}
