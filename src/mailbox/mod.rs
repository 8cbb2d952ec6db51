//! Pure mailbox state (UIDs, flags, MODSEQ), message summaries, the mailbox
//! list and the incoming queue. Not built yet: it is the subject of the
//! mailbox engine issue.
