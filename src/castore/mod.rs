//! The content-addressed store: how store paths live in the backend.
//!
//! - [`digest`]: BLAKE3 digests.
//! - [`record`]: the envelope (magic, version, postcard body) of every record written.
//! - [`directory`]: nodes and canonically encoded directories.
//! - [`chunker`]: content-defined chunking of a store path's content stream.
//! - [`chunk`]: chunks at rest, and the chunk store (verified reads, a cache).
//! - [`nar_record`]: the NAR record, all it takes to render a NAR.
//! - [`lease`]: the ingest side of GC's protocol.

pub mod chunk;
pub mod chunker;
pub mod digest;
pub mod directory;
pub mod lease;
pub mod nar_record;
pub mod record;

pub use chunk::{ChunkError, ChunkStore};
pub use chunker::{ChunkerParams, ContentChunker};
pub use digest::Digest;
pub use directory::{Directory, Entry, Node};
pub use nar_record::{ChunkRef, NarRecord};
