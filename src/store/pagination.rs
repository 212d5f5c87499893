//! Following a listing's continuation tokens without trusting the server to end it: a
//! server that keeps answering empty pages with fresh tokens, or hands back a token it
//! gave before, would otherwise keep a directory read (and its caller) going forever.

use super::{ListPage, StoreError, StoreResult};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Empty pages in a row that end a listing with an error. S3 may answer an empty page
/// with a token now and then (keys deleted under it); never a hundred in a row.
pub const MAX_EMPTY_PAGES: u32 = 100;

#[derive(Default)]
pub struct Pagination {
    /// Hashes of the tokens followed so far (a 64-bit hash each, however long the token).
    seen: HashSet<u64>,
    empty_in_a_row: u32,
}

impl Pagination {
    /// The token of the page after `page`, `None` at the end, or an error when the server
    /// is going round in circles.
    pub fn next(&mut self, prefix: &str, page: &ListPage) -> StoreResult<Option<String>> {
        let Some(token) = &page.next else {
            return Ok(None);
        };
        if page.objects.is_empty() && page.prefixes.is_empty() {
            self.empty_in_a_row += 1;
        } else {
            self.empty_in_a_row = 0;
        }
        if self.empty_in_a_row >= MAX_EMPTY_PAGES {
            return Err(StoreError::Other(format!(
                "listing {prefix:?}: the server sent {MAX_EMPTY_PAGES} empty pages in a row, \
                 each with a new continuation token; giving up"
            )));
        }
        let mut h = DefaultHasher::new();
        token.hash(&mut h);
        if !self.seen.insert(h.finish()) {
            return Err(StoreError::Other(format!(
                "listing {prefix:?}: the server sent a continuation token it had sent before; giving up"
            )));
        }
        Ok(Some(token.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(entries: usize, next: Option<&str>) -> ListPage {
        ListPage {
            objects: Vec::new(),
            prefixes: (0..entries).map(|i| format!("p{i}/")).collect(),
            next: next.map(str::to_string),
        }
    }

    #[test]
    fn a_listing_ends_at_the_last_page() {
        let mut p = Pagination::default();
        assert_eq!(p.next("", &page(3, Some("a"))), Ok(Some("a".into())));
        assert_eq!(p.next("", &page(0, Some("b"))), Ok(Some("b".into())));
        assert_eq!(p.next("", &page(3, None)), Ok(None));
    }

    #[test]
    fn endless_empty_pages_are_refused() {
        let mut p = Pagination::default();
        let mut followed = 0;
        let refused = (0..10_000).find_map(|i| match p.next("d/", &page(0, Some(&format!("t{i}")))) {
            Ok(_) => {
                followed += 1;
                None
            }
            Err(e) => Some(e),
        });
        assert!(refused.is_some_and(|e| e.to_string().contains("empty pages")));
        assert_eq!(followed, MAX_EMPTY_PAGES - 1);
    }

    #[test]
    fn a_token_seen_before_is_refused() {
        let mut p = Pagination::default();
        assert!(p.next("", &page(1, Some("a"))).is_ok());
        assert!(p.next("", &page(1, Some("b"))).is_ok());
        assert!(p.next("", &page(1, Some("a"))).is_err());
    }
}
