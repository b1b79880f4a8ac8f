//! What an address must be to be a host's (a vNIC's, a remote MAC's).
use std::net::IpAddr;

use crate::error::{Error, ErrorCode};

/// Checks that `ip` (of `field`) can be a host's address: not unspecified, loopback,
/// multicast, broadcast or reserved (240.0.0.0/4).
pub fn check_host_ip(field: &str, ip: IpAddr) -> Result<(), Error> {
    let why = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V4(a) if a.octets()[0] >= 240 => Some("reserved (240.0.0.0/4)"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        _ => None,
    };
    match why {
        Some(why) => Err(Error::new(
            ErrorCode::EFormat,
            format!("{field}: {ip} is {why}, not a host's address"),
        )),
        None => Ok(()),
    }
}
