//! What a file's bytes are, whatever its name or declared type says: the upload allow-list is
//! checked against the content (magic numbers), so a renamed executable is refused.

/// Content types users may upload.
pub const ALLOWED: &[&str] = &["application/pdf", "image/png", "image/jpeg", "text/plain"];

/// The content type the bytes show, among [`ALLOWED`]; `None` for anything else (executables,
/// archives, binary data, empty files).
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if !bytes.is_empty() && is_text(bytes) {
        Some("text/plain")
    } else {
        None
    }
}

/// UTF-8 without NUL or control characters other than tab, line feed, carriage return, form
/// feed.
fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| {
        s.chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\u{c}'))
    })
}

/// The declared `Content-Type` without parameters, lower-cased (`text/plain; charset=utf-8` →
/// `text/plain`).
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_formats_are_recognised_by_their_bytes() {
        assert_eq!(sniff(b"%PDF-1.7\n..."), Some("application/pdf"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff("héllo\nworld\t!".as_bytes()), Some("text/plain"));
    }

    #[test]
    fn executables_binaries_and_empty_files_are_not() {
        assert_eq!(sniff(b"\x7fELF\x02\x01\x01"), None);
        assert_eq!(sniff(b"MZ\x90\x00\x03"), None);
        assert_eq!(sniff(b"PK\x03\x04"), None);
        assert_eq!(sniff(b"text with a \0 NUL"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn declared_types_lose_their_parameters() {
        assert_eq!(essence("Text/Plain; charset=utf-8"), "text/plain");
    }
}
