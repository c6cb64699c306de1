//! Reports the size of every read to a callback (progress counters).

use std::io::{self, Read};

pub struct CountReader<R, F> {
    inner: R,
    on_read: F,
}

impl<R: Read, F: FnMut(u64)> CountReader<R, F> {
    pub fn new(inner: R, on_read: F) -> Self {
        CountReader { inner, on_read }
    }
}

impl<R: Read, F: FnMut(u64)> Read for CountReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_read)(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_byte_read() {
        let data = vec![1u8; 10_000];
        let (mut total, mut calls) = (0, 0);
        {
            let mut r = CountReader::new(&data[..], |n| {
                total += n;
                calls += 1;
            });
            let mut buf = [0u8; 3000];
            while r.read(&mut buf).unwrap() > 0 {}
        }
        assert_eq!((total, calls), (10_000, 5));
    }
}
