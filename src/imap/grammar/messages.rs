//! `$` as the message set of FETCH, STORE, COPY, MOVE and UID EXPUNGE
//! (RFC 5182 §3).

use super::input::Parsed;
use super::{Head, Parse};
use crate::imap::state::Saved;

/// Not parsed here yet: the caller falls back (see [`super::parse`]).
pub fn parse(_head: Head<'_>, _saved: &Saved) -> Option<Parsed<Parse>> {
    None
}
