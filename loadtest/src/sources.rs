//! Source addresses: which local IP each outgoing connection binds to.
//!
//! One local address can hold at most one connection per (local port, remote address,
//! remote port) — about 28,000 with Linux's default `ip_local_port_range` — so
//! connections are spread round-robin over many source addresses. On loopback every
//! address in 127.0.0.0/8 is local, which is why the default is
//! `127.0.0.2-127.0.0.254` for loopback targets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// The default source addresses for a loopback target.
pub const LOOPBACK_DEFAULT: &str = "127.0.0.2-127.0.0.254";

/// Most addresses one specification may expand to (a /16).
const MAX_ADDRESSES: usize = 65_536;

/// Why a `--source-addrs` value was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError(String);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

/// Parses `--source-addrs`:
///
/// * `none` — let the kernel choose (an empty list);
/// * `N` — the first N loopback addresses from 127.0.0.2 on;
/// * a comma-separated list of addresses and inclusive IPv4 ranges
///   (`10.0.0.5,10.0.0.10-10.0.0.20`, `::1`).
pub fn parse(text: &str) -> Result<Vec<IpAddr>, SourceError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    if let Ok(count) = text.parse::<usize>() {
        if count == 0 || count > MAX_ADDRESSES {
            return Err(SourceError(format!(
                "--source-addrs {count}: a count must be between 1 and {MAX_ADDRESSES} (or use `none`)"
            )));
        }
        let first = u32::from(Ipv4Addr::new(127, 0, 0, 2));
        // `count` ≤ 65,536, so the range stays inside 127.0.0.0/8.
        return Ok((0..count as u32)
            .map(|k| IpAddr::V4(Ipv4Addr::from(first + k)))
            .collect());
    }
    let mut addrs = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((low, high)) = part.split_once('-') {
            let parse_v4 = |s: &str| {
                s.trim().parse::<Ipv4Addr>().map_err(|_| {
                    SourceError(format!(
                        "--source-addrs: `{part}`: ranges need two IPv4 addresses"
                    ))
                })
            };
            let (low, high) = (u32::from(parse_v4(low)?), u32::from(parse_v4(high)?));
            if high < low {
                return Err(SourceError(format!(
                    "--source-addrs: `{part}`: range end is before its start"
                )));
            }
            if (high - low) as usize >= MAX_ADDRESSES - addrs.len() {
                return Err(SourceError(format!(
                    "--source-addrs: more than {MAX_ADDRESSES} addresses"
                )));
            }
            addrs.extend((low..=high).map(|a| IpAddr::V4(Ipv4Addr::from(a))));
        } else {
            let addr = part.parse::<IpAddr>().map_err(|_| {
                SourceError(format!(
                    "--source-addrs: `{part}` is not an address, a range, a count or `none`"
                ))
            })?;
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(SourceError(
            "--source-addrs: empty list (use `none` to let the kernel choose)".to_owned(),
        ));
    }
    Ok(addrs)
}

/// The addresses child `index` of `count` uses: a contiguous share when there are at
/// least as many addresses as children (so children never compete for the same
/// address's ports), otherwise every address.
pub fn share(addrs: &[IpAddr], index: usize, count: usize) -> Vec<IpAddr> {
    debug_assert!(index < count, "child index {index} out of {count}");
    if addrs.len() < count || count <= 1 {
        return addrs.to_vec();
    }
    let (start, len) = split_evenly(addrs.len(), index, count);
    addrs[start..start + len].to_vec()
}

/// Splits `total` items into `count` near-equal contiguous parts and returns
/// `(start, len)` of part `index`. The first `total % count` parts get one extra item.
pub fn split_evenly(total: usize, index: usize, count: usize) -> (usize, usize) {
    debug_assert!(count > 0 && index < count, "part {index} of {count}");
    let base = total / count;
    let extra = total % count;
    let start = index * base + index.min(extra);
    let len = base + usize::from(index < extra);
    (start, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn default_loopback_range() {
        let addrs = parse(LOOPBACK_DEFAULT).unwrap();
        assert_eq!(addrs.len(), 253);
        assert_eq!(addrs[0], v4(127, 0, 0, 2));
        assert_eq!(addrs[252], v4(127, 0, 0, 254));
    }

    #[test]
    fn counts_none_and_lists() {
        assert_eq!(parse("none").unwrap(), Vec::<IpAddr>::new());
        assert_eq!(
            parse("2").unwrap(),
            vec![v4(127, 0, 0, 2), v4(127, 0, 0, 3)]
        );
        let many = parse("300").unwrap();
        assert_eq!(
            many[299],
            v4(127, 0, 1, 45),
            "counts carry into the next octet"
        );
        assert_eq!(
            parse("10.0.0.1, 10.0.0.5-10.0.0.6,::1").unwrap(),
            vec![
                v4(10, 0, 0, 1),
                v4(10, 0, 0, 5),
                v4(10, 0, 0, 6),
                "::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        for text in [
            "0",
            "",
            "10.0.0.9-10.0.0.1",
            "x",
            "::1-::2",
            "10.0.0.0-10.2.0.0",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn even_split_covers_everything_once() {
        for total in 0..40 {
            for count in 1..7 {
                let mut next = 0;
                for index in 0..count {
                    let (start, len) = split_evenly(total, index, count);
                    assert_eq!(start, next, "parts are contiguous");
                    assert!(len == total / count || len == total / count + 1);
                    next = start + len;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn children_get_disjoint_address_shares() {
        let addrs = parse("10").unwrap();
        let a = share(&addrs, 0, 3);
        let b = share(&addrs, 1, 3);
        let c = share(&addrs, 2, 3);
        assert_eq!(a.len() + b.len() + c.len(), 10);
        assert!(a.iter().all(|x| !b.contains(x) && !c.contains(x)));
        // Fewer addresses than children: everyone uses all of them.
        assert_eq!(share(&addrs[..2], 1, 3).len(), 2);
    }
}
