//! Small `Read` adapters that the write path stacks (STYLE.md §5), each in its
//! own file with its own tests:
//!
//! ```text
//! network body → CountReader → FrameDecoder → HashReader → LimitReader → slot
//!               (fetched bytes)  (zstd)        (BLAKE3)     (fits the slot)
//! ```
//!
//! The same stack also passes [`decode::DecodeInto`] down: the decoder then
//! writes each frame straight into the slot writer's buffer.

pub mod count;
pub mod decode;
pub mod hash;
pub mod limit;
pub mod sha256;

use std::io;

/// Finds an error of type `E` that one of these adapters put inside an
/// `io::Error`, so the caller can tell "the data is bad" from "the network
/// broke" after the error travelled up through the whole stack.
pub fn inner_error<E: std::error::Error + 'static>(err: &io::Error) -> Option<&E> {
    err.get_ref().and_then(|e| e.downcast_ref::<E>())
}
