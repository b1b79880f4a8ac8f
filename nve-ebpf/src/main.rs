//! nve's dataplane. One file per attach point over shared parsing, encapsulation, delivery
//! and accounting:
//! - `xdp_underlay_rx` / `tc_underlay_rx`: VXLAN decapsulation on the underlay interface;
//! - `tc_tunnel_rx`: frames the kernel's collect_md vxlan device decapsulated (for taps);
//! - `tc_vm_egress`: frames a VM sends (TC ingress on the host side of its tap/veth):
//!   local switching, encapsulation, flooding;
//! - `xdp_pass`: the trivial baseline the bench compares against.
#![no_std]
#![no_main]

mod announce;
mod antispoof;
mod arp;
mod csum;
mod decap;
mod deliver;
mod encap;
mod maps;
mod metrics;
mod monitor;
mod nd;
mod parse;
mod pmtu;
mod tc_tunnel_rx;
mod tc_underlay_rx;
mod tc_vm_egress;
mod tunnel;
mod xdp_pass;
mod xdp_underlay_rx;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
