//! A local-API client: connects to the daemon's socket, sends operations, waits for the
//! matching reply, and keeps daemon pushes (`event` lines) that arrive meanwhile.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use agentmesh_proto::ErrorObject;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon's socket could not be reached.
    #[error("cannot reach agentmeshd at {path}: {source} (is the daemon running? start it with `agentmeshd`, or point AGENTMESH_SOCKET / --socket at its socket)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("connection to agentmeshd failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection.
    #[error("agentmeshd closed the connection")]
    Closed,
    /// The daemon sent something that is not JSON.
    #[error("agentmeshd sent an unreadable line: {0}")]
    BadLine(#[from] serde_json::Error),
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(ErrorObject),
}

/// One connection to the daemon.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
            events: VecDeque::new(),
        })
    }

    /// Sends `op` with `args` (a JSON object) and returns its id without waiting.
    pub async fn send(&mut self, op: &str, args: Value) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = match args {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        msg.insert("op".into(), json!(op));
        msg.insert("id".into(), json!(id));
        let line = agentmesh_proto::json_text::to_line(&Value::Object(msg));
        self.writer.write_all(&line).await?;
        Ok(id)
    }

    /// Sends an operation and waits for its reply, returning the `ok` value.
    pub async fn call(&mut self, op: &str, args: Value) -> Result<Value, ClientError> {
        let id = self.send(op, args).await?;
        self.wait_reply(id).await
    }

    /// Waits for the reply to request `id`, queueing pushes that come first.
    pub async fn wait_reply(&mut self, id: u64) -> Result<Value, ClientError> {
        loop {
            let msg = self.read_message().await?;
            if msg.get("event").is_some() {
                self.events.push_back(msg);
                continue;
            }
            if msg["id"] != json!(id) {
                continue; // a reply to something we no longer wait for
            }
            return reply_value(msg);
        }
    }

    /// The next push or reply, whichever comes first (queued pushes first).
    pub async fn next_message(&mut self) -> Result<Value, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        self.read_message().await
    }

    async fn read_message(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }
}

/// Turns a reply line into its `ok` value or its error.
pub fn reply_value(mut msg: Value) -> Result<Value, ClientError> {
    if let Some(err) = msg.get_mut("error").map(Value::take) {
        let e: ErrorObject = serde_json::from_value(err)?;
        return Err(ClientError::Api(e));
    }
    Ok(msg.get_mut("ok").map(Value::take).unwrap_or(Value::Null))
}
