//! A borrowing msgpack reader for the journal's hot records (job parts and
//! outcome batches): strings and binaries as slices of the stored bytes,
//! values skipped without decoding them, no allocation, every length checked.

/// Why bytes are not the msgpack value expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct Malformed {
    pub what: &'static str,
    pub at: usize,
}

/// A cursor over msgpack bytes.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn err<T>(&self, what: &'static str) -> Result<T, Malformed> {
        Err(Malformed { what, at: self.pos })
    }

    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        let b = self.peek().map_or_else(|| self.err("unexpected end"), Ok)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        match self.pos.checked_add(n).filter(|end| *end <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err("unexpected end"),
        }
    }

    fn be(&mut self, n: usize) -> Result<u64, Malformed> {
        Ok(self.take(n)?.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
    }

    /// A length of `n` items, each at least one byte: more than the bytes left is damage.
    fn count(&self, n: u64) -> Result<u32, Malformed> {
        match u32::try_from(n) {
            Ok(n) if (n as usize) <= self.buf.len() - self.pos => Ok(n),
            _ => self.err("length past the end"),
        }
    }

    pub fn map_len(&mut self) -> Result<u32, Malformed> {
        let n = match self.byte()? {
            b @ 0x80..=0x8f => u64::from(b & 0x0f),
            0xde => self.be(2)?,
            0xdf => self.be(4)?,
            _ => return self.err("not a map"),
        };
        self.count(n)
    }

    pub fn array_len(&mut self) -> Result<u32, Malformed> {
        let n = match self.byte()? {
            b @ 0x90..=0x9f => u64::from(b & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return self.err("not an array"),
        };
        self.count(n)
    }

    pub fn str(&mut self) -> Result<&'a str, Malformed> {
        let s = self.key()?;
        std::str::from_utf8(s).map_or_else(|_| self.err("a string not in UTF-8"), Ok)
    }

    /// A string's bytes, unchecked: for field names, compared with known ones.
    pub fn key(&mut self) -> Result<&'a [u8], Malformed> {
        let n = match self.byte()? {
            b @ 0xa0..=0xbf => u64::from(b & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return self.err("not a string"),
        };
        self.take(n as usize)
    }

    pub fn bin(&mut self) -> Result<&'a [u8], Malformed> {
        let n = match self.byte()? {
            0xc4 => self.be(1)?,
            0xc5 => self.be(2)?,
            0xc6 => self.be(4)?,
            _ => return self.err("not binary"),
        };
        self.take(n as usize)
    }

    /// Any integer, as signed.
    fn integer(&mut self) -> Result<i128, Malformed> {
        Ok(match self.byte()? {
            b @ 0x00..=0x7f => i128::from(b),
            b @ 0xe0..=0xff => i128::from(b as i8),
            0xcc => i128::from(self.be(1)?),
            0xcd => i128::from(self.be(2)?),
            0xce => i128::from(self.be(4)?),
            0xcf => i128::from(self.be(8)?),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            _ => return self.err("not an integer"),
        })
    }

    /// An integer that fits `T`.
    pub fn int<T: TryFrom<i128>>(&mut self) -> Result<T, Malformed> {
        let at = self.pos;
        let v = self.integer()?;
        T::try_from(v).map_err(|_| Malformed { what: "an integer out of range", at })
    }

    pub fn bool(&mut self) -> Result<bool, Malformed> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => self.err("not a boolean"),
        }
    }

    /// Consumes a nil if one is next.
    pub fn nil(&mut self) -> bool {
        let nil = self.peek() == Some(0xc0);
        self.pos += usize::from(nil);
        nil
    }

    /// Skips one whole value (of any depth, without recursion).
    pub fn skip(&mut self) -> Result<(), Malformed> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let more = match self.byte()? {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                b @ 0x80..=0x8f => 2 * u64::from(b & 0x0f),
                b @ 0x90..=0x9f => u64::from(b & 0x0f),
                b @ 0xa0..=0xbf => self.take(usize::from(b & 0x1f)).map(|_| 0)?,
                0xc4 | 0xd9 => self.be(1).and_then(|n| self.take(n as usize)).map(|_| 0)?,
                0xc5 | 0xda => self.be(2).and_then(|n| self.take(n as usize)).map(|_| 0)?,
                0xc6 | 0xdb => self.be(4).and_then(|n| self.take(n as usize)).map(|_| 0)?,
                0xc7 => self.be(1).and_then(|n| self.take(n as usize + 1)).map(|_| 0)?,
                0xc8 => self.be(2).and_then(|n| self.take(n as usize + 1)).map(|_| 0)?,
                0xc9 => self.be(4).and_then(|n| self.take(n as usize + 1)).map(|_| 0)?,
                0xca | 0xd2 | 0xce => self.take(4).map(|_| 0)?,
                0xcb | 0xd3 | 0xcf => self.take(8).map(|_| 0)?,
                0xcc | 0xd0 => self.take(1).map(|_| 0)?,
                0xcd | 0xd1 => self.take(2).map(|_| 0)?,
                0xd4 => self.take(2).map(|_| 0)?,
                0xd5 => self.take(3).map(|_| 0)?,
                0xd6 => self.take(5).map(|_| 0)?,
                0xd7 => self.take(9).map(|_| 0)?,
                0xd8 => self.take(17).map(|_| 0)?,
                0xdc => u64::from(self.be(2).and_then(|n| self.count(n))?),
                0xdd => u64::from(self.be(4).and_then(|n| self.count(n))?),
                0xde => 2 * u64::from(self.be(2).and_then(|n| self.count(n))?),
                0xdf => 2 * u64::from(self.be(4).and_then(|n| self.count(n))?),
                0xc1 => return self.err("a reserved byte"),
            };
            // Each pending value is at least one byte: bounded by the input.
            pending += more;
            if pending > (self.buf.len() - self.pos) as u64 {
                return self.err("length past the end");
            }
        }
        Ok(())
    }

    /// The bytes of the next whole value, skipped.
    pub fn value(&mut self) -> Result<&'a [u8], Malformed> {
        let start = self.pos;
        self.skip()?;
        Ok(&self.buf[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn values_of_every_size_read_back_and_skip_exactly() {
        let strings: Vec<String> = [0, 1, 31, 32, 255, 256, 70_000].iter().map(|n| "é".repeat(*n)).collect();
        for s in &strings {
            let b = enc(s);
            assert_eq!(Reader::new(&b).str().unwrap(), s);
            let mut r = Reader::new(&b);
            r.skip().unwrap();
            assert!(r.is_empty(), "skip of a string of {}", s.len());
        }
        for n in [0usize, 1, 255, 256, 70_000] {
            let b = enc(&serde_bytes::ByteBuf::from(vec![7u8; n]));
            assert_eq!(Reader::new(&b).bin().unwrap(), &vec![7u8; n][..]);
            assert_eq!(Reader::new(&b).value().unwrap().len(), b.len());
        }
        for v in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as i64,
            i64::MAX,
            -1,
            -32,
            -33,
            -129,
            i64::MIN,
        ] {
            let b = enc(&v);
            assert_eq!(Reader::new(&b).int::<i64>().unwrap(), v);
            assert_eq!(Reader::new(&b).value().unwrap().len(), b.len());
        }
        assert!(Reader::new(&enc(&-1i64)).int::<u32>().is_err());
        assert!(Reader::new(&enc(&(u32::MAX as u64 + 1))).int::<u32>().is_err());
        let nested =
            (vec![vec![1u8, 2], vec![]], std::collections::BTreeMap::from([("a", 1.5f64)]), None::<u8>);
        let b = enc(&nested);
        let mut r = Reader::new(&b);
        assert_eq!(r.array_len().unwrap(), 3);
        assert_eq!(r.value().unwrap(), &enc(&nested.0)[..]);
        assert_eq!(r.map_len().unwrap(), 1);
        assert_eq!(r.str().unwrap(), "a");
        r.skip().unwrap();
        assert!(r.nil() && r.is_empty());
    }

    #[test]
    fn truncated_or_lying_input_is_refused_not_trusted() {
        let b = enc(&(vec!["abc".to_string(); 20], 300u32));
        for len in 0..b.len() {
            assert!(Reader::new(&b[..len]).skip().is_err(), "truncation to {len}");
        }
        // An array announcing 2^32-1 items in a few bytes.
        assert!(Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]).skip().is_err());
        assert!(Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).array_len().is_err());
        assert!(Reader::new(&[0xc1]).skip().is_err());
        assert!(Reader::new(&[0xa2, 0xff, 0xfe]).str().is_err(), "not UTF-8");
        // Deep nesting costs no stack.
        let deep = vec![0x91u8; 100_000].into_iter().chain([0xc0]).collect::<Vec<u8>>();
        assert!(Reader::new(&deep).skip().is_ok());
    }
}
