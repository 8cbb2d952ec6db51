//! SEARCH evaluation (RFC 9051 §6.4.4) over a mailbox's messages.
