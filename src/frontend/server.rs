//! The frontend's single mio event loop: listeners, clients and the broker channel.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use mio::net::{TcpListener, UnixListener};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::conn::{Admission, Client, Stream};
use crate::logging::{self, LogState};
use crate::privsep::{
    BrokerReply, Channel, ChannelError, ConnId, Envelope, FrontendConfig, FrontendRequest,
    ListenerKind,
};

const CHANNEL: Token = Token(0);
const FIRST_CLIENT: usize = 1024;

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

/// The frontend's state.
pub struct Server {
    poll: Poll,
    channel: Channel,
    listeners: Vec<(ListenerKind, Listener)>,
    clients: HashMap<Token, Client>,
    by_conn: HashMap<ConnId, Token>,
    /// Outstanding `ClientOpened` requests: request id to connection.
    admissions: HashMap<u32, ConnId>,
    next_id: u32,
    next_conn: ConnId,
    next_token: usize,
    config: FrontendConfig,
}

impl Server {
    /// Builds the poller and registers the channel and listeners (before confinement,
    /// since creating an epoll instance is outside the frontend's seccomp policy).
    pub fn new(
        channel: Channel,
        sockets: Vec<(ListenerKind, OwnedFd)>,
        config: FrontendConfig,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&channel.raw_fd()),
            CHANNEL,
            Interest::READABLE,
        )?;
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
            admissions: HashMap::new(),
            next_id: 2,
            next_conn: 1,
            next_token: FIRST_CLIENT,
            config,
        })
    }

    /// Tells the broker we are confined; it checks that for itself.
    pub fn send_ready(&self) -> Result<(), ChannelError> {
        self.channel.send(
            &Envelope {
                id: 0,
                body: FrontendRequest::Ready,
            },
            &[],
        )
    }

    /// Serves until the broker goes away.
    pub fn run(&mut self) -> ExitCode {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("event loop: {e}");
                return ExitCode::FAILURE;
            }
            for ev in &events {
                let token = ev.token();
                let outcome = match token {
                    CHANNEL => self.on_channel(),
                    Token(t) if t < FIRST_CLIENT => {
                        self.on_listener(t - 1);
                        Ok(())
                    }
                    _ => {
                        self.on_client(token);
                        Ok(())
                    }
                };
                if let Err(e) = outcome {
                    log::info!("broker channel closed ({e}); frontend exiting");
                    return ExitCode::SUCCESS;
                }
            }
        }
    }

    fn request(&mut self, body: FrontendRequest) -> Result<u32, ChannelError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.channel.send(&Envelope { id, body }, &[])?;
        Ok(id)
    }

    fn on_listener(&mut self, index: usize) {
        loop {
            let Some((kind, listener)) = self.listeners.get(index) else {
                return;
            };
            let kind = *kind;
            let mut stream = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept on the {} socket: {e}", kind.name());
                    return;
                }
            };
            if self.clients.len() >= self.config.max_clients as usize {
                log::warn!(
                    "refusing a client on the {} socket: max_clients ({}) reached",
                    kind.name(),
                    self.config.max_clients
                );
                continue;
            }
            let peer = stream.identity(kind);
            let token = Token(self.next_token);
            self.next_token += 1;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                log::warn!("cannot watch a new client: {e}");
                continue;
            }
            let conn = self.next_conn;
            self.next_conn += 1;
            log::debug!(
                "accepted client {conn} on the {} socket: {peer:?}",
                kind.name()
            );
            let id = match self.request(FrontendRequest::ClientOpened {
                conn,
                peer: peer.clone(),
            }) {
                Ok(id) => id,
                Err(e) => {
                    log::error!("cannot report a client to the broker: {e}");
                    continue;
                }
            };
            self.admissions.insert(id, conn);
            self.by_conn.insert(conn, token);
            let client = Client {
                conn,
                stream,
                peer,
                admission: Admission::Pending,
                hung_up: false,
                inbuf: Vec::new(),
            };
            self.clients.insert(token, client);
        }
    }

    fn on_client(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let alive = client.read_available();
        // The libvirt RPC layer consumes these bytes; until it is wired in,
        // input is bounded by MAX_BUFFERED and then discarded.
        client.inbuf.clear();
        if !alive {
            self.hang_up(token);
        }
    }

    /// Drops a client; the broker hears of it once it has answered the admission.
    fn hang_up(&mut self, token: Token) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut client.stream);
        if client.admission == Admission::Pending {
            client.hung_up = true;
            return;
        }
        let conn = client.conn;
        log::debug!(
            "client {conn} on the {} socket disconnected",
            client.peer.socket.name()
        );
        self.forget(token);
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
        loop {
            let (env, fds) = match self
                .channel
                .recv::<Envelope<BrokerReply>>(|e| e.body.fd_count())
            {
                Ok(m) => m,
                Err(ChannelError::WouldBlock) => return Ok(()),
                Err(e) => return Err(e),
            };
            match env.body {
                BrokerReply::Reconfigure(config) => self.reconfigure(config, fds),
                BrokerReply::Ok | BrokerReply::Refused(_) => self.answered(env.id, env.body),
                BrokerReply::Welcome { .. } => {
                    log::warn!("ignoring a second Welcome from the broker")
                }
            }
        }
    }

    fn answered(&mut self, id: u32, reply: BrokerReply) {
        let Some(conn) = self.admissions.remove(&id) else {
            return;
        };
        let Some(&token) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        match reply {
            BrokerReply::Ok => {
                client.admission = Admission::Admitted;
                if client.hung_up {
                    self.hang_up(token);
                }
            }
            BrokerReply::Refused(e) => {
                log::warn!("broker refused client {conn}: {e}");
                let _ = self.poll.registry().deregister(&mut client.stream);
                self.forget(token);
            }
            _ => {}
        }
    }

    fn reconfigure(&mut self, config: FrontendConfig, fds: Vec<OwnedFd>) {
        match LogState::from_handoff(config.log.clone(), config.log_sinks.clone(), fds) {
            Ok(state) => logging::install(state),
            Err(e) => log::error!("reconfigure: {e}"),
        }
        log::debug!("frontend reconfigured: max_clients {}", config.max_clients);
        self.config = config;
    }
}
