//! Coordination between the nodes of a cluster (`[cluster]`): which node trains.

pub mod lease;
