//! Where a directory never listed before may split, guessed from its first page. S3 lists a
//! directory page after page (each page's continuation token comes with it), so the first
//! listing of 100,000 names is 100 round trips in a row. The first page's names show how
//! the names are spelled and how densely they sit: read as numbers (each position a digit
//! over the characters its class allows), the keys after the page are cut into segments
//! of about `NAMES_PER_GUESS` names, which `list_segments.rs` lists at once. A guess only
//! costs balance: a segment that holds more than a page lists on, one that holds nothing
//! costs an empty LIST, and the listing is exact either way.

use crate::store::ListPage;

/// Names a guessed segment should hold: under a page's 1,000 even where the names sit a
/// little more densely than on the first page.
const NAMES_PER_GUESS: u128 = 600;
/// Positions of a name read as a number at most: those after it count as its end.
const MAX_POSITIONS: usize = 64;

/// The characters one position of a name may hold, in byte order (`symbols_of`). A digit
/// 0 stands for the end of the name.
struct Position {
    symbols: Vec<u8>,
}

impl Position {
    fn radix(&self) -> u128 {
        self.symbols.len() as u128 + 1
    }

    fn digit(&self, byte: Option<u8>) -> u128 {
        match byte {
            None => 0,
            // The index of the greatest symbol not above it: a byte the page did not show
            // here reads as its nearest lower neighbour (only balance depends on it).
            Some(b) => self.symbols.partition_point(|s| *s <= b) as u128,
        }
    }
}

/// The symbols of a position whose characters on the page are `seen`: all digits if it
/// shows one, all letters of a case if it shows one, but only `a-f` (`A-F`) beside digits
/// when those are all it shows of that case (hexadecimal names), and the rest as seen.
fn symbols_of(seen: &[u8]) -> Vec<u8> {
    let digits = seen.iter().any(u8::is_ascii_digit);
    let mut symbols: Vec<u8> = Vec::new();
    if digits {
        symbols.extend(b'0'..=b'9');
    }
    for (letters, hex) in [(b'a'..=b'z', b'a'..=b'f'), (b'A'..=b'Z', b'A'..=b'F')] {
        let used: Vec<u8> = seen.iter().copied().filter(|b| letters.contains(b)).collect();
        if used.is_empty() {
            continue;
        }
        if digits && used.iter().all(|b| hex.contains(b)) {
            symbols.extend(hex);
        } else {
            symbols.extend(letters);
        }
    }
    symbols.extend(seen.iter().filter(|b| !b.is_ascii_alphanumeric()));
    symbols.sort_unstable();
    symbols.dedup();
    symbols
}

/// Names read as mixed-radix numbers: the positions, as many as a `u128` holds.
struct Numbering {
    positions: Vec<Position>,
}

impl Numbering {
    /// From the names of a page (relative to the directory), ASCII only.
    fn of(names: &[&[u8]]) -> Option<Numbering> {
        let longest = names.iter().map(|n| n.len()).max()?.min(MAX_POSITIONS);
        let mut positions = Vec::new();
        let mut capacity = u128::MAX;
        for i in 0..longest {
            let seen: Vec<u8> = names.iter().filter_map(|n| n.get(i).copied()).collect();
            let position = Position {
                symbols: symbols_of(&seen),
            };
            capacity /= position.radix();
            if capacity == 0 {
                break;
            }
            positions.push(position);
        }
        Some(Numbering { positions })
    }

    fn value(&self, name: &[u8]) -> u128 {
        self.positions
            .iter()
            .enumerate()
            .fold(0, |v, (i, p)| v * p.radix() + p.digit(name.get(i).copied()))
    }

    /// The name a value stands for; one whose digits end early ends there.
    fn name(&self, mut value: u128) -> Vec<u8> {
        let mut digits = vec![0; self.positions.len()];
        for (i, p) in self.positions.iter().enumerate().rev() {
            digits[i] = value % p.radix();
            value /= p.radix();
        }
        digits
            .iter()
            .zip(&self.positions)
            .map_while(|(d, p)| d.checked_sub(1).map(|d| p.symbols[d as usize]))
            .collect()
    }

    fn end(&self) -> u128 {
        self.positions.iter().fold(1u128, |n, p| n.saturating_mul(p.radix()))
    }
}

/// Up to `count` keys after `page`'s last, each about `NAMES_PER_GUESS` names further on,
/// in order: where the rest of the listing of `dir_key` may split. Empty when the page
/// gives nothing to go on (fewer than two names, or a name that is not ASCII).
pub(super) fn guess_splits(dir_key: &str, page: &ListPage, count: usize) -> Vec<String> {
    let names: Vec<&[u8]> = page
        .objects
        .iter()
        .map(|o| o.key.as_str())
        .chain(page.prefixes.iter().map(String::as_str))
        .filter_map(|k| k.strip_prefix(dir_key))
        .map(str::as_bytes)
        .collect();
    if names.len() < 2 || names.iter().any(|n| !n.is_ascii()) {
        return Vec::new();
    }
    let (Some(first), Some(last)) = (names.iter().min(), names.iter().max()) else {
        return Vec::new();
    };
    let Some(numbering) = Numbering::of(&names) else {
        return Vec::new();
    };
    let (low, high) = (numbering.value(first), numbering.value(last));
    let (span, gaps) = (high - low, names.len() as u128 - 1);
    let step = span
        .checked_mul(NAMES_PER_GUESS)
        .map_or((span / gaps).saturating_mul(NAMES_PER_GUESS), |s| s / gaps);
    if step == 0 {
        return Vec::new();
    }
    let mut splits: Vec<String> = Vec::with_capacity(count);
    let mut previous = last.to_vec();
    for k in 1..=count as u128 {
        let Some(value) = step.checked_mul(k).and_then(|d| high.checked_add(d)) else {
            break;
        };
        if value >= numbering.end() {
            break;
        }
        let name = numbering.name(value);
        // Names that end early read smaller than their value: only rising ones are kept.
        if name > previous {
            splits.push(format!("{dir_key}{}", String::from_utf8_lossy(&name)));
            previous = name;
        }
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::ROOT_INO;
    use crate::fs::listed_dir_tests::{lists_reach, mount, names_in, read_whole, store_of};
    use crate::store::memory::MemoryStore;
    use crate::store::{ObjectMeta, ObjectStore, PutOptions};
    use std::time::Duration;

    fn page(keys: impl IntoIterator<Item = String>) -> ListPage {
        ListPage {
            objects: keys
                .into_iter()
                .map(|key| ObjectMeta {
                    key,
                    size: 1,
                    etag: None,
                    last_modified: None,
                    metadata: Default::default(),
                })
                .collect(),
            ..ListPage::default()
        }
    }

    /// How many of `all` (sorted) fall in each segment the splits make after `last`.
    fn counts(all: &[String], last: &str, splits: &[String]) -> Vec<usize> {
        let mut bounds: Vec<&str> = vec![last];
        bounds.extend(splits.iter().map(String::as_str));
        bounds
            .windows(2)
            .map(|w| all.iter().filter(|k| k.as_str() > w[0] && k.as_str() <= w[1]).count())
            .collect()
    }

    #[test]
    fn numbered_names_split_into_segments_under_a_page() {
        let all: Vec<String> = (0..10_000).map(|i| format!("d/sample{i:06}.bin")).collect();
        let splits = guess_splits("d/", &page(all[..1000].to_vec()), 8);
        assert_eq!(splits.len(), 8);
        let counts = counts(&all, &all[999], &splits);
        assert!(counts.iter().all(|c| (400..1000).contains(c)), "{counts:?} {splits:?}");
    }

    #[test]
    fn sparse_ids_past_a_carry_still_split_evenly() {
        // COCO's names: twelve digits, ids spread over a wider range than their count.
        let all: Vec<String> = (0..20_000u64).map(|i| format!("d/{:012}.jpg", i * 7 + 3)).collect();
        let splits = guess_splits("d/", &page(all[..1000].to_vec()), 16);
        assert_eq!(splits.len(), 16);
        let counts = counts(&all, &all[999], &splits);
        assert!(counts.iter().all(|c| (400..1000).contains(c)), "{counts:?}");
    }

    #[test]
    fn hashed_names_split_evenly() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut all: Vec<String> = (0..20_000).map(|_| format!("d/{:016x}", rng.u64(..))).collect();
        all.sort();
        let splits = guess_splits("d/", &page(all[..1000].to_vec()), 16);
        let counts = counts(&all, &all[999], &splits);
        assert_eq!(counts.len(), 16);
        assert!(counts.iter().all(|c| (250..1000).contains(c)), "{counts:?}");
    }

    #[test]
    fn splits_rise_after_the_last_name_and_stay_in_the_directory() {
        let names = ["d/b", "d/img10.png", "d/img2.png", "d/x-y", "d/zz"];
        let splits = guess_splits("d/", &page(names.iter().map(|s| s.to_string())), 32);
        assert!(splits.windows(2).all(|w| w[0] < w[1]), "{splits:?}");
        assert!(
            splits.iter().all(|s| s.as_str() > "d/zz" && s.starts_with("d/")),
            "{splits:?}"
        );
    }

    #[test]
    fn no_guess_without_a_spread_of_ascii_names() {
        assert!(guess_splits("d/", &page(["d/a".to_string()]), 8).is_empty());
        let unicode = ["d/a".to_string(), "d/é".to_string()];
        assert!(guess_splits("d/", &page(unicode), 8).is_empty());
        assert!(guess_splits("d/", &ListPage::default(), 8).is_empty());
    }

    /// A mount's readdir of `d/`, whose names after `.` and `..`.
    async fn names_listed(store: &std::sync::Arc<MemoryStore>) -> Vec<String> {
        let cache = tempfile::tempdir().expect("temp dir");
        let fs = mount(store, cache.path(), Duration::from_secs(60), false);
        let dir = fs.lookup(ROOT_INO, "d").await.expect("d").ino;
        let entries = read_whole(&fs, dir).await;
        entries.into_iter().skip(2).map(|e| e.name).collect()
    }

    /// A directory no mount has listed: once a page reaches past what the tree knows of
    /// it, the readdir's listing goes on in guessed segments at once, and shows every name
    /// once, in order.
    #[tokio::test]
    async fn a_first_listing_goes_on_in_guessed_segments_at_once() {
        let store = store_of(10_000).await;
        let cache = tempfile::tempdir().expect("temp dir");
        let fs = mount(&store, cache.path(), Duration::from_secs(60), false);
        let dir = fs.lookup(ROOT_INO, "d").await.expect("d").ino;
        // The lookup's listing of the root prefetches `d`'s first page.
        let lists = lists_reach(&store, 3).await;
        let gate = store.hold_lists();
        let readdir = tokio::spawn({
            let fs = fs.clone();
            async move { read_whole(&fs, dir).await }
        });
        // The first 1,000 names split the listing once, the segment to the end guesses.
        assert_eq!(lists_reach(&store, lists + 2).await, lists + 2);
        gate.add_permits(2);
        // Four guessed segments and the one to the end at once (one LIST without the
        // guesses: the next page).
        assert_eq!(lists_reach(&store, lists + 7).await, lists + 7);
        gate.close();
        let names: Vec<String> = readdir
            .await
            .expect("readdir")
            .into_iter()
            .skip(2)
            .map(|e| e.name)
            .collect();
        assert_eq!(names, names_in(&store), "every entry once, in order");
        let sent = store.requests("list") - lists;
        assert!(sent <= 25, "{sent} LISTs for 10 pages");
    }

    /// Names of every shape (numbered, hashed, of different lengths, not ASCII, and
    /// subdirectories) are listed exactly, whatever the guesses.
    #[tokio::test]
    async fn a_listing_in_guessed_segments_is_exact_whatever_the_names() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let mut rng = fastrand::Rng::with_seed(11);
        let mut keys: Vec<String> = Vec::new();
        keys.extend((0..1_500).map(|i| format!("d/img{i}.png")));
        keys.extend((0..1_500).map(|_| format!("d/{:x}", rng.u64(..))));
        keys.extend((0..300).map(|i| format!("d/sub{i:03}/inner")));
        keys.extend((0..200).map(|i| format!("d/z\u{e9}t\u{e9}{i}")));
        keys.extend((0..50).map(|i| format!("d/Z{i:04}")));
        for key in &keys {
            store
                .put(key, vec![1].into(), &PutOptions::default())
                .await
                .expect("put");
        }
        assert_eq!(names_listed(&store).await, names_in(&store));
    }

    /// A listing of several pages leaves the HEADs of its files to their lookups (they are
    /// read with their data) even on a page of a few files, as a guessed segment's.
    #[tokio::test]
    async fn a_short_page_of_a_large_directory_heads_nothing() {
        let store = std::sync::Arc::new(MemoryStore::new());
        for i in 0..2_470 {
            let key = format!("d/f{i:05}");
            store
                .put(&key, vec![1; 5_000].into(), &PutOptions::default())
                .await
                .expect("put");
        }
        let cache = tempfile::tempdir().expect("temp dir");
        let fs = mount(&store, cache.path(), Duration::from_secs(60), false);
        let dir = fs.lookup(ROOT_INO, "d").await.expect("d").ino;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let heads = store.requests("head");
        assert_eq!(read_whole(&fs, dir).await.len(), 2_472);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.requests("head"), heads, "HEADs for a short page");
    }
}
