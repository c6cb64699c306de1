//! zstd decompression that knows where frames end.
//!
//! A bundle image is a sequence of independent zstd frames (docs/bundle.md).
//! A frame end is a point where the compressed and the uncompressed streams
//! line up, so a broken download can resume there with an HTTP Range request
//! and a fresh decoder. `read` therefore never returns bytes of two frames at
//! once, and [`FrameDecoder::boundary`] says whether the output so far ends
//! exactly at a frame end, and where that is in the compressed stream.
//!
//! [`FrameDecoder::decode_into`] decodes a frame straight into the caller's
//! buffer when the frame's header gives its size and it fits there (zstd's
//! stable output buffer): the buffer is then the decoder's window, and the
//! decoder allocates none of its own (up to 8 MiB for a 4 MiB chunk's frame,
//! plus a copy of every byte out of it). Other frames go through the
//! decoder's window as with `read`.

use super::sha256::Sha256State;
use std::io::{self, Read};
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer};

/// Largest window a frame may ask for: 8 MiB (`zstd -19` needs no more). It
/// bounds the decoder's memory whatever the input says; `--long` images are
/// refused with an error naming the limit.
pub const WINDOW_LOG_MAX: u32 = 23;

/// The compressed stream is not valid zstd (or needs a larger window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// Compressed offset where decoding failed (within a frame starting earlier).
    pub offset: u64,
    pub reason: &'static str,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid zstd data near compressed byte {}: {}",
            self.offset, self.reason
        )
    }
}

impl std::error::Error for Corrupt {}

/// The compressed stream ended inside a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub offset: u64,
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "compressed stream ends inside a zstd frame at byte {}",
            self.offset
        )
    }
}

impl std::error::Error for Truncated {}

pub struct FrameDecoder<R> {
    inner: R,
    dctx: DCtx<'static>,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Compressed bytes consumed by the decoder, counted from the start of the
    /// whole compressed stream (the decoder may start at an offset).
    zpos: u64,
    in_frame: bool,
    /// SHA-256 of the compressed bytes the decoder has consumed (not merely
    /// read ahead), so at a frame boundary it covers exactly `..zpos`.
    zhash: Option<Sha256State>,
    /// The decoder is set up for a stable output buffer (the current or the
    /// last frame was decoded straight into the caller's buffer).
    stable: bool,
}

/// Decoding into a caller's buffer that holds the current frame so far
/// (the stack of adapters passes it down to [`FrameDecoder`]).
pub trait DecodeInto {
    /// Decodes into `out[pos..]`; `out[..pos]` is what the current frame has
    /// decoded so far (`pos` may be above 0 at a frame start). Within a
    /// frame, call with the same `out` and `pos` advanced by what each call
    /// returned. `Ok(0)`: the end of the stream.
    fn decode_into(&mut self, out: &mut [u8], pos: usize) -> io::Result<usize>;
}

impl<R: Read> FrameDecoder<R> {
    /// Decodes `inner`, which starts at compressed offset `zpos` (a frame start).
    pub fn new(inner: R, zpos: u64) -> io::Result<Self> {
        let mut dctx =
            DCtx::try_create().ok_or_else(|| io::Error::other("cannot allocate a zstd decoder"))?;
        dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .map_err(|c| io::Error::other(zstd_safe::get_error_name(c)))?;
        Ok(FrameDecoder {
            inner,
            dctx,
            input: vec![0; DCtx::in_size()].into_boxed_slice(),
            start: 0,
            end: 0,
            zpos,
            in_frame: false,
            zhash: None,
            stable: false,
        })
    }

    /// Also hashes the compressed stream (an OCI layer is addressed by its
    /// SHA-256), continuing `state`: the hash of everything before `zpos`.
    pub fn hash_input(mut self, state: Option<Sha256State>) -> Self {
        self.zhash = state;
        self
    }

    /// The compressed-stream hash so far (see [`FrameDecoder::hash_input`]).
    pub fn input_hash(&self) -> Option<&Sha256State> {
        self.zhash.as_ref()
    }

    /// `Some(compressed offset)` when everything returned so far ends at a
    /// frame end; `None` inside a frame.
    pub fn boundary(&self) -> Option<u64> {
        (!self.in_frame).then_some(self.zpos)
    }

    /// Reads more compressed input; `false` at the end of the stream.
    fn refill(&mut self) -> io::Result<bool> {
        let n = self.inner.read(&mut self.input)?;
        (self.start, self.end) = (0, n);
        Ok(n > 0)
    }

    /// At a frame start: the frame's decompressed size from its header, when
    /// the header says it (reads on until the header is in the buffer).
    fn next_frame_size(&mut self) -> io::Result<Option<u64>> {
        let header = zstd_safe::FRAMEHEADERSIZE_MAX as usize;
        while self.end - self.start < header {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            let n = self.inner.read(&mut self.input[self.end..])?;
            if n == 0 {
                break;
            }
            self.end += n;
        }
        Ok(zstd_safe::get_frame_content_size(&self.input[self.start..self.end]).unwrap_or(None))
    }

    /// Sets the decoder up for the next frame, stable output or not.
    fn set_stable(&mut self, stable: bool) -> io::Result<()> {
        if stable != self.stable {
            let setting = |c| io::Error::other(zstd_safe::get_error_name(c));
            self.dctx
                .reset(zstd_safe::ResetDirective::SessionOnly)
                .map_err(setting)?;
            self.dctx
                .set_parameter(DParameter::StableOutBuffer(stable))
                .map_err(setting)?;
            self.stable = stable;
        }
        Ok(())
    }

    /// Decodes from the stream into `output` until it produced something,
    /// without passing a frame end; `Ok(0)` at the end of the stream.
    /// Returns inside a frame only with more input at hand (or at the end of
    /// the stream), so a frame's end is never left for the next call to
    /// pass over unseen.
    fn fill(&mut self, output: &mut OutBuffer<'_, [u8]>) -> io::Result<usize> {
        let mut produced = 0;
        loop {
            if self.start == self.end && !self.refill()? {
                if self.in_frame && produced == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        Truncated { offset: self.zpos },
                    ));
                }
                return Ok(produced);
            }
            produced += self.step(output)?;
            if produced > 0 && (!self.in_frame || self.start < self.end) {
                return Ok(produced);
            }
        }
    }

    /// One call of the decoder on the input at hand.
    fn step(&mut self, output: &mut OutBuffer<'_, [u8]>) -> io::Result<usize> {
        let before = output.pos();
        let mut input = InBuffer::around(&self.input[self.start..self.end]);
        let hint = self
            .dctx
            .decompress_stream(output, &mut input)
            .map_err(|code| {
                let reason = zstd_safe::get_error_name(code);
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    Corrupt {
                        offset: self.zpos,
                        reason,
                    },
                )
            })?;
        let consumed = input.pos();
        if let Some(h) = &mut self.zhash {
            h.update(&self.input[self.start..self.start + consumed]);
        }
        self.start += consumed;
        self.zpos += consumed as u64;
        // zstd stops at the end of each frame and returns 0 once the frame
        // is fully flushed, so a 0 here is exactly a frame end.
        self.in_frame = hint != 0;
        Ok(output.pos() - before)
    }
}

impl<R: Read> DecodeInto for FrameDecoder<R> {
    fn decode_into(&mut self, out: &mut [u8], pos: usize) -> io::Result<usize> {
        if !self.in_frame {
            let room = (out.len() - pos) as u64;
            let fits = self.next_frame_size()?.is_some_and(|n| n <= room);
            self.set_stable(fits)?;
        }
        if !self.stable {
            return self.read(&mut out[pos..]);
        }
        self.fill(&mut OutBuffer::around_pos(out, pos))
    }
}

impl<R: Read> Read for FrameDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.in_frame {
            self.set_stable(false)?;
        }
        self.fill(&mut OutBuffer::around(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::inner_error;
    use sha2::Digest as _;

    fn frames(parts: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut z = Vec::new();
        let mut ends = Vec::new();
        for p in parts {
            z.extend(zstd::bulk::compress(p, 3).unwrap());
            ends.push(z.len() as u64);
        }
        (z, ends)
    }

    /// Reads everything, recording (uncompressed, compressed) at each boundary.
    fn boundaries<R: Read>(d: &mut FrameDecoder<R>, buf_size: usize) -> (Vec<u8>, Vec<(u64, u64)>) {
        let (mut out, mut seen) = (Vec::new(), Vec::new());
        let mut buf = vec![0; buf_size];
        loop {
            let n = d.read(&mut buf).unwrap();
            if n == 0 {
                return (out, seen);
            }
            out.extend_from_slice(&buf[..n]);
            if let Some(z) = d.boundary() {
                seen.push((out.len() as u64, z));
            }
        }
    }

    #[test]
    fn reports_every_frame_end_with_small_and_large_buffers() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let b = vec![9u8; 70_000];
        let (z, ends) = frames(&[&a, &b, b"tail"]);
        for buf_size in [1000, 1 << 20] {
            let (out, seen) = boundaries(&mut FrameDecoder::new(&z[..], 0).unwrap(), buf_size);
            assert_eq!(out, [&a[..], &b[..], b"tail"].concat());
            let want = vec![(300_000, ends[0]), (370_000, ends[1]), (370_004, ends[2])];
            assert_eq!(seen, want, "buffer {buf_size}");
        }
    }

    #[test]
    fn hashes_exactly_the_consumed_input_up_to_each_boundary() {
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let (z, ends) = frames(&[&a, b"second", b"third"]);
        let mut d = FrameDecoder::new(&z[..], 0)
            .unwrap()
            .hash_input(Some(Sha256State::new()));
        let mut buf = vec![0; 4096];
        let mut at_first = None;
        while d.read(&mut buf).unwrap() > 0 {
            if d.boundary() == Some(ends[0]) && at_first.is_none() {
                at_first = d.input_hash().cloned();
            }
        }
        let first = at_first.expect("saw the first boundary");
        let sha = |b: &[u8]| -> [u8; 32] { sha2::Sha256::digest(b).into() };
        assert_eq!(first.clone().finalize(), sha(&z[..ends[0] as usize]));
        assert_eq!(d.input_hash().unwrap().clone().finalize(), sha(&z));
        // Resuming at the first boundary with the saved state gives the same hash.
        let mut r = FrameDecoder::new(&z[ends[0] as usize..], ends[0])
            .unwrap()
            .hash_input(Some(first));
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.input_hash().unwrap().clone().finalize(), sha(&z));
    }

    /// A source that hands out one byte per read: every frame end, and the
    /// checksum after a frame's last block, arrives in a read of its own.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Decodes everything with `decode_into` the way the writer's blocks
    /// take it: each frame starts a fresh block of `block` bytes (a full
    /// block moves on to the next); returns the output, (uncompressed,
    /// compressed) at each boundary, and the decoder's largest size.
    fn decode_blocks<R: Read>(
        d: &mut FrameDecoder<R>,
        block: usize,
    ) -> (Vec<u8>, Vec<(u64, u64)>, usize) {
        let (mut out, mut seen, mut largest) = (Vec::new(), Vec::new(), 0);
        let mut buf = vec![0u8; block];
        let mut len = 0;
        loop {
            let n = d.decode_into(&mut buf, len).unwrap();
            largest = largest.max(d.dctx.sizeof());
            if n == 0 {
                return (out, seen, largest);
            }
            out.extend_from_slice(&buf[len..len + n]);
            len += n;
            if let Some(z) = d.boundary() {
                seen.push((out.len() as u64, z));
                len = 0;
            } else if len == block {
                len = 0;
            }
        }
    }

    #[test]
    fn a_frame_that_fits_decodes_into_the_buffer_without_a_window_of_its_own() {
        // Incompressible, so no frame is whole in the decoder's input buffer
        // (zstd then decodes a frame in one go without its window).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let a: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let b: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
        let (z, ends) = frames(&[&a, &b]);
        let (out, seen, largest) =
            decode_blocks(&mut FrameDecoder::new(&z[..], 0).unwrap(), 4 << 20);
        assert_eq!(out, [&a[..], &b[..]].concat());
        assert_eq!(seen, vec![(4 << 20, ends[0]), (4_494_304, ends[1])]);
        assert!(largest < 1 << 20, "decoder grew to {largest} bytes");
        // Through `read`, the same frames need the decoder's own window.
        let mut d = FrameDecoder::new(&z[..], 0).unwrap();
        io::copy(&mut d, &mut io::sink()).unwrap();
        assert!(d.dctx.sizeof() > 2 << 20, "{}", d.dctx.sizeof());
    }

    #[test]
    fn frames_of_unknown_size_or_larger_than_the_buffer_go_through_the_window() {
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 199) as u8).collect();
        let small = vec![3u8; 50_000];
        // A frame without its size in the header (as `zstd` writes from a pipe).
        let mut unknown = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut unknown, 3).unwrap();
        io::Write::write_all(&mut enc, &small).unwrap();
        enc.finish().unwrap();
        let (mut z, _) = frames(&[&big, &small]);
        z.extend_from_slice(&unknown);
        let (z2, _) = frames(&[&small]);
        z.extend_from_slice(&z2);
        let want = [&big[..], &small[..], &small[..], &small[..]].concat();
        for block in [64 << 10, 1 << 20] {
            let (out, seen, _) = decode_blocks(&mut FrameDecoder::new(&z[..], 0).unwrap(), block);
            assert_eq!(out, want, "block {block}");
            let at: Vec<u64> = seen.iter().map(|s| s.0).collect();
            assert_eq!(
                at,
                vec![1_000_000, 1_050_000, 1_100_000, 1_150_000],
                "block {block}"
            );
        }
    }

    #[test]
    fn a_frame_end_is_reported_when_the_input_arrives_a_byte_at_a_time() {
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 97) as u8).collect();
        // With a checksum: 4 bytes after the last block that produce nothing.
        let frame = |data: &[u8]| {
            let mut c = zstd::bulk::Compressor::new(3).unwrap();
            c.include_checksum(true).unwrap();
            c.compress(data).unwrap()
        };
        let (fa, fb) = (frame(&a), frame(b"second"));
        let z = [&fa[..], &fb[..], &fa[..]].concat();
        let (za, zb) = (fa.len() as u64, fb.len() as u64);
        let want = vec![(100_000, za), (100_006, za + zb), (200_006, 2 * za + zb)];
        let (out, seen, _) =
            decode_blocks(&mut FrameDecoder::new(Trickle(&z), 0).unwrap(), 1 << 20);
        assert_eq!(out, [&a[..], b"second", &a[..]].concat());
        assert_eq!(seen, want);
        let (out, seen) = boundaries(&mut FrameDecoder::new(Trickle(&z), 0).unwrap(), 4096);
        assert_eq!(out, [&a[..], b"second", &a[..]].concat());
        assert_eq!(seen, want);
    }

    #[test]
    fn starts_mid_stream_at_a_frame_offset() {
        let (z, ends) = frames(&[b"first frame", b"second frame"]);
        let mut d = FrameDecoder::new(&z[ends[0] as usize..], ends[0]).unwrap();
        let (out, seen) = boundaries(&mut d, 64);
        assert_eq!((out, seen), (b"second frame".to_vec(), vec![(12, ends[1])]));
    }

    #[test]
    fn truncation_inside_a_frame_and_garbage_are_typed_errors() {
        let data = vec![5u8; 100_000];
        let (z, _) = frames(&[&data]);
        let mut out = Vec::new();
        let err = FrameDecoder::new(&z[..z.len() - 3], 0)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(inner_error::<Truncated>(&err).is_some(), "{err}");
        let mut bad = z.clone();
        bad.extend_from_slice(b"not zstd at all");
        let err = FrameDecoder::new(&bad[..], 0)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        let corrupt = inner_error::<Corrupt>(&err).expect("corrupt");
        assert_eq!(corrupt.offset, z.len() as u64);
    }

    #[test]
    fn a_window_beyond_the_limit_is_refused() {
        // Unknown content size, so the frame header carries the large window.
        let mut z = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut z, 3).unwrap();
        enc.set_parameter(zstd_safe::CParameter::WindowLog(WINDOW_LOG_MAX + 2))
            .unwrap();
        io::Write::write_all(&mut enc, &vec![1u8; 1 << 20]).unwrap();
        enc.finish().unwrap();
        let mut out = Vec::new();
        let err = FrameDecoder::new(&z[..], 0)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(inner_error::<Corrupt>(&err).is_some(), "{err}");
    }
}
