//! IMAP sessions and commands, one file per command family. Not built yet:
//! see the IMAP server issue.
