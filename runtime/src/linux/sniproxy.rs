//! The TLS SNI / HTTP Host check behind domain rules (docs/decisions/0008-network-domains.md).
//!
//! A sandbox with domain rules has its TCP 80/443 connections to domain-admitted addresses
//! redirected here by nft (`domain_redirect`, see [`super::dns::nft_redirect`]); connections
//! to CIDR-allowed addresses are never admitted, so they go straight out. For each connection
//! this reads the first bytes the client sends, takes the name it asks for (the TLS
//! ClientHello's server_name, or the HTTP/1 Host header), checks it against the sandbox's
//! domain list, then connects to the original destination (SO_ORIGINAL_DST, or
//! IP6T_SO_ORIGINAL_DST for IPv6: it listens on the bridge's addresses of both families) and
//! splices the two sockets. So an address admitted for `api.allowed.test` cannot be used to
//! reach another name served from the same address. A refused name ends the connection: TLS
//! gets nothing (no alert we could sign), HTTP gets a 403 with a one-line reason.
//!
//! The ClientHello is parsed with `tls-parser` and the request head with `httparse`; only
//! the original-destination getsockopt is written here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::domains::DomainRegistry;
use crate::error::{Error, Result};

/// Port of the proxy on the bridge address.
pub const PROXY_PORT: u16 = 15080;
/// Most bytes read while looking for the name (a ClientHello with post-quantum key shares is
/// ~2 KB; one TLS record is at most 16 KiB + header).
const MAX_PEEK: usize = 16 * 1024 + 5;
/// How long the client may take to send its ClientHello or request head.
const PEEK_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the proxy on `listen`:[`PROXY_PORT`] and serves in the background (once per family).
pub async fn start(listen: IpAddr, domains: Arc<DomainRegistry>) -> Result<()> {
    let addr = SocketAddr::from((listen, PROXY_PORT));
    let l = TcpListener::bind(addr).await.map_err(Error::io(format!(
        "binding the domain check proxy to {addr}"
    )))?;
    tokio::spawn(async move {
        let caps = crate::accept::PerSource::new(super::net::HOST_CONNS_PER_SANDBOX);
        loop {
            let (conn, from) = crate::accept::next(&l, "domain check proxy").await;
            // Past the cap the connection is closed at once (its descriptor freed).
            let Some(slot) = caps.take(from.ip()) else {
                continue;
            };
            let domains = domains.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(&domains, conn, from).await {
                    tracing::debug!(%from, "domain check proxy: {e}");
                }
                drop(slot);
            });
        }
    });
    tracing::info!(%addr, "domain check proxy listening");
    Ok(())
}

/// What the client asked for, as far as the bytes read so far tell.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// More bytes are needed.
    Incomplete,
    /// A TLS ClientHello naming this server (None: no server_name extension).
    Tls(Option<String>),
    /// An HTTP/1 request for this Host (None: no Host header).
    Http(Option<String>),
    /// Neither TLS nor HTTP/1.
    Unknown,
}

/// Reads the name out of the first bytes of a connection.
pub fn peek_name(buf: &[u8]) -> Peek {
    use tls_parser::{
        SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
        parse_tls_plaintext,
    };
    if buf.is_empty() {
        return Peek::Incomplete;
    }
    if buf[0] == 0x16 {
        // A handshake record: wait for the whole record, then parse it.
        if buf.len() < 5 {
            return Peek::Incomplete;
        }
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if buf.len() < 5 + len {
            return Peek::Incomplete;
        }
        let Ok((_, record)) = parse_tls_plaintext(&buf[..5 + len]) else {
            return Peek::Unknown;
        };
        for msg in &record.msg {
            if let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = msg {
                let sni = ch
                    .ext
                    .and_then(|ext| parse_tls_client_hello_extensions(ext).ok())
                    .and_then(|(_, exts)| {
                        exts.into_iter().find_map(|e| match e {
                            TlsExtension::SNI(names) => names
                                .into_iter()
                                .find(|(t, _)| *t == SNIType::HostName)
                                .and_then(|(_, n)| std::str::from_utf8(n).ok().map(str::to_owned)),
                            _ => None,
                        })
                    });
                return Peek::Tls(sni);
            }
        }
        return Peek::Unknown;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Peek::Incomplete,
        Ok(httparse::Status::Complete(_)) => Peek::Http(
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|h| strip_port(h.trim()).to_owned()),
        ),
        Err(_) => Peek::Unknown,
    }
}

/// "example.com:8080" → "example.com"; "[2001:db8::1]:80" → "2001:db8::1".
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The destination the sandbox connected to before nft redirected it here.
fn original_dst(conn: &TcpStream) -> std::io::Result<SocketAddr> {
    if conn.local_addr()?.is_ipv6() {
        // ip6tables' option number at the IPv6 level, which the kernel's nat answers for nft's
        // dnat too.
        let a: libc::sockaddr_in6 = sockaddr_opt(conn, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST)?;
        return Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(a.sin6_addr.s6_addr),
            u16::from_be(a.sin6_port),
            0,
            0,
        )));
    }
    let a: libc::sockaddr_in = sockaddr_opt(conn, libc::SOL_IP, libc::SO_ORIGINAL_DST)?;
    Ok(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
        u16::from_be(a.sin_port),
    )))
}

/// A socket option whose value is a socket address (`T`: `sockaddr_in` or `sockaddr_in6`).
fn sockaddr_opt<T: Copy>(conn: &TcpStream, level: i32, name: i32) -> std::io::Result<T> {
    // SAFETY: T is a C socket address struct, for which all zero bytes are a valid value.
    let mut addr: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: a valid socket fd and an out-buffer of the size passed; the original-destination
    // options fill it for connections that went through nat.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            level,
            name,
            (&mut addr as *mut T).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(addr)
}

async fn serve(
    domains: &DomainRegistry,
    mut conn: TcpStream,
    from: SocketAddr,
) -> std::io::Result<()> {
    // Either of the sandbox's addresses; the registry knows it by its IPv4 one.
    let Some(sandbox) = domains.sandbox_of(from.ip()) else {
        return Ok(());
    };
    let dst = original_dst(&conn)?;
    // Only a redirected connection to an address admitted for this sandbox is relayed: a
    // direct connection to the proxy has the proxy itself as its "original" destination.
    let Some(policy) = domains.policy_of(sandbox) else {
        return Ok(());
    };
    if policy.air_gapped || policy.domains.is_empty() || !domains.is_admitted(sandbox, dst.ip()) {
        tracing::debug!(%sandbox, %dst, "domain check proxy: destination not admitted");
        return Ok(());
    }
    let mut buf = Vec::with_capacity(4096);
    let peek = tokio::time::timeout(PEEK_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(Peek::Unknown);
            }
            buf.extend_from_slice(&chunk[..n]);
            match peek_name(&buf) {
                Peek::Incomplete if buf.len() < MAX_PEEK => continue,
                Peek::Incomplete => return Ok(Peek::Unknown),
                other => return Ok(other),
            }
        }
    })
    .await
    .unwrap_or(Ok(Peek::Unknown))?;
    let (name, http) = match peek {
        Peek::Tls(n) => (n, false),
        Peek::Http(n) => (n, true),
        Peek::Incomplete | Peek::Unknown => (None, false),
    };
    let allowed = name.as_deref().is_some_and(|n| policy.allows_name(n));
    if !allowed {
        tracing::info!(%sandbox, %dst, name = ?name, "domain check refused a connection");
        if http {
            let body = format!(
                "coppice network policy: host '{}' is not in this sandbox's domains\n",
                name.as_deref().unwrap_or("")
            );
            let resp = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        }
        let _ = conn.shutdown().await;
        return Ok(());
    }
    let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = upstream.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    upstream.write_all(&buf).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record assembled from RFC 8446 §4.1.2 fields (real clients'
    /// hellos are checked end to end in runtime/tests/network_policy.py).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(n) = sni {
            let n = n.as_bytes();
            let list_len = 3 + n.len();
            ext.extend_from_slice(&[0, 0]); // server_name
            ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list_len as u16).to_be_bytes());
            ext.push(0); // host_name
            ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ext.extend_from_slice(n);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn names_from_first_bytes() {
        let ch = client_hello(Some("api.allowed.test"));
        assert_eq!(peek_name(&ch), Peek::Tls(Some("api.allowed.test".into())));
        assert_eq!(peek_name(&ch[..ch.len() - 3]), Peek::Incomplete);
        assert_eq!(peek_name(&ch[..3]), Peek::Incomplete);
        assert_eq!(peek_name(&client_hello(None)), Peek::Tls(None));
        assert_eq!(
            peek_name(b"GET / HTTP/1.1\r\nHost: x.wild.test:8080\r\nAccept: */*\r\n\r\n"),
            Peek::Http(Some("x.wild.test".into()))
        );
        assert_eq!(peek_name(b"GET / HTTP/1.1\r\nHost: a"), Peek::Incomplete);
        assert_eq!(peek_name(b"GET / HTTP/1.0\r\n\r\n"), Peek::Http(None));
        assert_eq!(peek_name(b"\x00\x01garbage\r\n\r\n"), Peek::Unknown);
        assert_eq!(strip_port("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
