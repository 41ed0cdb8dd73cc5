//! The field encoding the native snapshots share (the ledger's, `snapshot.rs`; the results',
//! `results/snapshot.rs`): little-endian integers, `str` as a u32 byte length and UTF-8 bytes,
//! `opt` as a u8 tag (0 none, 1 some) and an i64, the magic bytes, a u32 version and a u32 of
//! flags first, and a CRC-32C trailer of every byte before it.

use crate::error::{CoreError, CoreResult};

pub const CRC_LEN: usize = 4;

pub struct Writer(pub Vec<u8>);

impl Writer {
    /// A snapshot begun with its header.
    pub fn new(magic: [u8; 8], version: u32, capacity: usize) -> Self {
        let mut out = Self(Vec::with_capacity(capacity));
        out.0.extend_from_slice(&magic);
        out.u32(version);
        out.u32(0);
        out
    }

    /// The bytes, sealed with their checksum.
    pub fn seal(mut self) -> Vec<u8> {
        let crc = crc32c::crc32c(&self.0);
        self.u32(crc);
        self.0
    }

    pub fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    pub fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    pub fn len(&mut self, len: usize) {
        self.u32(u32::try_from(len).expect("counts are u32 indexes"));
    }

    pub fn str(&mut self, value: &str) {
        self.len(value.len());
        self.0.extend_from_slice(value.as_bytes());
    }

    pub fn opt(&mut self, value: Option<i64>) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                self.i64(value);
            }
        }
    }
}

/// Reads the fields in order; any read past the end is a corrupt snapshot, reported with
/// `corrupt` (the error of the snapshot's kind).
pub struct Reader<'a> {
    data: &'a [u8],
    pub at: usize,
    pub corrupt: fn(String) -> CoreError,
}

impl<'a> Reader<'a> {
    /// A reader after the header of `data`, its magic, checksum, version and flags checked.
    ///
    /// # Errors
    /// `corrupt` for bytes not written with this header (or damaged since).
    pub fn open(
        data: &'a [u8],
        magic: [u8; 8],
        version: u32,
        corrupt: fn(String) -> CoreError,
    ) -> CoreResult<Self> {
        let body_len = data
            .len()
            .checked_sub(CRC_LEN)
            .filter(|&len| len >= magic.len() + 8)
            .ok_or_else(|| corrupt(format!("{} bytes is shorter than the header", data.len())))?;
        let (body, crc) = data.split_at(body_len);
        if body[..magic.len()] != magic[..] {
            return Err(corrupt("wrong magic bytes".into()));
        }
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut reader = Reader {
            data: body,
            at: magic.len(),
            corrupt,
        };
        let found = reader.u32()?;
        if found != version || reader.u32()? != 0 {
            return Err(corrupt(format!("unknown format version {found} or flags")));
        }
        Ok(reader)
    }

    /// Whether every byte before the checksum was read: `what` names the last part.
    ///
    /// # Errors
    /// `corrupt` if bytes are left.
    pub fn finish(&self, what: &str) -> CoreResult<()> {
        if self.at == self.data.len() {
            return Ok(());
        }
        Err((self.corrupt)(format!(
            "{} bytes after the {what}",
            self.data.len() - self.at
        )))
    }

    pub fn error(&self, reason: impl Into<String>) -> CoreError {
        (self.corrupt)(reason.into())
    }

    pub fn bytes(&mut self, len: usize) -> CoreResult<&'a [u8]> {
        let end = self.at.checked_add(len).filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| self.error(format!("truncated at byte {}", self.at)))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> CoreResult<[u8; N]> {
        Ok(self.bytes(N)?.try_into().expect("N bytes were read"))
    }

    pub fn u8(&mut self) -> CoreResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> CoreResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> CoreResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> CoreResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> CoreResult<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn flag(&mut self, what: &str) -> CoreResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error(format!("{what} is {other}, not 0 or 1"))),
        }
    }

    pub fn str(&mut self) -> CoreResult<&'a str> {
        let len = self.u32()? as usize;
        let bytes = self.bytes(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.error("a name is not UTF-8"))
    }

    pub fn opt(&mut self) -> CoreResult<Option<i64>> {
        Ok(if self.flag("an option tag")? {
            Some(self.i64()?)
        } else {
            None
        })
    }

    /// A u32 index below `len`.
    pub fn index(&mut self, what: &str, len: usize) -> CoreResult<u32> {
        let index = self.u32()?;
        if index as usize >= len {
            return Err(self.error(format!("{what} {index} is not one of {len}")));
        }
        Ok(index)
    }
}

#[cfg(test)]
pub mod testing {
    use super::CRC_LEN;
    use crate::error::{CoreError, CoreResult};

    /// The bytes with their checksum made right again, as a deliberate forgery would.
    pub fn resealed(mut data: Vec<u8>) -> Vec<u8> {
        let body = data.len() - CRC_LEN;
        let crc = crc32c::crc32c(&data[..body]);
        data[body..].copy_from_slice(&crc.to_le_bytes());
        data
    }

    /// `decode` refuses `encoded` with a byte flipped (with an error `corrupt` accepts) or cut
    /// short.
    pub fn check_damage_refused<T>(
        encoded: &[u8],
        decode: impl Fn(&[u8]) -> CoreResult<T>,
        corrupt: impl Fn(&CoreError) -> bool,
    ) {
        for at in [0, 8, 20, encoded.len() / 2, encoded.len() - 1] {
            let mut damaged = encoded.to_vec();
            damaged[at] ^= 1;
            assert!(
                decode(&damaged).err().is_some_and(|error| corrupt(&error)),
                "byte {at}"
            );
        }
        for len in [0, 10, encoded.len() - 1] {
            assert!(decode(&encoded[..len]).is_err(), "{len} bytes");
        }
    }
}
