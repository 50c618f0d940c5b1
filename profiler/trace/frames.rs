//! Finding zstd frame boundaries in a file without decompressing: the frame header tells how
//! long the header is, and each block header (3 bytes) how long its block is. This is how a
//! file that was cut short (no seek table) is read back to its last whole chunk, with bounded
//! reads and no trust in the bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::format::{SKIPPABLE_MAGIC_MAX, SKIPPABLE_MAGIC_MIN, ZSTD_MAGIC};

/// What lies at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameAt {
    /// A whole zstd frame of this many bytes.
    Zstd(u64),
    /// A whole skippable frame of this many bytes (magic in the low nibble range).
    Skippable {
        /// The frame's magic.
        magic: u32,
        /// The frame's length, header included, bytes.
        len: u64,
    },
    /// The file ends inside the frame that starts here.
    Truncated,
    /// The bytes here are not a frame; `at` is the offending file offset.
    Garbage {
        /// The offending file offset.
        at: u64,
        /// What is wrong there.
        what: String,
    },
}

fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.read_exact_at(buf, offset)
}

/// The extent of the frame at `offset` in a file of `file_len` bytes.
pub fn frame_at(file: &File, offset: u64, file_len: u64) -> std::io::Result<FrameAt> {
    if offset + 4 > file_len {
        return Ok(FrameAt::Truncated);
    }
    let mut magic = [0u8; 4];
    read_at(file, offset, &mut magic)?;
    let magic = u32::from_le_bytes(magic);
    if (SKIPPABLE_MAGIC_MIN..=SKIPPABLE_MAGIC_MAX).contains(&magic) {
        if offset + 8 > file_len {
            return Ok(FrameAt::Truncated);
        }
        let mut size = [0u8; 4];
        read_at(file, offset + 4, &mut size)?;
        let len = 8 + u32::from_le_bytes(size) as u64;
        return Ok(if offset + len > file_len { FrameAt::Truncated } else { FrameAt::Skippable { magic, len } });
    }
    if magic != ZSTD_MAGIC {
        return Ok(FrameAt::Garbage { at: offset, what: format!("expected a zstd frame, found magic {magic:#010x}") });
    }
    if offset + 5 > file_len {
        return Ok(FrameAt::Truncated);
    }
    let mut fhd = [0u8; 1];
    read_at(file, offset + 4, &mut fhd)?;
    let fhd = fhd[0];
    if fhd & 0x08 != 0 {
        return Ok(FrameAt::Garbage { at: offset + 4, what: "zstd frame header has its reserved bit set".into() });
    }
    let single_segment = fhd & 0x20 != 0;
    let checksum = fhd & 0x04 != 0;
    let dict_bytes = [0u64, 1, 2, 4][(fhd & 3) as usize];
    let fcs_bytes = [if single_segment { 1 } else { 0 }, 2, 4, 8][(fhd >> 6) as usize];
    let window_bytes = if single_segment { 0 } else { 1 };
    let mut pos = offset + 5 + window_bytes + dict_bytes + fcs_bytes;
    loop {
        if pos + 3 > file_len {
            return Ok(FrameAt::Truncated);
        }
        let mut bh = [0u8; 3];
        read_at(file, pos, &mut bh)?;
        let bh = u32::from_le_bytes([bh[0], bh[1], bh[2], 0]);
        let last = bh & 1 != 0;
        let block_type = (bh >> 1) & 3;
        let block_size = (bh >> 3) as u64;
        let body = match block_type {
            0 | 2 => block_size,
            1 => 1,
            _ => return Ok(FrameAt::Garbage { at: pos, what: "zstd block of reserved type 3".into() }),
        };
        if block_size > 128 * 1024 {
            return Ok(FrameAt::Garbage {
                at: pos,
                what: format!("zstd block claims {block_size} bytes, over the 128 KiB limit"),
            });
        }
        pos += 3 + body;
        if pos > file_len {
            return Ok(FrameAt::Truncated);
        }
        if last {
            break;
        }
    }
    if checksum {
        pos += 4;
        if pos > file_len {
            return Ok(FrameAt::Truncated);
        }
    }
    Ok(FrameAt::Zstd(pos - offset))
}
