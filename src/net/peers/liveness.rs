//! Noticing a peer daemon that died without closing its session (a crash, a host that
//! lost power): QUIC alone would notice only at its idle timeout (60 s), keeping tasks
//! waiting that long and keeping unanswered requests from store-and-forward.
//!
//! A task stream that has heard nothing from its responder for [`SILENCE_CHECK`] (then
//! every [`SILENCE_RECHECK`]) asks for a liveness check of that peer: one ping (an empty
//! bidirectional stream, answered by the peer's session layer, not by its agents, so a
//! slow agent never looks dead). Checks of one peer are coalesced. A ping unanswered
//! within [`PING_TIMEOUT`] closes the connection with [`PEER_SILENT`], and the node is
//! reported unreachable: its unanswered requests are stored at the relay, its other tasks
//! fail, and the next message dials afresh.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::NodeId;
use quinn::{Connection, VarInt};
use tracing::{debug, warn};

use super::{lock, unreachable, Sessions};

/// How long a task stream may stay silent before its peer is checked. Longer than a path
/// takes to recover from a NAT reboot (about 3.4 s): a ping sent into a dead path re-arms
/// QUIC's probe timer and delayed that recovery by 0.6 s when this was 2 s.
pub const SILENCE_CHECK: Duration = Duration::from_secs(4);

/// How often a task stream that stays silent has its peer checked again.
pub const SILENCE_RECHECK: Duration = Duration::from_secs(5);

/// How long a liveness ping may go unanswered before the peer is taken for dead. Long
/// enough for QUIC to retransmit several times and for a path to recover (a NAT reboot
/// falls back to the relay within about 3 s).
pub const PING_TIMEOUT: Duration = Duration::from_secs(6);

/// QUIC application close code: the peer did not answer a liveness ping.
pub const PEER_SILENT: u32 = 0x0a13;

impl Sessions {
    /// Checks that `node` still answers, unless a check of it is already under way.
    pub(super) fn check_alive(self: &Arc<Self>, node: NodeId) {
        let Some(conn) = self.connection(&node) else {
            return; // ended already; its end was reported
        };
        if !lock(&self.checking).insert(node) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let answered = tokio::time::timeout(PING_TIMEOUT, ping(&conn)).await;
            lock(&me.checking).remove(&node);
            match answered {
                Ok(Ok(())) => debug!(peer = %node.short(), "peer answered a liveness ping"),
                Ok(Err(e)) => debug!(peer = %node.short(), error = %e, "liveness ping failed"),
                Err(_) => me.silent(node, &conn),
            }
        });
    }

    /// `conn` to `node` went silent: closes it and reports the node unreachable.
    fn silent(&self, node: NodeId, conn: &Connection) {
        let was_current = self.forget_conn(node, conn);
        conn.close(
            VarInt::from_u32(PEER_SILENT),
            b"no answer to a liveness ping",
        );
        if was_current {
            warn!(peer = %node.short(), "peer did not answer a liveness ping; session closed");
            let error = unreachable(
                node,
                format!(
                    "it did not answer a liveness ping within {} s",
                    PING_TIMEOUT.as_secs()
                ),
            );
            self.router
                .apply(|r, now| r.peer_unreachable(now, node, error));
        }
    }
}

/// One ping on `conn`: an empty stream, answered by the peer finishing its side.
pub(super) async fn ping(conn: &Connection) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(0).await.map_err(|e| e.to_string())?;
    Ok(())
}
