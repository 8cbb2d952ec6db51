//! LIST-EXTENDED and LIST-STATUS, CREATE-SPECIAL-USE, STATUS APPENDLIMIT,
//! MULTIAPPEND and UTF8 APPEND data (RFC 5258 §6, RFC 5819 §5, RFC 6154
//! §6, RFC 7889 §4, RFC 3502 §6.3.11, RFC 6855 §4).

use super::input::Parsed;
use super::{Head, Parse};

/// Not parsed here yet: the caller falls back (see [`super::parse`]).
pub fn parse(_head: Head<'_>) -> Option<Parsed<Parse>> {
    None
}
