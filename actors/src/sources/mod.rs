//! Where batches of texts come from. `file`: CSV files dropped into the watched inbox.

pub mod file;
