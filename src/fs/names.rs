//! Which object names can be file names.

/// Why a name taken from a key cannot be shown as a file name, if it cannot.
pub fn unusable_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty path segment")
    } else if name == "." || name == ".." {
        Some("'.' or '..' segment")
    } else if name.contains('\0') {
        Some("NUL byte")
    } else if name.contains('/') {
        // Only a server that ignored the delimiter sends a key deeper than its page.
        Some("'/' in a name")
    } else if name.len() > 255 {
        Some("segment longer than 255 bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(unusable_name("a b#%+é").is_none());
        for bad in ["", ".", "..", "a\0b", "a/b"] {
            assert!(unusable_name(bad).is_some());
        }
        assert!(unusable_name(&"x".repeat(256)).is_some());
        assert!(unusable_name(&"x".repeat(255)).is_none());
    }
}
