//! The frontend's single mio event loop: listeners, clients and the broker channel.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixListener};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::conn::{
    Admission, Client, HANDSHAKE_TIMEOUT, INPUT_BUDGET, MAX_INBUF, OUT_PAUSE, OUTPUT_BUDGET, ReadOutcome, SMALL_INBUF,
    Stream,
};
use super::dispatch::{self, Action, Facts, Session};
use super::streams::{Relay, RelayFd, StreamKind};
use crate::logging::{self, LogState};
use crate::privsep::{
    BrokerReply, Channel, ChannelError, ConnId, Envelope, FrontendConfig, FrontendRequest, ListenerKind,
};
use crate::rpc::frame::{self, Header};

const CHANNEL: Token = Token(0);
const FIRST_CLIENT: usize = 1024;
/// The handshake thread's waker: a TLS session is back ([`super::handshakes`]).
const HANDSHAKES: Token = Token(FIRST_CLIENT - 1);
/// Bytes queued to the broker above which no client is read or accepted
/// until the broker has taken them: back-pressure, never a blocked send.
const CHANNEL_HIGH_WATER: usize = 1024 * 1024;
/// Keepalive PING.
const PING: i32 = 1;

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn from_fd(kind: ListenerKind, fd: OwnedFd) -> io::Result<Listener> {
        Ok(match kind {
            ListenerKind::Tcp | ListenerKind::Tls => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                Listener::Tcp(TcpListener::from_std(l))
            }
            _ => {
                let l = std::os::unix::net::UnixListener::from(fd);
                l.set_nonblocking(true)?;
                Listener::Unix(UnixListener::from_std(l))
            }
        })
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        }
    }
}

/// What an outstanding broker request was for.
enum Pending {
    /// `ClientOpened` for the connection on this token.
    Admission(Token),
    /// A refused call's report: it holds one of the client's
    /// `max_client_requests` places until the broker has taken it.
    Denied(Token),
    /// `Authenticated` for this TLS connection, with the DN it showed.
    Authentication(ConnId, Option<String>),
    /// A client's call: reply to this header on this connection (and, for
    /// a call that opens a stream, what the stream will relay).
    Call(Token, Header, Option<StreamKind>),
}

/// Stream relay tokens start here, above every client token.
const FIRST_RELAY: usize = 1 << 30;

/// The frontend's state.
pub struct Server {
    poll: Poll,
    channel: Channel,
    listeners: Vec<(ListenerKind, Listener)>,
    clients: HashMap<Token, Client>,
    by_conn: HashMap<ConnId, Token>,
    pending: HashMap<u32, Pending>,
    next_id: u32,
    /// Something was held back (accepts, reads or calls) and must be
    /// picked up again once there is room.
    needs_resume: bool,
    next_token: usize,
    config: FrontendConfig,
    /// Relay fd tokens to the client whose stream it is.
    relay_tokens: HashMap<Token, Token>,
    /// Asks the broker for TLS handshake signatures.
    sign: Option<std::sync::Arc<crate::tls::session::SignChannel>>,
    /// Wakes the event loop when the handshake thread hands a session back.
    waker: Option<std::sync::Arc<mio::Waker>>,
    /// The handshake thread, once started (TLS only).
    handshakes: Option<super::handshakes::Handshakes>,
    /// TLS for new TLS clients.
    tls: Option<crate::tls::session::Tls>,
    /// The broker's domain table: read-only calls answered here.
    replica: super::replica::Replica,
}

/// The rustls configuration for `config`'s TLS material, if TLS listens.
fn tls_config(
    config: &FrontendConfig,
    sign: &Option<std::sync::Arc<crate::tls::session::SignChannel>>,
) -> Option<crate::tls::session::Tls> {
    let (material, sign) = (config.tls.as_ref()?, sign.as_ref()?);
    match crate::tls::session::server_config(material, sign.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            log::error!("TLS: {e}; TLS clients are refused");
            None
        }
    }
}

impl Server {
    /// Builds the poller and registers the channel and listeners (before confinement,
    /// since creating an epoll instance is outside the frontend's seccomp policy).
    pub fn new(
        channel: Channel,
        sockets: Vec<(ListenerKind, OwnedFd)>,
        config: FrontendConfig,
        sign: Option<Channel>,
    ) -> io::Result<Server> {
        let sign = sign.map(|c| std::sync::Arc::new(crate::tls::session::SignChannel::new(c)));
        let tls = tls_config(&config, &sign);
        let poll = Poll::new()?;
        let waker = match &sign {
            Some(_) => Some(std::sync::Arc::new(mio::Waker::new(poll.registry(), HANDSHAKES)?)),
            None => None,
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut SourceFd(&channel.raw_fd()), CHANNEL, interest)?;
        let mut listeners = Vec::new();
        for (i, (kind, fd)) in sockets.into_iter().enumerate() {
            let mut l = Listener::from_fd(kind, fd)?;
            let token = Token(1 + i);
            match &mut l {
                Listener::Unix(u) => poll.registry().register(u, token, Interest::READABLE)?,
                Listener::Tcp(t) => poll.registry().register(t, token, Interest::READABLE)?,
            }
            listeners.push((kind, l));
        }
        Ok(Server {
            poll,
            channel,
            listeners,
            clients: HashMap::new(),
            by_conn: HashMap::new(),
            pending: HashMap::new(),
            replica: Default::default(),
            next_id: 2,
            needs_resume: false,
            next_token: FIRST_CLIENT,
            config,
            relay_tokens: HashMap::new(),
            sign,
            waker,
            handshakes: None,
            tls,
        })
    }

    /// Starts the TLS handshake thread (a TLS frontend only): after the
    /// process is confined, before the event loop's own filter goes on.
    pub fn start_handshakes(&mut self) -> Result<(), crate::sandbox::SandboxError> {
        if let Some(waker) = &self.waker {
            self.handshakes = Some(super::handshakes::Handshakes::start(waker.clone())?);
        }
        Ok(())
    }

    /// The handshake thread handed sessions back: their handshakes go on
    /// here (or end, if they failed).
    fn on_handshakes(&mut self) {
        let Some(handshakes) = &self.handshakes else { return };
        for done in handshakes.finished() {
            let (token, conn) = done.key;
            let Some(client) = self.clients.get_mut(&token).filter(|c| c.conn == conn) else { continue };
            let Stream::Tls(t) = &mut client.stream else { continue };
            if let Err(e) = t.resume(done.session, done.result) {
                log::debug!("TLS client {conn}: {e}");
                client.kill();
                self.hang_up(token);
                continue;
            }
            // Records that came meanwhile wait in the socket (edge-triggered).
            self.on_client(token, true);
        }
    }

    /// Tells the broker we are confined; it checks that for itself.
    pub fn send_ready(&self) -> Result<(), ChannelError> {
        self.channel.send_wait(&Envelope { id: 0, body: FrontendRequest::Ready }, &[])
    }

    /// Serves until the broker goes away.
    pub fn run(&mut self) -> ExitCode {
        let mut events = Events::with_capacity(256);
        loop {
            let next = [self.next_keepalive(), self.next_handshake_deadline(), self.next_stall_deadline()]
                .into_iter()
                .flatten()
                .min();
            let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("event loop: {e}");
                return ExitCode::FAILURE;
            }
            for ev in &events {
                let outcome = match ev.token() {
                    CHANNEL => self.on_channel(),
                    HANDSHAKES => {
                        self.on_handshakes();
                        Ok(())
                    }
                    Token(t) if t < FIRST_CLIENT => {
                        self.on_listener(t - 1);
                        Ok(())
                    }
                    Token(t) if t >= FIRST_RELAY => {
                        self.on_relay(Token(t));
                        Ok(())
                    }
                    token => {
                        self.on_client(token, ev.is_readable());
                        Ok(())
                    }
                };
                if let Err(e) = outcome {
                    log::info!("broker channel closed ({e}); frontend exiting");
                    return ExitCode::SUCCESS;
                }
            }
            self.keepalive_tick();
            self.drop_slow_handshakes();
            self.drop_stalled();
            self.resume();
        }
    }

    fn request(&mut self, body: FrontendRequest) -> Result<u32, ChannelError> {
        self.request_with(body, &[])
    }

    fn request_with(
        &mut self,
        body: FrontendRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<u32, ChannelError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.channel.send(&Envelope { id, body }, fds)?;
        Ok(id)
    }

    /// The broker has not taken what we sent: take no new work until it does.
    fn throttled(&self) -> bool {
        self.channel.queued() > CHANNEL_HIGH_WATER
    }

    /// Picks up what back-pressure or the input budget left waiting: new
    /// connections, clients not read to the end, calls not dispatched.
    /// (Readiness is edge-triggered: nothing else would wake them.)
    fn resume(&mut self) {
        if !self.needs_resume || self.throttled() {
            return;
        }
        self.needs_resume = false;
        for i in 0..self.listeners.len() {
            self.on_listener(i);
        }
        let starved: Vec<Token> = self
            .clients
            .values_mut()
            .filter(|c| !c.gone && c.relay_starved)
            .filter_map(|c| {
                c.relay_starved = false;
                c.relay.as_ref().map(|r| r.token)
            })
            .collect();
        for relay in starved {
            self.on_relay(relay);
        }
        let waiting: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.gone && (c.stalled || !c.inbuf.is_empty()))
            .map(|(t, _)| *t)
            .collect();
        for token in waiting {
            if self.throttled() {
                self.needs_resume = true;
                return;
            }
            self.read_client(token);
            self.process(token);
        }
    }

    /// Queues bytes for a client. One that is behind already (its last
    /// output still waits) while the frontend's output budget is spent is
    /// the one not reading: it is cut off rather than buffered for.
    ///
    /// A large reply to a client that is keeping up counts too: if the
    /// budget is spent and its socket cannot take the reply now, it is cut
    /// off as well, so the budget bounds what all clients hold together.
    fn queue_for(&mut self, token: Token, bytes: &[u8]) {
        let behind = self.clients.get(&token).is_some_and(|c| !c.outbuf.is_empty());
        // Only a client that is behind, or a large reply, pays for the sum.
        let counted = behind || bytes.len() > SMALL_INBUF;
        let over = counted && self.output_held() + bytes.len() > OUTPUT_BUDGET;
        let Some(client) = self.clients.get_mut(&token) else { return };
        if over && behind {
            log::warn!("client {} leaves its replies unread and the output budget is spent; closing it", client.conn);
            return client.kill();
        }
        if !client.queue(bytes) {
            log::warn!("client {} does not read its replies; closing it", client.conn);
            return client.kill();
        }
        if over && (!client.flush() || !client.outbuf.is_empty()) {
            log::warn!("client {} cannot take a large reply and the output budget is spent; closing it", client.conn);
            client.kill();
        }
    }

    /// Input buffers of all clients beyond their free allowance: what is
    /// allocated for frames on their way counts, not only what arrived.
    fn input_held(&self) -> usize {
        self.clients.values().map(|c| c.inbuf.capacity().saturating_sub(SMALL_INBUF)).sum()
    }

    /// Output queued for all clients.
    fn output_held(&self) -> usize {
        self.clients.values().map(|c| c.outbuf.len()).sum()
    }

    /// Reads what the client sent, within its share of the input budget.
    fn read_client(&mut self, token: Token) {
        // First within the allowance every client has; beyond it only with
        // what the budget has left, counted then (the common path, small
        // calls, never pays for the count).
        let mut budget_left = 0;
        for extended in [false, true] {
            if extended {
                budget_left = INPUT_BUDGET.saturating_sub(self.input_held());
                if budget_left == 0 {
                    return;
                }
            }
            let Some(client) = self.clients.get_mut(&token) else { return };
            // A TLS client's handshake waits until the broker has let it in.
            let held = client.admission == Admission::Pending && matches!(client.stream, Stream::Tls(_));
            if client.gone || held {
                return;
            }
            // A client with a whole call waiting is not read further until
            // that call is served: what back-pressure holds back stays in its socket.
            let waiting = matches!(frame::split(&client.inbuf), Ok(Some(_)));
            let limit = match waiting {
                true => client.inbuf.len(),
                false => (client.inbuf.len().max(SMALL_INBUF) + budget_left).min(MAX_INBUF),
            };
            match client.read_available(limit) {
                ReadOutcome::Drained => {
                    client.stalled = false;
                    return;
                }
                ReadOutcome::AtLimit => {
                    client.stalled = true;
                    self.needs_resume = true;
                    if waiting {
                        return;
                    }
                }
                ReadOutcome::Gone => return client.kill(),
            }
        }
    }

    fn on_listener(&mut self, index: usize) {
        loop {
            // Each accept costs the broker a message: none while it lags.
            if self.throttled() {
                self.needs_resume = true;
                return;
            }
            let Some((kind, listener)) = self.listeners.get(index) else {
                return;
            };
            let kind = *kind;
            let mut stream = match listener.accept() {
                Ok(Stream::Tcp(tcp)) if kind == ListenerKind::Tls => {
                    let Some(config) = self.tls.as_ref().map(|t| t.config.clone()) else {
                        log::warn!("refusing a TLS client: TLS is not set up");
                        continue;
                    };
                    match super::conn::TlsStream::new(tcp, config) {
                        Ok(t) => Stream::Tls(Box::new(t)),
                        Err(e) => {
                            log::warn!("refusing a TLS client: {e}");
                            continue;
                        }
                    }
                }
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds, say: try again when something else has
                    // happened (readiness is edge-triggered).
                    log::warn!("accept on the {} socket: {e}", kind.name());
                    self.needs_resume = true;
                    return;
                }
            };
            let (max, key) = match kind {
                ListenerKind::Admin => (self.config.admin_max_clients, "admin_max_clients"),
                _ => (self.config.max_clients, "max_clients"),
            };
            if self.clients.values().filter(|c| c.peer.socket.server() == kind.server()).count() >= max as usize {
                log::warn!("refusing a client on the {} socket: {key} ({max}) reached", kind.name());
                continue;
            }
            let peer = stream.identity(kind);
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE) {
                log::warn!("cannot watch a new client: {e}");
                continue;
            }
            log::debug!("accepted client on the {} socket: {peer:?}", kind.name());
            // The broker reads who it is from the connection itself.
            let id = match self.request_with(FrontendRequest::ClientOpened, &[stream.fd()]) {
                Ok(id) => id,
                Err(e) => {
                    log::error!("cannot report a client to the broker: {e}");
                    let _ = self.poll.registry().deregister(&mut stream);
                    continue;
                }
            };
            self.pending.insert(id, Pending::Admission(token));
            let session = Session {
                readonly: kind == ListenerKind::ReadOnly,
                secure: !matches!(kind, ListenerKind::Tcp),
                admin: kind == ListenerKind::Admin,
                ..Session::default()
            };
            let client = Client {
                // The broker numbers it when it admits it.
                conn: 0,
                stream,
                peer,
                admission: Admission::Pending,
                closing: false,
                gone: false,
                inbuf: Vec::new(),
                outbuf: Vec::new(),
                session,
                in_flight: 0,
                last_rx: Instant::now(),
                accepted: Instant::now(),
                pings: 0,
                relay: None,
                relay_starved: false,
                retired: Vec::new(),
                frame_since: None,
                last_tx: Instant::now(),
                stalled: false,
            };
            self.clients.insert(token, client);
        }
    }

    fn on_client(&mut self, token: Token, readable: bool) {
        // What the broker sent first (a newer domain table) is read before
        // the client's calls, which may be answered from it. A broken
        // channel is the main loop's to notice.
        if readable && self.receive().is_err() {
            return;
        }
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if readable && !client.gone {
            self.read_client(token);
        }
        self.check_handshake(token);
        self.process(token);
    }

    /// A TLS client whose handshake just ended goes to the broker with the
    /// DN of its certificate (rustls has checked it against the CA and CRLs).
    fn check_handshake(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else { return };
        let Stream::Tls(t) = &client.stream else { return };
        if client.admission != Admission::Handshaking || client.gone || t.handshaking() {
            return;
        }
        let certs = t.session().and_then(|s| s.peer_certificates());
        // Fail closed: without a working TLS set-up nothing is verified.
        let verdict = self.tls.as_ref().map_or(Err("TLS is not set up".to_owned()), |tls| tls.verify(certs));
        if let Err(why) = verdict {
            log::warn!("TLS client {} refused: {why}", client.conn);
            if let Stream::Tls(t) = &mut client.stream {
                t.failure = Some(why);
            }
            client.kill();
            return self.hang_up(token);
        }
        let dn = certs.and_then(|c| c.first()).and_then(|c| crate::tls::dn::subject_dn(c));
        let conn = client.conn;
        client.admission = Admission::Authenticating;
        match self.request(FrontendRequest::Authenticated { conn, dn: dn.clone() }) {
            Ok(id) => {
                self.pending.insert(id, Pending::Authentication(conn, dn));
            }
            Err(e) => {
                log::error!("cannot report a TLS client to the broker: {e}");
                if let Some(c) = self.clients.get_mut(&token) {
                    c.kill();
                }
            }
        }
    }

    /// Dispatches complete packets (once admitted, and within
    /// max_client_requests), writes what is queued, and settles closing.
    fn process(&mut self, token: Token) {
        let max_in_flight = self.config.max_client_requests.max(1);
        let facts = Facts { uri: &self.config.uri };
        let mut forwards = Vec::new();
        let mut became_readonly = false;
        let mut streams = Vec::new();
        let mut denied = Vec::new();
        let throttled = self.throttled();
        let pending_output = self.clients.get(&token).is_some_and(|c| !c.outbuf.is_empty());
        // Only a client that has output waiting pays for the sum.
        let over_budget = pending_output && self.output_held() > OUTPUT_BUDGET;
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut held_back = false;
        while client.admission == Admission::Admitted
            && !client.closing
            && client.in_flight + ((forwards.len() + denied.len()) as u32) < max_in_flight
        {
            // Back-pressure: a broker that lags, a client that does not
            // read, or replies piling up for everyone stop new calls here.
            // One that is behind on its replies gets one call at a time.
            let behind = !client.outbuf.is_empty() && client.in_flight + (forwards.len() as u32) > 0;
            if throttled || behind || client.outbuf.len() > OUT_PAUSE || (over_budget && !client.outbuf.is_empty()) {
                held_back = true;
                break;
            }
            let (header, range, len) = match frame::split(&client.inbuf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("client {}: {e}; closing it", client.conn);
                    client.kill();
                    break;
                }
            };
            let action = dispatch::dispatch(&mut client.session, &facts, &header, &client.inbuf[range]);
            client.inbuf.drain(..len);
            client.frame_since = (!client.inbuf.is_empty()).then(Instant::now);
            if client.inbuf.is_empty() && client.inbuf.capacity() > SMALL_INBUF {
                // A large frame's buffer goes back, not kept for small ones.
                client.inbuf = Vec::new();
            }
            let queued = match action {
                Action::Send(bytes) => client.queue(&bytes),
                Action::SendAndClose(bytes) => {
                    client.closing = true;
                    client.queue(&bytes)
                }
                Action::BecameReadOnly(bytes) => {
                    became_readonly = true;
                    client.queue(&bytes)
                }
                Action::Denied(bytes) => {
                    denied.push(header.proc_);
                    client.queue(&bytes)
                }
                // From the copy only behind no call of this client's still
                // at the broker, so its answers keep their order.
                Action::Forward(call) => {
                    let readonly = client.session.readonly;
                    let answered = (client.in_flight == 0 && forwards.is_empty())
                        .then(|| self.replica.answer(&call, readonly, crate::privsep::snapshot::now_ns()))
                        .flatten();
                    match answered {
                        Some(result) => client.queue(&dispatch::reply(&header, result)),
                        None => {
                            forwards.push((header, call));
                            true
                        }
                    }
                }
                Action::Stream(h, data) => {
                    streams.push((h, data));
                    true
                }
                Action::Nothing => true,
                Action::Close(why) => {
                    log::warn!("client {}: {why}; closing it", client.conn);
                    client.kill();
                    true
                }
            };
            if !queued {
                log::warn!("client {} does not read its replies; closing it", client.conn);
                client.kill();
            }
        }
        let conn = client.conn;
        if held_back {
            self.needs_resume = true;
        }
        if became_readonly && self.request(FrontendRequest::ReadOnly { conn }).is_err() {
            log::error!("cannot tell the broker client {conn} is read-only");
        }
        for procedure in denied {
            match self.request(FrontendRequest::Denied { conn, procedure }) {
                Ok(id) => {
                    self.pending.insert(id, Pending::Denied(token));
                    if let Some(c) = self.clients.get_mut(&token) {
                        c.in_flight += 1;
                    }
                }
                Err(e) => log::error!("cannot report a refused call of client {conn} to the broker: {e}"),
            }
        }
        for (h, data) in streams {
            self.client_stream(token, &h, &data);
        }
        for (header, call) in forwards {
            let opens = match &call {
                crate::privsep::Call::OpenConsole { uuid, .. } => Some(StreamKind::Console { uuid: *uuid }),
                crate::privsep::Call::Storage(c) => c
                    .opens_stream()
                    .map(|(upload, length)| StreamKind::Volume { upload, remaining: (length > 0).then_some(length) }),
                _ => None,
            };
            match self.request(FrontendRequest::Call { conn, call }) {
                Ok(id) => {
                    self.pending.insert(id, Pending::Call(token, header, opens));
                    if let Some(c) = self.clients.get_mut(&token) {
                        c.in_flight += 1;
                    }
                }
                Err(e) => {
                    log::error!("cannot forward a call to the broker: {e}");
                    let bytes = dispatch::error_reply(&header, &crate::rpc::error::RpcError::BrokerUnavailable);
                    if let Some(c) = self.clients.get_mut(&token) {
                        c.queue(&bytes);
                    }
                }
            }
        }
        self.settle(token);
    }

    /// Flushes output, updates interest, and drops the client once it is
    /// closing with nothing left to send or wait for.
    fn settle(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if !client.gone && !client.flush() {
            client.kill();
        }
        let done = client.gone || (client.closing && client.outbuf.is_empty() && client.in_flight == 0);
        if done {
            return self.hang_up(token);
        }
        let writing = !client.outbuf.is_empty() || client.stream.wants_write();
        let interest = if writing { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        let _ = self.poll.registry().reregister(&mut client.stream, token, interest);
    }

    /// Drops a client; the broker hears of it once it has answered the admission.
    fn hang_up(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut client.stream);
        client.kill();
        if client.admission == Admission::Pending {
            return;
        }
        let conn = client.conn;
        log::debug!("client {conn} on the {} socket disconnected", client.peer.socket.name());
        // A TLS handshake that failed is the broker's to audit.
        let failed_tls = match (&client.stream, client.admission) {
            (Stream::Tls(t), Admission::Handshaking) => t.failure.clone(),
            _ => None,
        };
        if let Some(mut fd) = client.relay.take().and_then(|c| c.fd) {
            let _ = self.poll.registry().deregister(&mut fd);
        }
        self.relay_tokens.retain(|_, t| *t != token);
        self.forget(token);
        if let Some(reason) = failed_tls
            && let Err(e) = self.request(FrontendRequest::AuthFailed { conn, reason })
        {
            log::error!("cannot report a failed TLS handshake to the broker: {e}");
        }
        if let Err(e) = self.request(FrontendRequest::ClientClosed { conn }) {
            log::error!("cannot report a closed client to the broker: {e}");
        }
    }

    fn forget(&mut self, token: Token) {
        if let Some(c) = self.clients.remove(&token) {
            self.by_conn.remove(&c.conn);
        }
    }

    fn on_channel(&mut self) -> Result<(), ChannelError> {
        // What waited for room goes first; once the broker has caught up,
        // what back-pressure held is picked up again.
        if self.channel.flush()? {
            self.needs_resume = true;
        }
        self.receive()
    }

    /// Takes in everything the broker has sent.
    fn receive(&mut self) -> Result<(), ChannelError> {
        loop {
            let (env, fds) = match self.channel.recv::<Envelope<BrokerReply>>(|e| e.body.fd_count()) {
                Ok(m) => m,
                Err(ChannelError::WouldBlock) => return Ok(()),
                // One message lost (its fds cut off when our fd table was
                // full, say) is that message's loss, not every client's.
                Err(e @ (ChannelError::Oversized | ChannelError::FdCount { .. })) => {
                    log::error!("a message from the broker was lost: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            match env.body {
                BrokerReply::Reconfigure(config) => self.reconfigure(config, fds),
                BrokerReply::Welcome { .. } => {
                    log::warn!("ignoring a second Welcome from the broker")
                }
                BrokerReply::Event(event) => self.deliver(&event),
                BrokerReply::PoolEvent(event) => self.deliver_pool(&event),
                BrokerReply::Replica(table) => self.replica.update(table),
                BrokerReply::Stats(update) => self.replica.update_stats(update),
                BrokerReply::NetEvent(event) => self.deliver_net(&event),
                BrokerReply::ConsoleTaken(uuid) => {
                    let holders: Vec<Token> = self
                        .clients
                        .iter()
                        .filter(|(_, c)| c.relay.as_ref().is_some_and(|r| r.kind == StreamKind::Console { uuid }))
                        .map(|(t, _)| *t)
                        .collect();
                    for t in holders {
                        self.stream_eof(t, false);
                    }
                }
                BrokerReply::Disconnect(conn) => {
                    if let Some(&token) = self.by_conn.get(&conn) {
                        log::info!("closing client {conn} as an administrator asked");
                        if let Some(c) = self.clients.get_mut(&token) {
                            c.kill();
                        }
                        self.hang_up(token);
                    }
                }
                body => self.answered(env.id, body, fds),
            }
        }
    }

    /// Sends a lifecycle event to every client registered for it.
    fn deliver(&mut self, event: &crate::privsep::DomainEvent) {
        let tokens: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.admission == Admission::Admitted && !c.gone && !c.session.callbacks.is_empty())
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            let Some(client) = self.clients.get_mut(&token) else { continue };
            let bytes = client.session.event_messages(event);
            if !bytes.is_empty() {
                self.queue_for(token, &bytes);
            }
            self.settle(token);
        }
    }

    /// Sends a storage pool event to every client registered for it.
    fn deliver_pool(&mut self, event: &crate::privsep::storage::PoolEvent) {
        self.deliver_to(|s| !s.pool_callbacks.is_empty(), |s| super::storage::event_messages(s, event));
    }

    /// Sends a network event to every client registered for it.
    fn deliver_net(&mut self, event: &crate::privsep::network::NetEvent) {
        self.deliver_to(|s| !s.net_callbacks.is_empty(), |s| super::network::event_messages(s, event));
    }

    /// Queues for every admitted client that `registered` picks the event
    /// messages `messages` builds from its registrations (none: nothing).
    fn deliver_to(
        &mut self,
        registered: impl Fn(&super::session::Session) -> bool,
        messages: impl Fn(&super::session::Session) -> Vec<u8>,
    ) {
        let tokens: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.admission == Admission::Admitted && !c.gone && registered(&c.session))
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            let Some(client) = self.clients.get_mut(&token) else { continue };
            let bytes = messages(&client.session);
            if !bytes.is_empty() {
                self.queue_for(token, &bytes);
            }
            self.settle(token);
        }
    }

    fn answered(&mut self, id: u32, reply: BrokerReply, mut fds: Vec<OwnedFd>) {
        match (self.pending.remove(&id), reply) {
            (Some(Pending::Admission(token)), reply) => self.admitted(token, reply),
            (Some(Pending::Denied(token)), _) => {
                let Some(client) = self.clients.get_mut(&token) else { return };
                client.in_flight = client.in_flight.saturating_sub(1);
                self.process(token);
            }
            (Some(Pending::Authentication(conn, dn)), reply) => self.authenticated(conn, dn, reply),
            (Some(Pending::Call(token, header, opens)), BrokerReply::Value(result)) => {
                let mut kick = None;
                if let (Ok(v), Some(kind), Some(fd)) = (&result, opens, fds.pop())
                    && v.carries_fd()
                {
                    kick = self.attach_stream(token, header, kind, fd);
                }
                let Some(client) = self.clients.get_mut(&token) else {
                    return;
                };
                client.in_flight = client.in_flight.saturating_sub(1);
                if !client.gone {
                    self.queue_for(token, &dispatch::reply(&header, result));
                }
                // A file is never "readable" to epoll: a download starts
                // pumping once its reply is queued.
                if let Some(relay) = kick {
                    self.on_relay(relay);
                }
                self.process(token);
            }
            (_, BrokerReply::Refused(e)) => log::warn!("broker refused request {id}: {e}"),
            _ => {}
        }
    }

    /// Joins the fd the broker sent to the client's new stream; returns
    /// the relay's token when it must be pumped without a readiness event
    /// (a volume download: files are not polled).
    fn attach_stream(&mut self, token: Token, call: Header, kind: StreamKind, fd: OwnedFd) -> Option<Token> {
        self.retire_stream(token);
        let client = self.clients.get_mut(&token)?;
        let mut fd = match kind {
            // The broker's socket is already non-blocking (a shared file description).
            StreamKind::Console { .. } => {
                RelayFd::Socket(mio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)))
            }
            StreamKind::Volume { .. } => RelayFd::File(std::fs::File::from(fd)),
        };
        let relay_token = Token(FIRST_RELAY + self.next_token);
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(&mut fd, relay_token, Interest::READABLE) {
            log::warn!("cannot watch a stream's fd: {e}");
            return None;
        }
        self.relay_tokens.insert(relay_token, token);
        client.relay = Some(Relay { fd: Some(fd), call, kind, token: relay_token });
        matches!(kind, StreamKind::Volume { upload: false, .. }).then_some(relay_token)
    }

    /// Ends the client's stream, if any, for a new one: the old one's
    /// client reads end of file (a console that a FORCE open on the same
    /// connection took over has had it already, from `ConsoleTaken`), and
    /// its finish or abort is answered later.
    fn retire_stream(&mut self, token: Token) {
        self.stream_eof(token, true);
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if let Some(old) = client.relay.take() {
            if client.retired.len() >= super::streams::RETIRED_MAX {
                client.retired.remove(0);
            }
            client.retired.push(old);
        }
    }

    /// A stream packet from the client: data, finish or abort.
    fn client_stream(&mut self, token: Token, h: &Header, data: &[u8]) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let Some(relay) = client.relay.as_mut().filter(|r| r.is_for(h)) else {
            // A replaced stream's finish or abort is answered; anything
            // else for no such stream is dropped, as libvirtd does.
            if h.status != crate::rpc::frame::Status::Continue as i32
                && let Some(i) = client.retired.iter().position(|r| r.is_for(h))
            {
                let old = client.retired.remove(i);
                client.queue(&old.finish_packet());
                self.settle(token);
            }
            return;
        };
        match h.status {
            s if s == crate::rpc::frame::Status::Continue as i32 => {
                if let Err(e) = relay.write_in(data) {
                    // The client hears of it as a stream error, and the stream ends.
                    let bytes = super::storage::stream_error(&relay.call, &e);
                    client.queue(&bytes);
                    self.end_stream(token, false, true);
                }
            }
            // Finish and abort alike are answered with an empty OK, as libvirtd does.
            _ => self.end_stream(token, true, true),
        }
    }

    /// Ends a client's stream: optionally answers the client's finish or
    /// abort, and tells the broker when the far side was still ours to give back.
    fn end_stream(&mut self, token: Token, answer: bool, tell_broker: bool) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let Some(relay) = client.relay.take() else {
            return;
        };
        if answer {
            client.queue(&relay.finish_packet());
        }
        let closed = relay.kind.closed(client.conn);
        if let Some(mut fd) = relay.fd {
            let _ = self.poll.registry().deregister(&mut fd);
            self.relay_tokens.remove(&relay.token);
            if tell_broker && let Some(closed) = closed {
                let _ = self.request(closed);
            }
        }
        self.settle(token);
    }

    /// The far side of a stream ended: sends the client end of file and
    /// keeps the stream for its finish or abort. Tells the broker when the
    /// far side was still ours (not when the broker gave it to another).
    fn stream_eof(&mut self, token: Token, tell_broker: bool) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let Some(relay) = client.relay.as_mut() else {
            return;
        };
        let Some(mut fd) = relay.fd.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut fd);
        self.relay_tokens.remove(&relay.token);
        let (eof, closed) = (relay.eof_packet(), relay.kind.closed(client.conn));
        client.queue(&eof);
        if tell_broker && let Some(closed) = closed {
            let _ = self.request(closed);
        }
        self.settle(token);
    }

    /// The far side of a stream has bytes: to the client as stream data,
    /// as far as its output allowance goes.
    fn on_relay(&mut self, relay_token: Token) {
        let Some(&token) = self.relay_tokens.get(&relay_token) else {
            return;
        };
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let room = OUT_PAUSE.saturating_sub(client.outbuf.len());
        let Some(relay) = client.relay.as_mut() else {
            return;
        };
        let out = relay.pump_out(room);
        if !client.queue(&out.packets) {
            client.kill();
        }
        if out.starved {
            // Picked up again by `resume` once the client has read.
            client.relay_starved = true;
            self.needs_resume = true;
        }
        if out.ended {
            self.stream_eof(token, true);
        } else {
            self.settle(token);
        }
    }

    fn admitted(&mut self, token: Token, reply: BrokerReply) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        match reply {
            BrokerReply::Admitted(conn) if matches!(client.stream, Stream::Tls(_)) => {
                client.conn = conn;
                if let (Some(h), Stream::Tls(t)) = (&self.handshakes, &mut client.stream) {
                    t.hand_off_to(h.sender(), (token, conn));
                }
                self.by_conn.insert(conn, token);
                client.admission = Admission::Handshaking;
                if client.gone {
                    return self.hang_up(token);
                }
                // The ClientHello may be waiting already (edge-triggered).
                self.read_client(token);
                self.check_handshake(token);
                self.settle(token);
            }
            BrokerReply::Admitted(conn) => {
                client.conn = conn;
                self.by_conn.insert(conn, token);
                client.admission = Admission::Admitted;
                if client.gone {
                    return self.hang_up(token);
                }
                self.process(token);
            }
            other => {
                log::warn!("broker refused a client on the {} socket: {other:?}", client.peer.socket.name());
                let _ = self.poll.registry().deregister(&mut client.stream);
                self.clients.remove(&token);
            }
        }
    }

    /// The broker's verdict on a TLS client's certificate: it learns that
    /// it passed from libvirt's confirmation byte, then speaks RPC.
    fn authenticated(&mut self, conn: ConnId, dn: Option<String>, reply: BrokerReply) {
        let Some(&token) = self.by_conn.get(&conn) else { return };
        let Some(client) = self.clients.get_mut(&token) else { return };
        match reply {
            BrokerReply::Ok => {
                client.admission = Admission::Admitted;
                client.peer.dn = dn;
                if !client.queue(&[1]) {
                    client.kill();
                }
                self.process(token);
            }
            other => {
                log::warn!("TLS client {conn} refused: {other:?}");
                client.admission = Admission::Admitted;
                client.kill();
                self.hang_up(token);
            }
        }
    }

    fn keepalive_interval(&self) -> Option<Duration> {
        u64::try_from(self.config.keepalive_interval).ok().filter(|s| *s > 0).map(Duration::from_secs)
    }

    fn next_handshake_deadline(&self) -> Option<Instant> {
        let waiting = self.clients.values().filter(|c| c.admission != Admission::Admitted && !c.gone);
        waiting.map(|c| c.accepted + HANDSHAKE_TIMEOUT).min()
    }

    fn next_stall_deadline(&self) -> Option<Instant> {
        self.clients.values().filter(|c| !c.gone).filter_map(Client::stall_deadline).min()
    }

    /// Cuts off clients that held a partial frame, or left their replies
    /// unread, for too long: what they hold is others' budget.
    fn drop_stalled(&mut self) {
        let now = Instant::now();
        let stalled: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.gone && c.stall_deadline().is_some_and(|d| d <= now))
            .map(|(t, _)| *t)
            .collect();
        for token in stalled {
            let Some(client) = self.clients.get_mut(&token) else { continue };
            let what = if client.outbuf.is_empty() { "a partial frame" } else { "unread replies" };
            log::warn!("client {} held {what} for too long; closing it", client.conn);
            client.kill();
            self.settle(token);
            self.needs_resume = true;
        }
    }

    /// Drops clients that were not admitted in time (a TLS client that never
    /// finishes its handshake would hold an anonymous place for ever).
    fn drop_slow_handshakes(&mut self) {
        let now = Instant::now();
        let slow: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.admission != Admission::Admitted && !c.gone && c.accepted + HANDSHAKE_TIMEOUT <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in slow {
            let Some(client) = self.clients.get_mut(&token) else { continue };
            log::warn!("client {} did not finish connecting within {:?}; closing it", client.conn, HANDSHAKE_TIMEOUT);
            if let Stream::Tls(t) = &mut client.stream {
                t.failure.get_or_insert_with(|| "TLS handshake not finished in time".into());
            }
            client.kill();
            // One still waiting for the broker's admission is dropped when it answers.
            self.settle(token);
        }
    }

    fn next_keepalive(&self) -> Option<Instant> {
        let interval = self.keepalive_interval()?;
        self.clients
            .values()
            .filter(|c| c.session.keepalive && !c.gone)
            .map(|c| c.last_rx + interval * (c.pings + 1))
            .min()
    }

    /// Pings clients that negotiated keepalive and have been silent for an
    /// interval; drops those that left `keepalive_count` pings unanswered.
    fn keepalive_tick(&mut self) {
        let Some(interval) = self.keepalive_interval() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.session.keepalive && !c.gone && c.last_rx + interval * (c.pings + 1) <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in due {
            let Some(client) = self.clients.get_mut(&token) else {
                continue;
            };
            if client.pings >= self.config.keepalive_count {
                log::warn!("client {} did not answer {} keepalive pings; closing it", client.conn, client.pings);
                client.kill();
            } else {
                client.pings += 1;
                client.queue(&dispatch::keepalive(PING));
            }
            self.settle(token);
        }
    }

    fn reconfigure(&mut self, config: FrontendConfig, fds: Vec<OwnedFd>) {
        match LogState::from_handoff(config.log.clone(), config.log_sinks.clone(), fds) {
            Ok(state) => logging::install(state),
            Err(e) => log::error!("reconfigure: {e}"),
        }
        log::debug!("frontend reconfigured: max_clients {}", config.max_clients);
        if config.tls != self.config.tls {
            self.tls = tls_config(&config, &self.sign);
        }
        self.config = config;
    }
}
