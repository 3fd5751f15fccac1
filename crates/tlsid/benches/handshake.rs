//! Loopback handshake costs of node-key TLS: certificate generation, config building, and
//! full mutual-auth handshakes over QUIC (quinn) and TCP + rustls. Prints a table and writes
//! `target/bench/tlsid-handshake.json` (or under `$CARGO_TARGET_DIR`).
//!
//! Run: `cargo bench -p agentmesh-tlsid --bench handshake` (add `--profile dev` for a quick
//! indicative run without a release build). `TLSID_BENCH_ITERS` sets the iteration count.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentmesh_proto::SecretKey;
use agentmesh_tlsid::{self as tlsid, ClientAuth, NodeCert, ServerPin, ALPN_PEER};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Summary of one measured operation.
struct Row {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Row {
    fn quantile(&self, q: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        let idx = ((s.len() as f64 - 1.0) * q).round() as usize;
        s[idx]
    }
}

fn time_sync(name: &'static str, iters: usize, mut f: impl FnMut()) -> Row {
    let samples = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    Row { name, samples }
}

async fn quic_handshakes(iters: usize) -> Row {
    let (sk, ck) = (SecretKey::generate_os(), SecretKey::generate_os());
    let scfg =
        tlsid::quinn_server_config(&sk, ClientAuth::Pinned(vec![ck.node_id()]), &[ALPN_PEER]);
    let server = quinn::Endpoint::server(scfg.unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let ccfg = tlsid::quinn_client_config(Some(&ck), ServerPin::Node(sk.node_id()), &[ALPN_PEER]);
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(ccfg.unwrap());
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let accept = async { server.accept().await.unwrap().await.unwrap() };
        let connect = async {
            client
                .connect(addr, tlsid::SERVER_NAME)
                .unwrap()
                .await
                .unwrap()
        };
        let (s, c) = tokio::join!(accept, connect);
        samples.push(t.elapsed());
        assert_eq!(tlsid::peer_node_id_quic(&s).unwrap(), ck.node_id());
        c.close(0u32.into(), b"");
    }
    Row {
        name: "quic mutual handshake",
        samples,
    }
}

async fn tcp_handshakes(iters: usize) -> Row {
    let (sk, ck) = (SecretKey::generate_os(), SecretKey::generate_os());
    let scfg = tlsid::server_config(&sk, ClientAuth::Pinned(vec![ck.node_id()])).unwrap();
    let ccfg = tlsid::client_config(Some(&ck), ServerPin::Node(sk.node_id())).unwrap();
    let (acceptor, connector) = (TlsAcceptor::from(scfg), TlsConnector::from(ccfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let accept = async {
            acceptor
                .accept(listener.accept().await.unwrap().0)
                .await
                .unwrap()
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector.connect(tlsid::server_name(), tcp).await.unwrap()
        };
        let (s, _c) = tokio::join!(accept, connect);
        samples.push(t.elapsed());
        assert_eq!(
            tlsid::peer_node_id_tls(s.get_ref().1).unwrap(),
            ck.node_id()
        );
    }
    Row {
        name: "tcp+tls mutual handshake",
        samples,
    }
}

fn report(rows: &[Row], iters: usize) {
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "operation", "p50 µs", "p90 µs", "p99 µs"
    );
    let mut json = Vec::new();
    for r in rows {
        let (p50, p90, p99) = (r.quantile(0.5), r.quantile(0.9), r.quantile(0.99));
        println!(
            "{:<28} {:>10} {:>10} {:>10}",
            r.name,
            p50.as_micros(),
            p90.as_micros(),
            p99.as_micros()
        );
        json.push(serde_json::json!({
            "operation": r.name, "iterations": iters,
            "p50_us": p50.as_micros() as u64, "p90_us": p90.as_micros() as u64,
            "p99_us": p99.as_micros() as u64,
        }));
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tlsid-handshake.json");
    let doc = serde_json::json!({ "profile": profile(), "results": json });
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "dev (deps opt-level 1)"
    } else {
        "release"
    }
}

fn main() {
    tlsid::install_default_provider();
    let iters: usize = std::env::var("TLSID_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let key = SecretKey::generate_os();
    let mut rows = vec![
        time_sync("node cert generate", iters, || {
            NodeCert::generate(&key).unwrap();
        }),
        time_sync("server_config build", iters, || {
            tlsid::server_config(&key, ClientAuth::RequireNodeCert).unwrap();
        }),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rows.push(rt.block_on(quic_handshakes(iters)));
    rows.push(rt.block_on(tcp_handshakes(iters)));
    println!("profile: {}, {iters} iterations each, loopback", profile());
    report(&rows, iters);
}
