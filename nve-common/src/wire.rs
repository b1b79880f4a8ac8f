//! VXLAN wire constants (RFC 7348).

/// IANA UDP destination port for VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// The I flag: the VNI field is valid. The only flag a VXLAN header may carry.
pub const VXLAN_FLAG_I: u8 = 0x08;
/// Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8): what encapsulation adds on an IPv4 underlay.
pub const VXLAN_IPV4_OVERHEAD: u32 = 50;
/// Ethernet (14) + IPv6 (40) + UDP (8) + VXLAN (8): on an IPv6 underlay.
pub const VXLAN_IPV6_OVERHEAD: u32 = 70;
/// The range a VN's MTU may be configured in; frames up to the smallest skip the
/// dataplane's lookup of it.
pub const MIN_VN_MTU: u32 = 576;
pub const MAX_VN_MTU: u32 = 9000;
/// Largest valid VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// Encapsulation source ports are a hash of the inner flow in [UDP_SRC_PORT_MIN, 65535].
pub const UDP_SRC_PORT_MIN: u16 = 49152;
/// Default outer TTL.
pub const DEFAULT_TTL: u8 = 64;
