//! Wire constants: Ethernet, ARP, IPv4/IPv6, ICMPv6 neighbour discovery and VXLAN
//! (RFC 7348). Named as in the kernel's uapi headers where it has them; used by the eBPF
//! programs, the daemon and the tests' reference model alike.

/// Length of an Ethernet header (ETH_HLEN).
pub const ETH_LEN: usize = 14;
/// Ethertypes (linux/if_ether.h).
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_RARP: u16 = 0x8035;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// LLDP (802.1AB), which carries VDP's EVB TLV.
pub const ETH_P_LLDP: u16 = 0x88cc;
/// ECP (802.1Qbg), which carries VDP.
pub const ETH_P_ECP: u16 = 0x8940;

/// ARP operations (linux/if_arp.h ARPOP_*).
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// IP protocol numbers (IPv4 protocol, IPv6 next header).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv4 "don't fragment", in the flags and fragment offset field.
pub const IP_DF: u16 = 0x4000;

/// ICMPv6 neighbour discovery message types (RFC 4861).
pub const ICMPV6_NEIGHBOUR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERT: u8 = 136;

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
