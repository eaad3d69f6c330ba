//! What every actor runs on: panic containment and fault hooks, the shutdown state, background
//! threads at a lower priority, and systemd's notify protocol.

pub mod background;
pub mod containment;
pub mod shutdown;
pub mod systemd;
