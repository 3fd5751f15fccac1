//! The Unix-socket server: accepts agent connections, reads their lines, feeds the
//! router, and delivers the router's outputs to each connection's bounded outbox.
//!
//! One mutex guards the router and the connection table together, so messages reach
//! every connection in the order the router produced them.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use super::lines::{read_line, Line};
use super::ops::parse_line;
use super::outbox::{outbox, Outbox, OutboxError, OutboxReceiver};
use crate::router::{ConnId, Now, Output, Router};
use agentmesh_proto::{ErrorCode, ErrorObject};

/// Settings of the local API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Socket path.
    pub socket_path: PathBuf,
    /// Longest accepted line.
    pub max_line_bytes: usize,
    /// Messages queued for one client before it is dropped as a slow consumer.
    pub max_queued_messages: usize,
    /// Bytes queued for one client before it is dropped as a slow consumer.
    pub max_queued_bytes: usize,
    /// Socket file mode.
    pub socket_mode: u32,
}

impl ApiConfig {
    /// Defaults for a socket at `socket_path`.
    pub fn new(socket_path: PathBuf) -> Self {
        ApiConfig {
            socket_path,
            max_line_bytes: 1024 * 1024,
            max_queued_messages: 4096,
            max_queued_bytes: 16 * 1024 * 1024,
            socket_mode: 0o660,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Another daemon answers on the socket.
    #[error("another agentmeshd is already listening on {path}")]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket could not be created.
    #[error("cannot create the API socket {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Read buffer of one connection.
const READ_BUFFER: usize = 64 * 1024;

struct ConnEntry {
    outbox: Outbox,
    kill: Arc<Notify>,
}

struct Inner {
    router: Router,
    conns: HashMap<ConnId, ConnEntry>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Where outputs for the network go (none on a daemon without a mesh).
    net: Mutex<Option<mpsc::UnboundedSender<Output>>>,
    timer: Notify,
    next_conn: AtomicU64,
    config: ApiConfig,
}

/// A bound local-API server.
pub struct ApiServer {
    shared: Arc<Shared>,
    listener: UnixListener,
}

impl ApiServer {
    /// Creates the socket (removing a stale one) and prepares to serve `router`.
    pub fn bind(config: ApiConfig, router: Router) -> Result<Self, ServeError> {
        let path = config.socket_path.clone();
        let bind_err = |source| ServeError::Bind {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(ServeError::AlreadyRunning { path });
            }
            std::fs::remove_file(&path).map_err(bind_err)?;
        }
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(bind_err)?;
        Ok(ApiServer {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    router,
                    conns: HashMap::new(),
                }),
                net: Mutex::new(None),
                timer: Notify::new(),
                next_conn: AtomicU64::new(1),
                config,
            }),
            listener,
        })
    }

    /// A handle the network driver uses to feed the router, and the stream of the
    /// router's outputs meant for the network (peers, rendezvous). Call once, before
    /// [`ApiServer::serve`]; without it such outputs are dropped.
    pub fn attach_network(&self) -> (RouterHandle, mpsc::UnboundedReceiver<Output>) {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.shared.net.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        (
            RouterHandle {
                shared: self.shared.clone(),
            },
            rx,
        )
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.shared.config.socket_path
    }

    /// Serves until `shutdown` completes, then removes the socket file.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let timer = tokio::spawn(timer_loop(self.shared.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let conn = ConnId(self.shared.next_conn.fetch_add(1, Ordering::Relaxed));
                        tokio::spawn(run_connection(self.shared.clone(), conn, stream));
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        timer.abort();
        let _ = std::fs::remove_file(&self.shared.config.socket_path);
        info!("local API closed");
    }
}

/// Lets the network driver run router steps; their local outputs reach the local
/// connections, the rest come back on the network's output stream.
#[derive(Clone)]
pub struct RouterHandle {
    shared: Arc<Shared>,
}

impl RouterHandle {
    /// Runs one router step with the current time and delivers what it produced.
    pub fn apply(&self, step: impl FnOnce(&mut Router, Now) -> Vec<Output>) {
        self.shared.apply(|r| step(r, Now::read()));
    }

    /// Reads the router without changing it.
    pub fn read<T>(&self, f: impl FnOnce(&Router) -> T) -> T {
        f(&self.shared.lock().router)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one router step and delivers what it produced.
    fn apply(&self, step: impl FnOnce(&mut Router) -> Vec<Output>) {
        let mut inner = self.lock();
        let before = inner.router.poll_timeout();
        let outputs = step(&mut inner.router);
        let after = inner.router.poll_timeout();
        let mut for_net = Vec::new();
        for out in outputs {
            match out {
                Output::Send { conn, msg } => deliver(&mut inner.conns, conn, &msg),
                other => for_net.push(other),
            }
        }
        drop(inner);
        if !for_net.is_empty() {
            let net = self.net.lock().unwrap_or_else(|e| e.into_inner());
            match net.as_ref() {
                Some(tx) => for_net.into_iter().for_each(|o| {
                    let _ = tx.send(o);
                }),
                None => debug!(
                    count = for_net.len(),
                    "no mesh: outputs for the network dropped"
                ),
            }
        }
        if before != after {
            self.timer.notify_one();
        }
    }
}

fn deliver(conns: &mut HashMap<ConnId, ConnEntry>, conn: ConnId, msg: &serde_json::Value) {
    let Some(entry) = conns.get(&conn) else {
        return; // connection already gone
    };
    match entry.outbox.push(agentmesh_proto::json_text::to_line(msg)) {
        Ok(()) => {}
        Err(OutboxError::Full) => {
            warn!(
                conn = conn.0,
                "dropping a client that stopped reading (slow consumer)"
            );
            if let Some(entry) = conns.remove(&conn) {
                entry.kill.notify_one();
            }
        }
        Err(OutboxError::Closed) => {}
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().router.poll_timeout();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        shared.apply(|r| r.handle_timeout(Now::read()));
                    }
                    _ = shared.timer.notified() => {}
                }
            }
            None => shared.timer.notified().await,
        }
    }
}

async fn run_connection(shared: Arc<Shared>, conn: ConnId, stream: UnixStream) {
    debug!(conn = conn.0, "client connected");
    let (read, write) = stream.into_split();
    let (tx, rx) = outbox(
        shared.config.max_queued_messages,
        shared.config.max_queued_bytes,
    );
    let kill = Arc::new(Notify::new());
    shared.lock().conns.insert(
        conn,
        ConnEntry {
            outbox: tx,
            kill: kill.clone(),
        },
    );
    let writer = tokio::spawn(write_loop(write, rx));
    let killed = read_loop(&shared, conn, read, &kill).await;
    shared.lock().conns.remove(&conn);
    shared.apply(|r| r.connection_closed(Now::read(), conn));
    if killed {
        writer.abort();
    } else if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        debug!(conn = conn.0, "writer did not drain in time");
    }
    debug!(conn = conn.0, "client disconnected");
}

/// Reads lines until EOF or a kill; returns whether the client was killed.
async fn read_loop(
    shared: &Shared,
    conn: ConnId,
    read: tokio::net::unix::OwnedReadHalf,
    kill: &Notify,
) -> bool {
    let max = shared.config.max_line_bytes;
    // Large enough that a big request line (a 64 KiB input) takes few reads.
    let mut reader = BufReader::with_capacity(READ_BUFFER, read);
    let mut buf = Vec::new();
    loop {
        let line = tokio::select! {
            _ = kill.notified() => return true,
            line = read_line(&mut reader, max, &mut buf) => line,
        };
        match line {
            Ok(Line::Complete) if buf.iter().all(u8::is_ascii_whitespace) => {}
            Ok(Line::Complete) => match parse_line(&buf) {
                Ok((id, op)) => shared.apply(|r| r.handle_op(Now::read(), conn, id, op)),
                Err(bad) => shared.apply(|r| r.handle_bad_line(conn, bad.id, bad.error)),
            },
            Ok(Line::TooLong { len }) => {
                let err = ErrorObject::new(
                    ErrorCode::InvalidEnvelope,
                    format!("line of {len} bytes exceeds the limit of {max} bytes"),
                );
                shared.apply(|r| r.handle_bad_line(conn, serde_json::Value::Null, err));
            }
            Ok(Line::Eof) | Err(_) => return false,
        }
    }
}

async fn write_loop(write: OwnedWriteHalf, mut rx: OutboxReceiver) {
    let mut w = BufWriter::new(write);
    while let Some(line) = rx.recv().await {
        if w.write_all(&line).await.is_err() {
            return;
        }
        while let Some(more) = rx.try_recv() {
            if w.write_all(&more).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}
