//! SEARCH, SORT and THREAD with ESEARCH/ESORT `RETURN (...)` and
//! SEARCHRES `$` (RFC 4731 §3, RFC 5267 §3.2, RFC 5182 §3).

use super::input::Parsed;
use super::{Head, Parse};
use crate::imap::state::Saved;

/// Not parsed here yet: the caller falls back (see [`super::parse`]).
pub fn parse(_head: Head<'_>, _saved: &Saved) -> Option<Parsed<Parse>> {
    None
}
