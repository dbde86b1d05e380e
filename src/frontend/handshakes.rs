//! TLS handshakes off the event loop. A TLS 1.3 handshake needs one
//! signature, made in the broker, which holds the key; rustls asks for it
//! from inside `process_new_packets` and waits for the answer. So the part
//! of a handshake that may sign runs on a thread of its own
//! (`frontend-tls`, with a seccomp filter of its own): the event loop hands
//! it the session and serves every other client meanwhile, and the
//! handshake resumes on the event loop when the thread hands it back (the
//! broker's answer arrived, or its 2 s bound passed).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use mio::{Token, Waker};
use rustls::ServerConnection;

use crate::privsep::ConnId;
use crate::sandbox::{SandboxError, Thread, seccomp};

/// A session whose handshake has records to process.
pub struct Job {
    /// The client's token and broker number: a session comes back only to
    /// the client it left.
    pub key: (Token, ConnId),
    /// Its rustls session, with the records read already.
    pub session: Box<ServerConnection>,
}

/// A session handed back, with what processing its records gave.
pub struct Done {
    /// As in its [`Job`].
    pub key: (Token, ConnId),
    /// The session.
    pub session: Box<ServerConnection>,
    /// The handshake's failure, if it failed.
    pub result: Result<(), rustls::Error>,
}

/// The handshake thread, as the event loop sees it.
pub struct Handshakes {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

impl Handshakes {
    /// Starts the thread, which puts its seccomp filter on before it takes
    /// a session; returns once the filter is on. `waker` wakes the event
    /// loop when a session comes back. Call it after the process is
    /// confined but before the event loop's own filter (which allows no
    /// thread creation) goes on.
    pub fn start(waker: Arc<Waker>) -> Result<Handshakes, SandboxError> {
        let (jobs, inbox) = channel::<Job>();
        let (outbox, done) = channel::<Done>();
        let (confined_tx, confined) = channel();
        let spawned = std::thread::Builder::new().name("frontend-tls".into()).spawn(move || {
            let filter = seccomp::apply(Thread::FrontendTls);
            let ok = filter.is_ok();
            let _ = confined_tx.send(filter);
            if ok {
                serve(&inbox, &outbox, &waker);
            }
        });
        let failed = |reason: String| SandboxError::Seccomp { thread: Thread::FrontendTls, reason };
        spawned.map_err(|e| failed(e.to_string()))?;
        confined.recv().map_err(|e| failed(e.to_string()))??;
        Ok(Handshakes { jobs, done })
    }

    /// Where to send sessions.
    pub fn sender(&self) -> Sender<Job> {
        self.jobs.clone()
    }

    /// The sessions handed back since the last call.
    pub fn finished(&self) -> Vec<Done> {
        self.done.try_iter().collect()
    }
}

/// The thread's loop: process each session's records (which may wait on
/// the broker's signature), hand it back, wake the event loop.
fn serve(inbox: &Receiver<Job>, outbox: &Sender<Done>, waker: &Waker) {
    while let Ok(Job { key, mut session }) = inbox.recv() {
        let result = session.process_new_packets().map(|_| ());
        if outbox.send(Done { key, session, result }).is_err() {
            return;
        }
        if let Err(e) = waker.wake() {
            log::error!("TLS handshakes: cannot wake the event loop: {e}");
        }
    }
}
