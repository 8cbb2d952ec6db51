//! An unlocked user: keys and open mailboxes shared by all of that user's
//! sessions on one instance. Not built yet: see the mailbox engine issue.
