//! The interleaved byte order of activations and 8-bit weights within a row: blocks in
//! quads, then a pair, then a lone block, as the 512-bit and 256-bit kernels load them.

use super::BLOCK;

/// Byte offset, within a row of `nb` blocks, of value `j` of block `b` in the
/// **interleaved** layout of activations and 8-bit weights. Blocks go in quads: a quad's
/// 128 bytes are `[b0[0..16], b1[0..16], b2[0..16], b3[0..16], b0[16..32], .., b3[16..32]]`,
/// the order in which four 4-bit blocks (64 bytes, one 512-bit load) unpack into low and
/// high nibbles, so two 512-bit multiply-adds cover four blocks and their 16 lanes split
/// 4 per block. Blocks left after the last quad go as one pair (`[b0[0..16], b1[0..16],
/// b0[16..32], b1[16..32]]`, the 256-bit form of the same idea) and an odd last block in
/// order. A pair inside a quad is found by [`pair_offsets`], so the 256-bit kernels read
/// the same layout.
#[inline(always)]
pub fn layout_pos(nb: usize, b: usize, j: usize) -> usize {
    let quads = nb & !3;
    if b < quads {
        (b / 4) * 128 + (j / 16) * 64 + (b % 4) * 16 + (j % 16)
    } else if nb - quads >= 2 && b < quads + 2 {
        quads * BLOCK + (j / 16) * 32 + (b - quads) * 16 + (j % 16)
    } else {
        b * BLOCK + j
    }
}

/// Byte offsets, within a row of `nb` blocks, of the two 32-byte halves of the block pair
/// starting at even block `b`: values 0..16 of both blocks, then values 16..32 of both.
#[inline(always)]
pub fn pair_offsets(nb: usize, b: usize) -> (usize, usize) {
    let quads = nb & !3;
    if b < quads {
        let lo = (b / 4) * 128 + ((b % 4) / 2) * 32;
        (lo, lo + 64)
    } else {
        (b * BLOCK, b * BLOCK + 32)
    }
}

/// Copy one block's 32 values into a row in the interleaved layout.
#[inline(always)]
pub(super) fn scatter_block<T: Copy>(row: &mut [T], nb: usize, b: usize, values: &[T]) {
    let lo = layout_pos(nb, b, 0);
    let hi = layout_pos(nb, b, 16);
    row[lo..lo + 16].copy_from_slice(&values[..16]);
    row[hi..hi + 16].copy_from_slice(&values[16..32]);
}
