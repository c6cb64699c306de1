//! A `Write` adapter that cuts what is written into fixed-size chunks and
//! writes each as its own zstd frame, recording the chunk index of the bundle
//! manifest (DESIGN.md §5): BLAKE3 of the chunk, and where its frame lies.
//!
//! Independent frames let a download resume at any chunk and let the agent
//! verify each chunk before it writes the next. They also compress in
//! parallel: chunks go round-robin to worker threads and their frames are
//! written back in order, so the output does not depend on the thread count.
//! Memory: at most `threads + 1` chunks in flight, each with its frame, plus
//! the one being filled, whatever the total size.
//!
//! A root image is partly free space, i.e. zeros: an all-zero chunk reuses
//! the frame and digest of the first one instead of compressing it again
//! (the same bytes as compressing it, as zstd is deterministic).

use crate::manifest::Chunk;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use zstd::bulk::Compressor;

struct Job {
    index: usize,
    data: Vec<u8>,
}

struct Done {
    index: usize,
    /// The chunk's buffer, returned for reuse.
    data: Vec<u8>,
    digest: blake3::Hash,
    frame: io::Result<Vec<u8>>,
}

struct Worker {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
}

pub struct ChunkWriter<W: Write> {
    out: W,
    chunk_size: usize,
    buf: Vec<u8>,
    spare: Vec<Vec<u8>>,
    workers: Vec<Worker>,
    done: Receiver<Done>,
    /// Chunks handed to workers, and of those, written out.
    sent: usize,
    written: usize,
    /// Finished out of order, waiting for their turn.
    ready: BTreeMap<usize, Done>,
    chunks: Vec<Chunk>,
    zoffset: u64,
    level: i32,
    /// Digest and frame of a full chunk of zeros, once one was seen.
    zero: Option<(blake3::Hash, Vec<u8>)>,
}

fn is_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|&b| b == 0)
        && words
            .into_iter()
            .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

fn compress_chunks(mut compressor: Compressor<'static>, jobs: Receiver<Job>, done: Sender<Done>) {
    for Job { index, data } in jobs {
        let digest = blake3::hash(&data);
        let frame = compressor.compress(&data);
        if done
            .send(Done {
                index,
                data,
                digest,
                frame,
            })
            .is_err()
        {
            return;
        }
    }
}

fn workers_gone() -> io::Error {
    io::Error::other("a compression thread stopped")
}

impl<W: Write> ChunkWriter<W> {
    /// Frames of `chunk_size` bytes at zstd `level`, on `threads` threads.
    pub fn new(
        out: W,
        chunk_size: usize,
        level: i32,
        threads: usize,
    ) -> io::Result<ChunkWriter<W>> {
        if chunk_size == 0 || threads == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk size or thread count 0",
            ));
        }
        let (done_tx, done) = mpsc::channel();
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (jobs, rx) = mpsc::channel();
            let compressor = Compressor::new(level)?;
            let tx = done_tx.clone();
            let thread = std::thread::spawn(move || compress_chunks(compressor, rx, tx));
            workers.push(Worker { jobs, thread });
        }
        Ok(ChunkWriter {
            out,
            chunk_size,
            buf: Vec::with_capacity(chunk_size),
            spare: Vec::new(),
            workers,
            done,
            sent: 0,
            written: 0,
            ready: BTreeMap::new(),
            chunks: Vec::new(),
            zoffset: 0,
            level,
            zero: None,
        })
    }

    /// Writes the last, possibly short, chunk and waits for every frame;
    /// returns the writer and the chunk index.
    pub fn finish(mut self) -> io::Result<(W, Vec<Chunk>)> {
        if !self.buf.is_empty() {
            self.submit()?;
        }
        while self.written < self.sent {
            self.write_next()?;
        }
        for w in self.workers {
            drop(w.jobs);
            w.thread.join().map_err(|_| workers_gone())?;
        }
        self.out.flush()?;
        Ok((self.out, self.chunks))
    }

    fn submit(&mut self) -> io::Result<()> {
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.chunk_size));
        let data = std::mem::replace(&mut self.buf, next);
        let index = self.sent;
        if data.len() == self.chunk_size && is_zero(&data) {
            let (digest, frame) = match &self.zero {
                Some(z) => z.clone(),
                None => (
                    blake3::hash(&data),
                    zstd::bulk::compress(&data, self.level)?,
                ),
            };
            self.zero = Some((digest, frame.clone()));
            let frame = Ok(frame);
            self.ready.insert(
                index,
                Done {
                    index,
                    data,
                    digest,
                    frame,
                },
            );
        } else {
            let worker = &self.workers[index % self.workers.len()];
            worker
                .jobs
                .send(Job { index, data })
                .map_err(|_| workers_gone())?;
        }
        self.sent += 1;
        while self.sent - self.written > self.workers.len() {
            self.write_next()?;
        }
        Ok(())
    }

    /// Waits for the oldest chunk in flight and writes its frame.
    fn write_next(&mut self) -> io::Result<()> {
        let done = loop {
            if let Some(d) = self.ready.remove(&self.written) {
                break d;
            }
            let d = self.done.recv().map_err(|_| workers_gone())?;
            self.ready.insert(d.index, d);
        };
        let frame = done.frame?;
        self.out.write_all(&frame)?;
        self.chunks.push(Chunk {
            digest: *done.digest.as_bytes(),
            offset: (done.index * self.chunk_size) as u64,
            len: done.data.len() as u64,
            zoffset: self.zoffset,
            zsize: frame.len() as u64,
        });
        self.zoffset += frame.len() as u64;
        self.written += 1;
        let mut data = done.data;
        data.clear();
        self.spare.push(data);
        Ok(())
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.chunk_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk_size {
            self.submit()?;
        }
        Ok(n)
    }

    /// Flushes the underlying writer only: a chunk is cut when full, never early,
    /// so the chunk boundaries do not depend on how the data was written.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(
        data: &[u8],
        chunk_size: usize,
        write_size: usize,
        threads: usize,
    ) -> (Vec<u8>, Vec<Chunk>) {
        let mut w = ChunkWriter::new(Vec::new(), chunk_size, 3, threads).unwrap();
        for piece in data.chunks(write_size) {
            w.write_all(piece).unwrap();
            w.flush().unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn each_chunk_is_an_independent_frame_with_its_digest() {
        let data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (out, chunks) = frames(&data, 4096, 1000, 2);
        assert_eq!(chunks.len(), data.len().div_ceil(4096));
        let mut offset = 0;
        for (i, (c, plain)) in chunks.iter().zip(data.chunks(4096)).enumerate() {
            assert_eq!(c.zoffset, offset, "chunk {i}");
            let frame = &out[c.zoffset as usize..(c.zoffset + c.zsize) as usize];
            assert_eq!(zstd::bulk::decompress(frame, 4096).unwrap(), plain);
            assert_eq!(c.digest, *blake3::hash(plain).as_bytes());
            offset += c.zsize;
        }
        assert_eq!(offset, out.len() as u64);
    }

    #[test]
    fn output_does_not_depend_on_write_sizes_or_threads() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let one = frames(&data, 8192, 1, 1);
        assert_eq!(one, frames(&data, 8192, 65536, 3));
        assert_eq!(one, frames(&data, 8192, 8192, 2));
        let (out, chunks) = frames(&[], 8192, 1, 2);
        assert!(out.is_empty() && chunks.is_empty());
    }

    #[test]
    fn zero_chunks_are_the_frames_zstd_makes_of_them() {
        let mut data = vec![0u8; 8192 * 3 + 100];
        data[8192 + 5] = 1;
        let (out, chunks) = frames(&data, 8192, 5000, 2);
        assert_eq!(chunks.len(), 4);
        for (c, plain) in chunks.iter().zip(data.chunks(8192)) {
            let frame = &out[c.zoffset as usize..(c.zoffset + c.zsize) as usize];
            assert_eq!(frame, zstd::bulk::compress(plain, 3).unwrap());
            assert_eq!(c.digest, *blake3::hash(plain).as_bytes());
        }
        assert!(is_zero(&[0; 13]) && !is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn zero_sizes_are_refused() {
        assert!(ChunkWriter::new(Vec::new(), 0, 3, 1).is_err());
        assert!(ChunkWriter::new(Vec::new(), 4096, 3, 0).is_err());
    }
}
