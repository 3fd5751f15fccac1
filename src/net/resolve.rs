//! Turning configured `host:port` strings into socket addresses: literal addresses as
//! they are, names through DNS (`hickory-resolver`, with the system's resolver
//! configuration), first answer of the socket's address family preferred.

use std::net::SocketAddr;

use hickory_resolver::TokioResolver;

/// Why an address could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// Not `host:port`.
    #[error("'{text}' is not host:port")]
    Syntax {
        /// The configured text.
        text: String,
    },
    /// DNS failed or returned nothing.
    #[error("cannot resolve '{host}': {reason}")]
    Lookup {
        /// The name.
        host: String,
        /// Why.
        reason: String,
    },
}

/// Resolves `text` (`1.2.3.4:5`, `[::1]:5`, `name:5`), preferring IPv4 when `v4` is set.
pub async fn resolve(text: &str, v4: bool) -> Result<SocketAddr, ResolveError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let syntax = || ResolveError::Syntax { text: text.into() };
    let (host, port) = text.rsplit_once(':').ok_or_else(syntax)?;
    let port: u16 = port.parse().map_err(|_| syntax())?;
    let lookup_err = |reason: String| ResolveError::Lookup {
        host: host.into(),
        reason,
    };
    let resolver = TokioResolver::builder_tokio()
        .map_err(|e| lookup_err(e.to_string()))?
        .build()
        .map_err(|e| lookup_err(e.to_string()))?;
    let ips: Vec<_> = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| lookup_err(e.to_string()))?
        .iter()
        .collect();
    let ip = ips
        .iter()
        .find(|ip| ip.is_ipv4() == v4)
        .or(ips.first())
        .ok_or_else(|| lookup_err("no addresses".into()))?;
    Ok(SocketAddr::new(*ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_bad_syntax() {
        assert_eq!(
            resolve("203.0.113.7:7400", true).await.unwrap(),
            "203.0.113.7:7400".parse().unwrap()
        );
        assert!(matches!(
            resolve("no-port", true).await,
            Err(ResolveError::Syntax { .. })
        ));
        assert!(matches!(
            resolve("host:notaport", true).await,
            Err(ResolveError::Syntax { .. })
        ));
        // `localhost` comes from /etc/hosts through the resolver, without a DNS server.
        assert!(resolve("localhost:9", true)
            .await
            .unwrap()
            .ip()
            .is_loopback());
    }
}
