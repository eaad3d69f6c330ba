//! Coordination between the nodes of a cluster (`[cluster]`): which node trains (`lease`),
//! how the others come to serve its model (`follower`), and how its drift checks see their
//! traffic (`observations`).

pub mod follower;
pub mod lease;
pub mod observations;
