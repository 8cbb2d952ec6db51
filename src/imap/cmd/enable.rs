//! ENABLE (RFC 5161 §3.1) of IMAP4rev2 (RFC 9051 §6.3.1), CONDSTORE and
//! QRESYNC (RFC 7162 §3.1, §3.2.3) and UTF8=ACCEPT (RFC 6855 §3).

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;

use crate::imap::response::{Done, Out, Outcome};
use crate::imap::state::{Authed, Selected};

/// Turns on what the client names and Facteur offers, once each, and
/// answers `ENABLED` with what changed.
pub fn enable(
    authed: &mut Authed,
    mut selected: Option<&mut Selected>,
    capabilities: &Vec1<CapabilityEnable<'_>>,
    out: &mut Out<'_>,
) -> Outcome {
    let mut enabled = Vec::new();
    for c in capabilities.as_ref() {
        let name = c.to_string().to_ascii_uppercase();
        match name.as_str() {
            "IMAP4REV2" if !authed.enabled.rev2 => {
                authed.enabled.rev2 = true;
                authed.enabled.utf8 = true;
                if let Some(s) = selected.as_mut() {
                    s.drop_recent();
                }
                enabled.push("IMAP4rev2");
            }
            "CONDSTORE" if !authed.enabled.condstore => {
                authed.enable_condstore(selected.as_deref(), out);
                enabled.push("CONDSTORE");
            }
            "QRESYNC" if !authed.enabled.qresync => {
                // RFC 7162 §3.2.3: implies CONDSTORE.
                authed.enabled.qresync = true;
                authed.enable_condstore(selected.as_deref(), out);
                enabled.push("QRESYNC");
            }
            "UTF8=ACCEPT" if !authed.enabled.utf8 || authed.enabled.rev2 => {
                authed.enabled.utf8 = true;
                enabled.push("UTF8=ACCEPT");
            }
            _ => {}
        }
    }
    out.untagged(format!("ENABLED {}", enabled.join(" ")).trim_end());
    Done::ok("ENABLE completed")
}
