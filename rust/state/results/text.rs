//! The variable texts of the results (order ids, descriptions, metadata, refund reasons, the
//! payment ids refunds name) in one byte arena: a result's texts are one block, each text a
//! LEB128 varint (0: none, else its byte length + 1) and its bytes. The arena grows in chunks
//! that never move (see `chunked`), so a text costs its bytes and one or two more.

use crate::error::{CoreError, CoreResult};

/// Bytes per chunk; a block longer than that gets a chunk of its own.
const CHUNK_BYTES: usize = 1 << 20;

/// Where a block starts: its chunk in the high 32 bits, its offset in the low.
pub type TextAt = u64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Texts {
    chunks: Vec<Vec<u8>>,
}

fn varint_len(mut value: usize) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7f).expect("7 bits") | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).expect("below 0x80"));
}

/// The varint at `at` and the offset after it.
fn get_varint(data: &[u8], mut at: usize) -> (usize, usize) {
    let (mut value, mut shift) = (0, 0);
    loop {
        let byte = data[at];
        at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return (value, at);
        }
        shift += 7;
    }
}

impl Texts {
    /// Appends the texts of one result as one block.
    ///
    /// # Errors
    /// `StateFull` past `u32::MAX` chunks or for a block over 4 GiB.
    pub fn push(&mut self, texts: &[Option<&[u8]>]) -> CoreResult<TextAt> {
        let full = || CoreError::StateFull { what: "result texts" };
        let len: usize = texts
            .iter()
            .map(|text| text.map_or(1, |text| varint_len(text.len() + 1) + text.len()))
            .sum();
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.capacity() - chunk.len() < len)
        {
            self.chunks.push(Vec::with_capacity(len.max(CHUNK_BYTES)));
        }
        let chunk = u32::try_from(self.chunks.len() - 1).map_err(|_| full())?;
        let out = self.chunks.last_mut().expect("a chunk was just ensured");
        let offset = u32::try_from(out.len()).map_err(|_| full())?;
        u32::try_from(out.len() + len).map_err(|_| full())?;
        for text in texts {
            match text {
                None => out.push(0),
                Some(text) => {
                    put_varint(out, text.len() + 1);
                    out.extend_from_slice(text);
                }
            }
        }
        Ok(u64::from(chunk) << 32 | u64::from(offset))
    }

    /// The `N` texts of the block at `at`, which `push` returned.
    #[must_use]
    pub fn get<const N: usize>(&self, at: TextAt) -> [Option<&[u8]>; N] {
        let chunk = &self.chunks[usize::try_from(at >> 32).expect("a u32")];
        let mut offset = usize::try_from(at & u64::from(u32::MAX)).expect("a u32");
        std::array::from_fn(|_| {
            let (len, start) = get_varint(chunk, offset);
            offset = start + len.saturating_sub(1);
            (len > 0).then(|| &chunk[start..offset])
        })
    }

    /// Frees the chunks before the one of the block at `at` (their results left memory): the
    /// blocks after them keep their place.
    pub fn forget_before(&mut self, at: TextAt) {
        let chunk = usize::try_from(at >> 32).expect("a u32");
        for freed in &mut self.chunks[..chunk] {
            *freed = Vec::new();
        }
    }

    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<u8>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_come_back_as_put_none_and_empty_apart() {
        let mut texts = Texts::default();
        let long = vec![b'x'; 300];
        let huge = vec![b'y'; CHUNK_BYTES + 5];
        let first = texts.push(&[Some(b"order-1"), None, Some(b"")]).unwrap();
        let second = texts.push(&[Some(&long), Some("é✓".as_bytes())]).unwrap();
        let third = texts.push(&[Some(&huge), None]).unwrap();
        assert_eq!(
            texts.get::<3>(first),
            [Some(&b"order-1"[..]), None, Some(&b""[..])]
        );
        assert_eq!(texts.get::<2>(second), [Some(&long[..]), Some("é✓".as_bytes())]);
        assert_eq!(texts.get::<2>(third), [Some(&huge[..]), None]);
        assert_eq!(third >> 32, 1, "a block longer than a chunk gets its own");
        texts.forget_before(third);
        assert!(texts.heap_bytes() < huge.len() + 200, "the first chunk is freed");
        assert_eq!(texts.get::<2>(third), [Some(&huge[..]), None]);
    }
}
