//! UDP driver: one receive task feeding the core, one send task draining it round-robin,
//! on a bound tokio socket or any [`DatagramSocket`] the caller provides.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Direction, ServerError, Shared};
use agentmesh_dgram::DatagramSocket;

/// Datagrams taken from the core per lock.
const BATCH: usize = 64;

/// Binds `addr`.
pub(super) async fn bind(addr: SocketAddr) -> Result<Arc<dyn DatagramSocket>, ServerError> {
    let sock = UdpSocket::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(Arc::new(sock))
}

/// Spawns the UDP tasks on `sock` (bound for `addr`); returns its address.
pub(super) fn spawn(
    tasks: &mut JoinSet<()>,
    shared: Arc<Shared>,
    sock: Arc<dyn DatagramSocket>,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, ServerError> {
    let local = sock
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    tasks.spawn(receive(shared.clone(), sock.clone(), stop.clone()));
    tasks.spawn(send(shared, sock, stop));
    Ok(local)
}

async fn receive(
    shared: Arc<Shared>,
    sock: Arc<dyn DatagramSocket>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors surface here on some systems; the socket is still good.
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        shared.tap(Direction::In, &buf[..n]);
        // Take whatever else is already waiting under the same lock (no waiting here).
        shared.with_core(|c| {
            c.handle_datagram(super::now(), from, &buf[..n]);
            for _ in 0..BATCH {
                let Ok((n, from)) = sock.try_recv_from(&mut buf) else {
                    break;
                };
                shared.tap(Direction::In, &buf[..n]);
                c.handle_datagram(super::now(), from, &buf[..n]);
            }
        });
    }
}

async fn send(shared: Arc<Shared>, sock: Arc<dyn DatagramSocket>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.udp_notify.notified() => {}
            _ = stop.changed() => return,
        }
        loop {
            let batch: Vec<_> = {
                let mut core = shared.core();
                std::iter::from_fn(|| core.poll_udp()).take(BATCH).collect()
            };
            if batch.is_empty() {
                break;
            }
            for (to, datagram) in batch {
                shared.tap(Direction::Out, &datagram);
                if let Err(e) = sock.send_to(&datagram, to).await {
                    tracing::debug!(error = %e, %to, "udp send failed");
                }
            }
        }
    }
}
