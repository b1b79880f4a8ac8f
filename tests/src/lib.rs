pub mod overlay;
pub mod packet;
pub mod progtest;
pub mod reference;
pub mod rig;
pub mod signal_bench;
pub mod tap;
pub mod three_hosts;
