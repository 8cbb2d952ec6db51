//! What this server advertises (RFC 9051 §6.1.1). Every name here is
//! implemented; a test sends each extension's commands.

/// Largest message APPEND accepts is advertised as `APPENDLIMIT=`.
pub fn list(
    authenticated: bool,
    tls: bool,
    login_allowed: bool,
    starttls: bool,
    append_limit: u32,
) -> String {
    let mut caps = vec![
        "IMAP4rev1",
        "IMAP4rev2",
        "LITERAL+",
        "SASL-IR",
        "ID",
        "ENABLE",
    ];
    if authenticated {
        caps.extend([
            "IDLE",
            "CONDSTORE",
            "QRESYNC",
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "ESEARCH",
            "SEARCHRES",
            "SORT",
            "SORT=DISPLAY",
            "ESORT",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "MULTIAPPEND",
            "STATUS=SIZE",
            "BINARY",
            "UTF8=ACCEPT",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "QUOTA=RES-MESSAGE",
            "COMPRESS=DEFLATE",
        ]);
        let mut out = caps.join(" ");
        out.push_str(&format!(" APPENDLIMIT={append_limit}"));
        return out;
    }
    if starttls && !tls {
        caps.push("STARTTLS");
    }
    if login_allowed {
        caps.extend(["AUTH=PLAIN", "AUTH=LOGIN"]);
    } else {
        caps.push("LOGINDISABLED");
    }
    caps.join(" ")
}
