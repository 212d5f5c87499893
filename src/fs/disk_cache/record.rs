//! One cached block as it lies in a segment file: a header page (magic, identity, data
//! length, CRC32 of the data), then the data padded to whole pages, exactly as the
//! block's buffer holds it (`block_buffers.rs`), so that it is written and read with
//! O_DIRECT straight from and into that buffer.

use crate::fs::block_buffers::{BlockBuffer, DATA_OFFSET, round_up};

const MAGIC: &[u8; 8] = b"S3VBLK2\0";

/// Bytes a record of `data_len` bytes of data takes in its segment.
pub fn record_size(data_len: usize) -> u64 {
    (DATA_OFFSET + round_up(data_len)) as u64
}

/// Writes the header of `block` into its header page; false if the identity does not fit
/// one page (such a block is not cached).
pub fn write_header(identity: &str, block: &mut BlockBuffer) -> bool {
    let fields = MAGIC.len() + 4 + identity.len() + 8 + 4;
    if fields > DATA_OFFSET {
        return false;
    }
    let crc = crc32fast::hash(block.data()).to_le_bytes();
    let len = (block.data().len() as u64).to_le_bytes();
    let page = block.header_mut();
    page.fill(0);
    let mut at = 0;
    for part in [
        &MAGIC[..],
        &(identity.len() as u32).to_le_bytes(),
        identity.as_bytes(),
        &len,
        &crc,
    ] {
        page[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    true
}

/// The fields of a header page: identity, data length, CRC32 of the data.
fn parse(page: &[u8]) -> Option<(&[u8], usize, u32)> {
    let rest = page.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_at_checked(4)?;
    let id_len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let (id, rest) = rest.split_at_checked(id_len)?;
    let (len, rest) = rest.split_at_checked(8)?;
    let data_len = usize::try_from(u64::from_le_bytes(len.try_into().ok()?)).ok()?;
    let crc = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    Some((id, data_len, crc))
}

/// What a header page found while scanning a segment says: the record's identity and
/// its size in the segment. `None` for anything else (the end of what was written).
pub fn scan_header(page: &[u8]) -> Option<(&[u8], u64)> {
    let (id, data_len, _) = parse(page)?;
    let data_len = data_len.min(usize::MAX - 2 * DATA_OFFSET);
    Some((id, record_size(data_len)))
}

/// The length of the data of `record` (a header page and data, as read) if it is an
/// intact block of `identity`.
pub fn decode(record: &[u8], identity: &str) -> Option<usize> {
    let (id, data_len, crc) = parse(record)?;
    if id != identity.as_bytes() {
        return None;
    }
    let data = record.get(DATA_OFFSET..DATA_OFFSET.checked_add(data_len)?)?;
    (crc32fast::hash(data) == crc).then_some(data_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::block_buffers::BlockBuffers;

    #[test]
    fn a_record_decodes_only_as_itself_and_intact() {
        let buffers = BlockBuffers::new(4096, 1 << 20);
        let mut b = buffers.take(5);
        b.as_mut()[DATA_OFFSET..DATA_OFFSET + 5].copy_from_slice(b"hello");
        b.set_len(5);
        assert!(write_header("id", &mut b));
        let image = b.file_image().to_vec();
        assert_eq!(image.len() as u64, record_size(5));
        assert_eq!(decode(&image, "id"), Some(5));
        assert_eq!(decode(&image, "other"), None);
        assert_eq!(scan_header(&image[..DATA_OFFSET]), Some((&b"id"[..], record_size(5))));
        let mut flipped = image.clone();
        flipped[DATA_OFFSET] ^= 1;
        assert_eq!(decode(&flipped, "id"), None);
        assert!(
            !write_header(&"x".repeat(DATA_OFFSET), &mut b),
            "an identity beyond a page"
        );
    }

    #[test]
    fn hostile_headers_are_rejected_never_panic() {
        let mut huge_len = Vec::from(&MAGIC[..]);
        huge_len.extend_from_slice(&2u32.to_le_bytes());
        huge_len.extend_from_slice(b"id");
        huge_len.extend_from_slice(&u64::MAX.to_le_bytes());
        huge_len.extend_from_slice(&[0; 4]);
        huge_len.resize(DATA_OFFSET, 0);
        assert_eq!(decode(&huge_len, "id"), None);
        assert!(scan_header(&huge_len).is_some_and(|(_, size)| size > DATA_OFFSET as u64));
        let mut long_id = Vec::from(&MAGIC[..]);
        long_id.extend_from_slice(&u32::MAX.to_le_bytes());
        for page in [&[][..], &[0; 10], &MAGIC[..], &long_id, &vec![0xff; DATA_OFFSET]] {
            assert_eq!(decode(page, "id"), None);
            assert_eq!(scan_header(page), None);
        }
    }
}
