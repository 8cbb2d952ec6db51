//! The encrypted causal operation log (DESIGN.md §4): immutable ops naming
//! their parents, deterministic total order, snapshots and garbage
//! collection. Not built yet: it is the subject of the mailbox engine issue.
