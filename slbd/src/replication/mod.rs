//! Flow replication between the pair's two slbd (stateful failover): the ACTIVE streams its
//! flow-table changes and persistence entries to the STANDBY, which holds them so a takeover
//! keeps established connections on their real servers. `wire` is the pure frame format.

pub mod wire;
