//! LMTP sessions and delivery into the incoming queue. Not built yet: see the
//! LMTP delivery issue.
