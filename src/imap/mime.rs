//! MIME views of stored message summaries for FETCH: ENVELOPE,
//! BODYSTRUCTURE, BODY[section] and BINARY[section].
