//! Multi-process tests of whole PigeonAir clusters. Replication (Raft) comes with the
//! cluster issue; until then these start one real node process and check what a
//! cluster operator relies on from every node.

mod single_node;
