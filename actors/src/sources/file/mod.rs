//! The watched folder: the watcher notices files, the processor claims each into
//! `processing/` (claim), records it in the journal, streams it through scoring in chunks
//! (stream) and writes outputs under names no other batch takes (names).

pub mod claim;
pub mod journal;
pub mod names;
pub mod processor;
pub mod stream;
pub mod watcher;
