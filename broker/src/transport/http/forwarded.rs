//! Requests relayed by a trusted proxy (`[http] trusted_proxies`): the client's address from
//! the one header the operator named (`forwarded_header`: `X-Forwarded-For`, or RFC 7239
//! `Forwarded`), for the audit log and for the per-source limit.
//!
//! Only a connection whose kernel-reported source address is in `trusted_proxies` is asked:
//! from any other peer the header is ignored, whatever it says. The list is read from the
//! right (the hop nearest mcpd): trusted proxies are skipped, and the first address that is
//! not one is the client; a hop the proxy could not identify (`unknown`, an obfuscated
//! `_name`) stops the walk at the last trusted hop. A malformed header or more than
//! [`MAX_HOPS`] hops is a 400: a trusted proxy never sends one, so it is refused loudly.
//!
//! The per-source limit (`max_connections_per_ip`) is, for relayed requests, a limit on the
//! requests of one client address in flight at once (a proxy multiplexes many clients over
//! its connections, which are only counted in `max_connections`). A place is held until the
//! response's body has been sent, so a long SSE stream holds its place, like a connection.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use mcpd_policy::{ForwardedHeader, ProxyNet};
use serde_json::Value;

use super::gate::{rpc_error, RejectReason};
use super::listener::Slot;
use super::{App, Peer};
use crate::mcp::jsonrpc::INVALID_REQUEST;

/// Most hops a forwarded header may list.
pub const MAX_HOPS: usize = 32;

/// What a hop of a forwarded header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// An address (a port, if any, dropped).
    Addr(IpAddr),
    /// `unknown` or an obfuscated identifier: the proxy does not say.
    Unidentified,
}

/// Why a trusted proxy's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A value that is not visible ASCII.
    #[error("not visible ASCII")]
    NotAscii,
    /// More than [`MAX_HOPS`] hops.
    #[error("more than {MAX_HOPS} hops")]
    TooManyHops,
    /// A hop that is not an address, `unknown` or an obfuscated name.
    #[error("a hop is not an address")]
    BadHop,
    /// RFC 7239 syntax: an unterminated quoted string, a pair without `=`, an empty element.
    #[error("not RFC 7239 syntax")]
    BadSyntax,
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(trusted: &[ProxyNet], ip: IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// The client `peer` (a trusted proxy) relays for, from the `kind` headers of a request.
/// Without the header, the proxy itself (its own requests, e.g. health checks).
pub fn client_of(
    headers: &HeaderMap,
    kind: ForwardedHeader,
    trusted: &[ProxyNet],
    peer: IpAddr,
) -> Result<IpAddr, Malformed> {
    let mut hops = Vec::new();
    for v in headers.get_all(kind.name()) {
        let v = v.to_str().map_err(|_| Malformed::NotAscii)?;
        match kind {
            ForwardedHeader::XForwardedFor => {
                for node in v.split(',') {
                    push(&mut hops, node_hop(node.trim())?)?;
                }
            }
            ForwardedHeader::Forwarded => forwarded_hops(v, &mut hops)?,
        }
    }
    let mut client = peer.to_canonical();
    for hop in hops.iter().rev() {
        match *hop {
            Hop::Unidentified => break,
            Hop::Addr(ip) => {
                client = ip;
                if !is_trusted(trusted, ip) {
                    break;
                }
            }
        }
    }
    Ok(client)
}

fn push(hops: &mut Vec<Hop>, hop: Hop) -> Result<(), Malformed> {
    if hops.len() >= MAX_HOPS {
        return Err(Malformed::TooManyHops);
    }
    hops.push(hop);
    Ok(())
}

/// One node: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, `unknown`, `_hidden`.
fn node_hop(node: &str) -> Result<Hop, Malformed> {
    if node.eq_ignore_ascii_case("unknown")
        || (node.len() > 1
            && node.starts_with('_')
            && node[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return Ok(Hop::Unidentified);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Ok(Hop::Addr(ip.to_canonical()));
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Ok(Hop::Addr(sa.ip().to_canonical()));
    }
    if let Some(inner) = node.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<std::net::Ipv6Addr>() {
            return Ok(Hop::Addr(IpAddr::V6(ip).to_canonical()));
        }
    }
    Err(Malformed::BadHop)
}

/// The `for=` hops of one `Forwarded` field value: elements separated by `,`, pairs by `;`,
/// values a token or a quoted string. An element without `for=` is an unidentified hop.
fn forwarded_hops(v: &str, hops: &mut Vec<Hop>) -> Result<(), Malformed> {
    for element in split_outside_quotes(v, b',')? {
        let element = element.trim();
        if element.is_empty() {
            return Err(Malformed::BadSyntax);
        }
        let mut hop = Hop::Unidentified;
        for pair in split_outside_quotes(element, b';')? {
            let (name, value) = pair.trim().split_once('=').ok_or(Malformed::BadSyntax)?;
            if name.trim().eq_ignore_ascii_case("for") {
                hop = node_hop(&unquote(value.trim())?)?;
            }
        }
        push(hops, hop)?;
    }
    Ok(())
}

fn split_outside_quotes(s: &str, sep: u8) -> Result<Vec<&str>, Malformed> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, _, b'"') => quoted = !quoted,
            (false, _, b) if b == sep => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err(Malformed::BadSyntax);
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn unquote(v: &str) -> Result<String, Malformed> {
    let Some(inner) = v.strip_prefix('"') else {
        return if v.contains('"') || v.is_empty() {
            Err(Malformed::BadSyntax)
        } else {
            Ok(v.to_string())
        };
    };
    let inner = inner.strip_suffix('"').ok_or(Malformed::BadSyntax)?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or(Malformed::BadSyntax)?),
            '"' => return Err(Malformed::BadSyntax),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// For a request a trusted proxy relays: its [`Peer`] replaced by the client the forwarded
/// header names (`CLIENT via PROXY`), and the client's place among the requests in flight.
/// `Ok(None)` for every other peer (nothing read). `Err`: the refusal to answer, a 400 for a
/// malformed header, a 429 for a client over `max_connections_per_ip` requests in flight.
pub(super) fn relay(app: &App, req: &mut Request) -> Result<Option<Slot>, Response> {
    let Some(proxy) = req
        .extensions()
        .get::<Peer>()
        .filter(|p| p.forwarded.is_none())
        .and_then(|p| p.addr)
    else {
        return Ok(None);
    };
    let trusted = &app.cfg.trusted_proxies;
    if !is_trusted(trusted, proxy.ip()) {
        return Ok(None);
    }
    let kind = app.cfg.forwarded_header;
    let client = match client_of(req.headers(), kind, trusted, proxy.ip()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%proxy, "refused a request from a trusted proxy: its {} header: {e}", kind.name());
            let mut r = rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                INVALID_REQUEST,
                "Bad Request: the proxy's forwarded header is malformed",
            );
            r.extensions_mut().insert(RejectReason("forwarded_header"));
            return Err(r);
        }
    };
    req.extensions_mut()
        .insert(Peer::forwarded_by(proxy, client));
    match app.relayed.admit(client, true) {
        Some(slot) => Ok(Some(slot)),
        None => {
            crate::metrics::limit_hit("max_connections_per_ip");
            tracing::debug!(%client, %proxy, "relayed request refused: per-source cap reached");
            let mut r = rpc_error(
                StatusCode::TOO_MANY_REQUESTS,
                Value::Null,
                INVALID_REQUEST,
                "Too Many Requests: this source has too many requests in flight",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r.extensions_mut()
                .insert(RejectReason("max_connections_per_ip"));
            Err(r)
        }
    }
}

/// `response` with `slot` held until its body has been sent (or dropped).
pub(super) fn hold_until_sent(response: Response, slot: Slot) -> Response {
    response.map(|body| {
        Body::new(body.map_frame(move |f| {
            let _held = &slot;
            f
        }))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(l: &[&str]) -> Vec<ProxyNet> {
        l.iter().map(|s| ProxyNet::parse(s).unwrap()).collect()
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = nets(&["10.0.0.0/8", "127.0.0.1"]);
        let proxy = ip("127.0.0.1");
        // One proxy: the address it saw.
        let h = headers("x-forwarded-for", &["203.0.113.7"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("203.0.113.7"));
        // The client wrote its own X-Forwarded-For and the proxy appended: the client's
        // claim (left) is not believed, the address the proxy saw (right) is.
        let h = headers("x-forwarded-for", &["198.51.100.1, 203.0.113.7"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("203.0.113.7"));
        // Two proxies (an inner one at 10.1.1.1): skipped, it is trusted.
        let h = headers("x-forwarded-for", &["203.0.113.7", "10.1.1.1"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("203.0.113.7"));
        // Every hop trusted: the leftmost.
        let h = headers("x-forwarded-for", &["10.2.2.2, 10.1.1.1"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("10.2.2.2"));
        // No header: the proxy's own request.
        assert_eq!(client_of(&HeaderMap::new(), XFF, &t, proxy).unwrap(), proxy);
        // Ports, brackets and IPv4-mapped addresses.
        let h = headers("x-forwarded-for", &["[2001:db8::1]:4711"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("2001:db8::1"));
        let h = headers("x-forwarded-for", &["::ffff:203.0.113.9"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("203.0.113.9"));
        let h = headers("x-forwarded-for", &["203.0.113.9:80"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("203.0.113.9"));
        // `unknown` stops at the last trusted hop.
        let h = headers("x-forwarded-for", &["203.0.113.7, unknown, 10.1.1.1"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), ip("10.1.1.1"));
        // Only the configured header counts.
        let h = headers("forwarded", &["for=203.0.113.7"]);
        assert_eq!(client_of(&h, XFF, &t, proxy).unwrap(), proxy);
    }

    #[test]
    fn rfc7239_forwarded_is_parsed_with_its_quoting() {
        let t = nets(&["127.0.0.1"]);
        let proxy = ip("127.0.0.1");
        let h = headers(
            "forwarded",
            &["for=198.51.100.1;proto=https, For=\"[2001:db8:cafe::17]:4711\";by=_proxy"],
        );
        assert_eq!(
            client_of(&h, FWD, &t, proxy).unwrap(),
            ip("2001:db8:cafe::17")
        );
        let h = headers("forwarded", &["for=_hidden, for=127.0.0.1"]);
        assert_eq!(client_of(&h, FWD, &t, proxy).unwrap(), proxy);
        // An element without for= is a hop that is not identified.
        let h = headers("forwarded", &["for=203.0.113.1", "proto=http"]);
        assert_eq!(client_of(&h, FWD, &t, proxy).unwrap(), proxy);
        // A separator inside a quoted string is not one.
        let h = headers("forwarded", &["for=\"203.0.113.5\";ext=\"a,b;c\""]);
        assert_eq!(client_of(&h, FWD, &t, proxy).unwrap(), ip("203.0.113.5"));
    }

    #[test]
    fn malformed_headers_from_a_trusted_proxy_are_refused() {
        let t = nets(&["127.0.0.1"]);
        let proxy = ip("127.0.0.1");
        for v in ["proxy.example", "203.0.113.7,,", "1.2.3.4 5.6.7.8", "_"] {
            let h = headers("x-forwarded-for", &[v]);
            assert_eq!(client_of(&h, XFF, &t, proxy), Err(Malformed::BadHop), "{v}");
        }
        for v in ["for=\"1.2.3.4", "for", "for=1.2.3.4,", "for=1.2\"3"] {
            let h = headers("forwarded", &[v]);
            assert!(client_of(&h, FWD, &t, proxy).is_err(), "{v}");
        }
        let many = vec!["10.0.0.1"; MAX_HOPS + 1].join(",");
        let h = headers("x-forwarded-for", &[&many]);
        assert_eq!(client_of(&h, XFF, &t, proxy), Err(Malformed::TooManyHops));
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap(),
        );
        assert_eq!(client_of(&h, XFF, &t, proxy), Err(Malformed::NotAscii));
    }
}
