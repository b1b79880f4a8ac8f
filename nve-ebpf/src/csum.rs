//! RFC 1071 Internet checksums over headers the programs build on the stack.

/// Adds `bytes` (even length) as big-endian 16-bit words to `sum`.
#[inline(always)]
pub fn add<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += (bytes[i] as u32) << 8 | bytes[i + 1] as u32;
        i += 2;
    }
    sum
}

/// The one's complement of the folded sum: the value for a checksum field. Two folds
/// suffice for any u32 (no loop for the verifier).
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// As [`add`], reading `bytes` as 16-bit words: half the loads, so a long checksum stays
/// in registers instead of spilling to a stack shared with the replication callbacks.
///
/// # Safety
/// `bytes` is 2-byte aligned: a window at an even offset of the scratch buffer (a map
/// value, 8-byte aligned).
#[inline(always)]
pub unsafe fn add_aligned<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let words = bytes.as_ptr() as *const u16;
    let mut i = 0;
    while i < N / 2 {
        // SAFETY: in bounds (i < N / 2), aligned by the caller.
        sum += u16::from_be(unsafe { *words.add(i) }) as u32;
        i += 1;
    }
    sum
}
