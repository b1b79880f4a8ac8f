//! Bounds-checked header access shared by the XDP and TC programs, and the skb fields the
//! TC programs read: every raw read of a packet byte or an `__sk_buff` field is here.
use aya_ebpf::{
    bindings::__sk_buff,
    programs::{TcContext, XdpContext},
};
use network_types::ip::{IpProto, Ipv4Hdr, Ipv6Hdr};
use nve_common::{
    maps::MONITOR_HEAD,
    metrics::DropReason,
    wire::{ETH_P_8021AD, ETH_P_8021Q},
};

/// `pkt_type` of an skb addressed to another host's MAC (linux/if_packet.h).
const PACKET_OTHERHOST: u32 = 3;

/// A packet buffer as the verifier sees it: [data, data_end).
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Bytes in the frame from the Ethernet header on.
    fn frame_len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }
    /// Whether the frame is unicast to a MAC (`dst`) that is not this interface's (`own`):
    /// one the kernel's stack drops as PACKET_OTHERHOST.
    fn for_other_host(&self, dst: &[u8; 6], own: &[u8; 6]) -> bool {
        !is_multicast(dst) && dst != own
    }
    /// The 4 bytes at `offset`, through the context's load helper: for offsets that vary
    /// with a header length, whose direct bounds checks the compiler may prove redundant
    /// from a later one in ways the verifier cannot follow.
    fn load_word(&self, offset: usize) -> Option<[u8; 4]>;
    /// Copies the frame's first `len` bytes (1 to `MONITOR_HEAD`, at most the frame's
    /// length) to `dst` with the load helper; whether it did.
    ///
    /// # Safety
    /// `dst` is valid for `MONITOR_HEAD` bytes of writes.
    unsafe fn load_into(&self, dst: *mut u8, len: u32) -> bool;
    /// The interface the program runs on.
    fn ifindex_seen(&self) -> u32;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn load_word(&self, offset: usize) -> Option<[u8; 4]> {
        let mut word = [0u8; 4];
        // SAFETY: helper call writing 4 bytes into `word`.
        let rc = unsafe {
            aya_ebpf::helpers::bpf_xdp_load_bytes(
                self.ctx,
                offset as u32,
                word.as_mut_ptr() as *mut _,
                4,
            )
        };
        (rc == 0).then_some(word)
    }
    #[inline(always)]
    unsafe fn load_into(&self, dst: *mut u8, len: u32) -> bool {
        let Some(len) = head_len(len) else {
            return false;
        };
        // SAFETY: helper call writing `len` (at most MONITOR_HEAD) bytes into `dst`.
        unsafe { aya_ebpf::helpers::bpf_xdp_load_bytes(self.ctx, 0, dst as *mut _, len) == 0 }
    }
    #[inline(always)]
    fn ifindex_seen(&self) -> u32 {
        // SAFETY: the context pointer the program was called with.
        unsafe { (*self.ctx).ingress_ifindex }
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn frame_len(&self) -> u32 {
        // skb->len: includes paged data the linear window does not show.
        self.len()
    }
    #[inline(always)]
    fn load_word(&self, offset: usize) -> Option<[u8; 4]> {
        let mut word = [0u8; 4];
        copy_out(self, offset, &mut word).ok().map(|()| word)
    }
    #[inline(always)]
    unsafe fn load_into(&self, dst: *mut u8, len: u32) -> bool {
        let Some(len) = head_len(len) else {
            return false;
        };
        // SAFETY: helper call writing `len` (at most MONITOR_HEAD) bytes into `dst`.
        unsafe {
            aya_ebpf::helpers::bpf_skb_load_bytes(self.skb.skb as *const _, 0, dst as *mut _, len)
                == 0
        }
    }
    #[inline(always)]
    fn ifindex_seen(&self) -> u32 {
        sk_buff(self).ifindex
    }
    #[inline(always)]
    fn for_other_host(&self, _dst: &[u8; 6], _own: &[u8; 6]) -> bool {
        // eth_type_trans compared the destination with the device's address already.
        sk_buff(self).pkt_type == PACKET_OTHERHOST
    }
}

/// `len` (1 to `MONITOR_HEAD`) in a form the verifier can bound for a load helper's
/// length. The compiler knows the bounds of the caller's value and would fold a plain
/// check into a comparison of packet pointers the verifier does not relate to it: the
/// value is read back through memory, so the mask below stays and bounds it to
/// [1, MONITOR_HEAD].
#[inline(always)]
fn head_len(len: u32) -> Option<u32> {
    const _: () = assert!(MONITOR_HEAD.is_power_of_two());
    if len == 0 || len > MONITOR_HEAD as u32 {
        return None;
    }
    // SAFETY: a read of a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    Some(((len - 1) & (MONITOR_HEAD as u32 - 1)) + 1)
}

/// What the skb carries besides the frame's bytes: the `__sk_buff` fields the programs read.
pub trait SkbMeta {
    /// The interface the frame arrived on (TC ingress).
    fn ifindex(&self) -> u32;
    /// The TCI of the VLAN tag the stack took out of the frame into the skb (offloaded).
    fn offloaded_vlan_tci(&self) -> Option<u16>;
    /// Segment size of a GSO frame; 0: not GSO.
    fn gso_size(&self) -> u32;
    /// The flow hash the stack computed (0: none yet).
    fn skb_hash(&self) -> u32;
    /// The frame's ethertype as the skb has it (`skb->protocol`), host order.
    fn ether_type(&self) -> u16;
}

impl SkbMeta for TcContext {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        sk_buff(self).ifindex
    }
    #[inline(always)]
    fn offloaded_vlan_tci(&self) -> Option<u16> {
        let skb = sk_buff(self);
        (skb.vlan_present != 0).then_some(skb.vlan_tci as u16)
    }
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        sk_buff(self).gso_size
    }
    #[inline(always)]
    fn skb_hash(&self) -> u32 {
        sk_buff(self).hash
    }
    #[inline(always)]
    fn ether_type(&self) -> u16 {
        u16::from_be(self.skb.protocol() as u16)
    }
}

/// The program's own context, to read its fields.
#[inline(always)]
fn sk_buff(ctx: &TcContext) -> &__sk_buff {
    // SAFETY: the context pointer the program was called with, valid for its whole run.
    unsafe { &*ctx.skb.skb }
}

/// `T` at `offset`, if the whole of it lies inside the frame.
#[inline(always)]
pub fn header<T>(f: &impl Frame, offset: usize) -> Option<&T> {
    let start = f.data() + offset;
    if start + size_of::<T>() > f.data_end() {
        return None;
    }
    // SAFETY: bounds checked above; headers are read unaligned-safe byte arrays.
    Some(unsafe { &*(start as *const T) })
}

/// Like [`header`], with the drop reason a missing header means.
#[inline(always)]
pub fn require<T>(f: &impl Frame, offset: usize, reason: DropReason) -> Result<&T, DropReason> {
    header(f, offset).ok_or(reason)
}

/// The IPv4 header's protocol number, read as a byte: a number `IpProto` has no variant
/// for is never held as one.
#[inline(always)]
pub fn ipv4_proto(ip: &Ipv4Hdr) -> u8 {
    proto_byte(core::ptr::addr_of!(ip.proto))
}

/// The IPv6 header's next header, read as a byte (as [`ipv4_proto`]).
#[inline(always)]
pub fn ipv6_next_hdr(ip: &Ipv6Hdr) -> u8 {
    proto_byte(core::ptr::addr_of!(ip.next_hdr))
}

#[inline(always)]
fn proto_byte(field: *const IpProto) -> u8 {
    // SAFETY: `field` is one byte of a header the caller holds a reference to.
    unsafe { *(field as *const u8) }
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// An 802.1Q or 802.1ad tag's ethertype.
#[inline(always)]
pub fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// Copies `dst.len()` bytes of the frame from `offset` into `dst` (say, a map value) with
/// the load helper; `Err` if the frame is shorter. Unlike `load_bytes`, the length is the
/// caller's constant, never clamped to the frame (the verifier refuses a length that could
/// be zero).
#[inline(always)]
pub fn copy_out(ctx: &TcContext, offset: usize, dst: &mut [u8]) -> Result<(), DropReason> {
    // SAFETY: helper call writing `dst.len()` bytes into `dst`.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset as u32,
            dst.as_mut_ptr() as *mut _,
            dst.len() as u32,
        )
    };
    if rc != 0 {
        return Err(DropReason::PktTooSmall);
    }
    Ok(())
}
