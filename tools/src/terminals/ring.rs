//! The replay ring: the newest output of a terminal, numbered by absolute byte offset since the
//! PTY started, so a client that comes back with its offset gets exactly what it missed.

use std::collections::VecDeque;

/// What a read from an offset finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slice {
    /// Output starting at `offset`.
    Data {
        /// Absolute offset of `bytes[0]`.
        offset: u64,
        /// The bytes, at most the reader's limit.
        bytes: Vec<u8>,
    },
    /// The bytes `from..to` have left the ring; reading resumes at `to`.
    Gap {
        /// The offset asked for.
        from: u64,
        /// The oldest offset still held.
        to: u64,
    },
    /// Nothing at or after the offset yet.
    Empty,
}

/// A byte ring that grows as output comes (an idle terminal holds only what it printed) up to
/// `capacity`, then drops its oldest bytes.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    /// Absolute offset of `data[0]`.
    base: u64,
    data: VecDeque<u8>,
}

impl Ring {
    /// An empty ring holding at most `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            base: 0,
            data: VecDeque::new(),
        }
    }

    /// Appends output, dropping the oldest bytes past the capacity.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.capacity {
            self.base += (self.data.len() + bytes.len() - self.capacity) as u64;
            self.data.clear();
            self.data.extend(&bytes[bytes.len() - self.capacity..]);
            return;
        }
        let excess = (self.data.len() + bytes.len()).saturating_sub(self.capacity);
        self.data.drain(..excess);
        self.base += excess as u64;
        self.data.extend(bytes);
    }

    /// Offset just past the newest byte: the total output so far.
    pub fn end(&self) -> u64 {
        self.base + self.data.len() as u64
    }

    /// Offset of the oldest byte held.
    pub fn start(&self) -> u64 {
        self.base
    }

    /// Bytes held now (for memory accounting).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Up to `max` bytes from `offset`; a [`Slice::Gap`] when `offset` has left the ring. An
    /// offset past the end reads as empty.
    pub fn read(&self, offset: u64, max: usize) -> Slice {
        if offset < self.base {
            return Slice::Gap {
                from: offset,
                to: self.base,
            };
        }
        if offset >= self.end() {
            return Slice::Empty;
        }
        let start = (offset - self.base) as usize;
        let stop = (start + max.max(1)).min(self.data.len());
        Slice::Data {
            offset,
            bytes: self.data.range(start..stop).copied().collect(),
        }
    }

    /// Everything held from `offset` (clamped to the oldest byte), at most the newest `max`.
    pub fn tail_from(&self, offset: u64, max: usize) -> (u64, Vec<u8>) {
        let from = offset
            .clamp(self.base, self.end())
            .max(self.end().saturating_sub(max as u64));
        let start = (from - self.base) as usize;
        (from, self.data.range(start..).copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_wrapping_and_gaps_are_reported() {
        let mut r = Ring::new(8);
        r.push(b"hello");
        assert_eq!(
            r.read(0, 100),
            Slice::Data {
                offset: 0,
                bytes: b"hello".to_vec()
            }
        );
        r.push(b" world");
        assert_eq!((r.start(), r.end(), r.len()), (3, 11, 8));
        assert_eq!(r.read(1, 100), Slice::Gap { from: 1, to: 3 });
        assert_eq!(
            r.read(5, 3),
            Slice::Data {
                offset: 5,
                bytes: b" wo".to_vec()
            }
        );
        assert_eq!(r.read(11, 10), Slice::Empty);
        r.push(b"0123456789ab");
        assert_eq!((r.start(), r.end()), (15, 23));
        assert_eq!(r.tail_from(0, 4), (19, b"89ab".to_vec()));
    }
}
