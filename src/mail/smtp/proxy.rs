//! The PROXY protocol v2 header (haproxy's binary format) that a balancer sends before
//! the client's bytes, giving the client's real address. Accepted only from the
//! addresses in `[mail] proxy_protocol_from`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest address block accepted (TLVs included); the protocol allows 65535.
const MAX_BLOCK: usize = 4096;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not a v2 header (or not version 2).
    #[error("no PROXY protocol v2 header")]
    NotProxy,
    /// The header is cut short or names an unknown command, family or length.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Read a v2 header from `stream`: the client's address, or `None` for a `LOCAL`
/// command or an unspecified family (the balancer's own health check: the
/// connection's own peer address stands).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await?;
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if len > MAX_BLOCK {
        return Err(ProxyError::Malformed("address block too long"));
    }
    let mut block = vec![0u8; len];
    stream.read_exact(&mut block).await?;
    parse(&head, &block)
}

/// Parse a header: its first 16 bytes and its address block.
pub fn parse(head: &[u8; 16], block: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if &head[..12] != SIGNATURE || head[12] >> 4 != 2 {
        return Err(ProxyError::NotProxy);
    }
    match head[12] & 0x0f {
        0 => return Ok(None),
        1 => {}
        _ => return Err(ProxyError::Malformed("unknown command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match head[13] >> 4 {
        0 => Ok(None),
        1 => {
            if block.len() < 12 {
                return Err(ProxyError::Malformed("short IPv4 block"));
            }
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(&block[8..10]))))
        }
        2 => {
            if block.len() < 36 {
                return Err(ProxyError::Malformed("short IPv6 block"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(IpAddr::V6(ip), port(&block[32..34]))))
        }
        // AF_UNIX and the rest carry no IP address.
        _ => Ok(None),
    }
}

/// A v2 header for `client` (connecting to `server`): what a balancer sends; used by
/// tests and benchmarks.
pub fn header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
        (c, s) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(c).octets());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bytes: &[u8]) -> ([u8; 16], &[u8]) {
        let mut head = [0u8; 16];
        head.copy_from_slice(&bytes[..16]);
        (head, &bytes[16..])
    }

    #[test]
    fn round_trips_ipv4_and_ipv6() {
        for (c, s) in [
            ("192.0.2.7:4711", "127.0.0.1:25"),
            ("[2001:db8::1]:5000", "[::1]:25"),
        ] {
            let (c, s): (SocketAddr, SocketAddr) = (c.parse().unwrap(), s.parse().unwrap());
            let bytes = header(c, s);
            let (head, block) = split(&bytes);
            assert_eq!(parse(&head, block).unwrap(), Some(c));
        }
    }

    #[test]
    fn local_command_keeps_the_peer_and_garbage_is_refused() {
        let mut bytes = header(
            "192.0.2.7:1".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        bytes[12] = 0x20;
        let (head, block) = split(&bytes);
        assert_eq!(parse(&head, block).unwrap(), None);
        let (head, _) = split(b"EHLO example.org\r\nQUIT\r\n");
        assert!(matches!(parse(&head, &[]), Err(ProxyError::NotProxy)));
        let bytes = header(
            "192.0.2.7:1".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        let (head, block) = split(&bytes);
        assert!(matches!(
            parse(&head, &block[..4]),
            Err(ProxyError::Malformed(_))
        ));
    }
}
