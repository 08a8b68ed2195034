//! A whole NAR in memory, for tests and benchmarks: [`NarNode`], [`write_nar`], [`read_nar_tree`].
//!
//! These buffer every file's contents, so they are not for NARs from the network; the gateway
//! streams with [`NarReader`] and writes framing with [`NarWriter`].

use tokio::io::AsyncRead;

use super::{NarError, NarEvent, NarReader, NarWriter};

/// A NAR node and, for a directory, everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarNode {
    /// A regular file.
    File {
        /// Whether it is executable.
        executable: bool,
        /// Its contents.
        contents: Vec<u8>,
    },
    /// A symlink.
    Symlink {
        /// Where it points.
        target: Vec<u8>,
    },
    /// A directory: its entries, which the caller must sort strictly by name ([`write_nar`]
    /// refuses them otherwise).
    Directory(Vec<(Vec<u8>, NarNode)>),
}

/// A directory's entries, as in [`NarNode::Directory`].
type Entries = Vec<(Vec<u8>, NarNode)>;

/// Writes `node` as a whole NAR. Fails on an invalid tree: unsorted or duplicate entries, invalid
/// names or symlink targets, nesting deeper than [`MAX_DEPTH`](super::MAX_DEPTH).
pub fn write_nar(node: &NarNode) -> Result<Vec<u8>, NarError> {
    let mut writer = NarWriter::new(Vec::new())?;
    write_node(&mut writer, node)?;
    Ok(writer.finish()?)
}

/// Writes `node` (and, for a directory, everything below it) where `writer` expects a node.
pub fn write_node<W: std::io::Write>(writer: &mut NarWriter<W>, node: &NarNode) -> Result<(), NarError> {
    match node {
        NarNode::File { executable, contents } => writer.file(*executable, contents)?,
        NarNode::Symlink { target } => writer.symlink(target)?,
        NarNode::Directory(entries) => {
            writer.directory_start()?;
            for (name, node) in entries {
                writer.entry_start(name)?;
                write_node(writer, node)?;
                writer.entry_end()?;
            }
            writer.directory_end()?;
        }
    }
    Ok(())
}

/// Reads a whole NAR into memory with [`NarReader`], validating it as the reader does.
pub async fn read_nar_tree<R: AsyncRead + Unpin>(reader: R) -> Result<NarNode, NarError> {
    let mut reader = NarReader::new(reader);
    let mut buf = vec![0; 64 * 1024];
    // The open directories, innermost last: each one's name and entries so far.
    let mut open: Vec<(Option<bytes::Bytes>, Entries)> = Vec::new();
    let mut root = None;
    while let Some(event) = reader.next().await? {
        let (name, node) = match event {
            NarEvent::File { name, executable, size: _ } => {
                let mut contents = Vec::new();
                loop {
                    match reader.read_contents(&mut buf).await? {
                        0 => break,
                        n => contents.extend_from_slice(&buf[..n]),
                    }
                }
                (name, NarNode::File { executable, contents })
            }
            NarEvent::Symlink { name, target } => (name, NarNode::Symlink { target: target.into() }),
            NarEvent::Directory { name } => {
                open.push((name, Vec::new()));
                continue;
            }
            NarEvent::EndDirectory => {
                let (name, entries) = open.pop().ok_or(NarError::ReaderFailed)?;
                (name, NarNode::Directory(entries))
            }
        };
        match open.last_mut() {
            Some((_, entries)) => entries.push((name.unwrap_or_default().into(), node)),
            None => root = Some(node),
        }
    }
    root.ok_or(NarError::UnexpectedEof)
}
