//! The listing algorithm shared by ListObjects and ListObjectsV2: walk the sorted key
//! space under a prefix, roll keys up to common prefixes at the delimiter, and page.

use std::collections::BTreeMap;
use std::ops::Bound;

#[derive(Debug)]
pub(crate) struct ListQuery<'a> {
    pub(crate) prefix: &'a str,
    /// `None` (or empty) lists every key under the prefix individually.
    pub(crate) delimiter: Option<&'a str>,
    /// Only entries (keys or common prefixes) sorting after this are listed.
    pub(crate) after: Option<&'a str>,
    pub(crate) max_keys: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry<'a, V> {
    Object(&'a str, &'a V),
    CommonPrefix(&'a str),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ListPage<'a, V> {
    pub(crate) entries: Vec<Entry<'a, V>>,
    /// Set when more entries follow: the name of the last entry listed, from which the
    /// next page resumes.
    pub(crate) resume_after: Option<String>,
}

pub(crate) fn list<'a, V>(objects: &'a BTreeMap<String, V>, query: &ListQuery<'_>) -> ListPage<'a, V> {
    let delimiter = query.delimiter.filter(|delimiter| !delimiter.is_empty());
    let start = match query.after {
        Some(after) if after >= query.prefix => Bound::Excluded(after),
        _ => Bound::Included(query.prefix),
    };
    let mut entries: Vec<Entry<'a, V>> = Vec::new();
    let mut last_name: Option<&'a str> = None;
    for (key, value) in objects.range::<str, _>((start, Bound::Unbounded)) {
        if !key.starts_with(query.prefix) {
            break;
        }
        let rolled_up = delimiter.and_then(|delimiter| {
            let rest = &key[query.prefix.len()..];
            rest.find(delimiter)
                .map(|at| &key[..query.prefix.len() + at + delimiter.len()])
        });
        let name = rolled_up.unwrap_or(key);
        // Keys under a common prefix already listed (on this page or, via `after`, on
        // an earlier one) are represented by it.
        if last_name == Some(name) || query.after.is_some_and(|after| name <= after) {
            continue;
        }
        if entries.len() == query.max_keys {
            return ListPage {
                entries,
                resume_after: last_name.map(str::to_owned),
            };
        }
        entries.push(match rolled_up {
            Some(common_prefix) => Entry::CommonPrefix(common_prefix),
            None => Entry::Object(key, value),
        });
        last_name = Some(name);
    }
    ListPage {
        entries,
        resume_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(keys: &[&str]) -> BTreeMap<String, ()> {
        keys.iter().map(|key| ((*key).to_owned(), ())).collect()
    }

    fn names<'a>(page: &ListPage<'a, ()>) -> Vec<&'a str> {
        page.entries
            .iter()
            .map(|entry| match entry {
                Entry::Object(key, ()) => *key,
                Entry::CommonPrefix(prefix) => *prefix,
            })
            .collect()
    }

    fn query<'a>(
        prefix: &'a str,
        delimiter: Option<&'a str>,
        after: Option<&'a str>,
        max_keys: usize,
    ) -> ListQuery<'a> {
        ListQuery {
            prefix,
            delimiter,
            after,
            max_keys,
        }
    }

    #[test]
    fn flat_keys_and_markers_coexist() {
        let objects = store(&["a", "a/b", "a/c/d", "b", "d/"]);
        let page = list(&objects, &query("", Some("/"), None, 1000));
        assert_eq!(names(&page), ["a", "a/", "b", "d/"]);
        assert!(matches!(page.entries[3], Entry::CommonPrefix("d/")));
        assert_eq!(page.resume_after, None);

        let page = list(&objects, &query("a/", Some("/"), None, 1000));
        assert_eq!(names(&page), ["a/b", "a/c/"]);
        let page = list(&objects, &query("d/", Some("/"), None, 1000));
        assert_eq!(names(&page), ["d/"]);
        assert!(matches!(page.entries[0], Entry::Object("d/", ())));
    }

    #[test]
    fn pages_resume_after_common_prefixes_without_repeating_them() {
        let objects = store(&["a/1", "a/2", "b/1", "c", "d/1"]);
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let page = list(&objects, &query("", Some("/"), after.as_deref(), 1));
            pages.push(names(&page).join(","));
            match page.resume_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, ["a/", "b/", "c", "d/"]);
    }

    #[test]
    fn without_delimiter_everything_under_the_prefix_is_listed() {
        let objects = store(&["p", "p/x", "p/y/z", "q"]);
        let page = list(&objects, &query("p/", None, None, 2));
        assert_eq!(names(&page), ["p/x", "p/y/z"]);
        assert_eq!(page.resume_after, None);
        let page = list(&objects, &query("", None, Some("p"), 2));
        assert_eq!(names(&page), ["p/x", "p/y/z"]);
        assert_eq!(page.resume_after.as_deref(), Some("p/y/z"));
    }

    #[test]
    fn zero_max_keys_lists_nothing() {
        let objects = store(&["a"]);
        let page = list(&objects, &query("", None, None, 0));
        assert!(page.entries.is_empty());
    }
}
