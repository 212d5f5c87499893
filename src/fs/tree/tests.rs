use super::*;
use std::time::Duration;

fn defaults() -> Defaults {
    Defaults {
        uid: 0,
        gid: 0,
        file_mode: 0o644,
        dir_mode: 0o755,
        keep_special_modes: false,
    }
}

fn seen(name: &str, kind: Kind) -> Seen {
    Seen {
        name: name.into(),
        kind,
        size: 1,
        mtime: SystemTime::UNIX_EPOCH,
        etag: Some("e".into()),
    }
}

#[test]
fn inodes_are_stable_and_dirs_win_over_files() {
    let mut t = Tree::new("p/", defaults());
    let later = Instant::now() + Duration::from_secs(5);
    let f = t.upsert(ROOT_INO, &seen("a", Kind::File), later).unwrap();
    let d = t.upsert(ROOT_INO, &seen("a", Kind::Dir), later).unwrap();
    assert_ne!(f, d);
    assert_eq!(t.get(d).unwrap().key, "p/a/");
    assert_eq!(t.upsert(ROOT_INO, &seen("a", Kind::File), later), Some(f));
    assert_eq!(t.cached_lookup(ROOT_INO, "a", Instant::now()), Some(Some(d)));
    assert_eq!(t.upsert(ROOT_INO, &seen("a", Kind::Dir), later), Some(d));
}

#[test]
fn moving_a_directory_rekeys_its_descendants() {
    let mut t = Tree::new("", defaults());
    let later = Instant::now() + Duration::from_secs(5);
    let d = t.upsert(ROOT_INO, &seen("d", Kind::Dir), later).unwrap();
    let f = t.upsert(d, &seen("f", Kind::File), later).unwrap();
    let e = t.upsert(ROOT_INO, &seen("e", Kind::Dir), later).unwrap();
    t.move_node(d, e, "x").unwrap();
    assert_eq!(t.get(f).unwrap().key, "e/x/f");
    assert_eq!(t.cached_lookup(e, "x", Instant::now()), Some(Some(d)));
    assert_eq!(t.get(ROOT_INO).unwrap().children.get("d"), None);
    assert_eq!(t.descendants(e).len(), 3);
}

#[test]
fn a_listing_that_ends_after_an_entry_it_showed_was_evicted_is_not_taken_as_whole() {
    let mut t = Tree::new("", defaults());
    let later = Instant::now() + Duration::from_secs(5);
    let d = t.upsert(ROOT_INO, &seen("d", Kind::Dir), later).unwrap();
    // A listing of many pages: the table drops an entry of the first page before the last.
    let f = t.upsert(d, &seen("f", Kind::File), later).unwrap();
    t.evict(f);
    t.upsert(d, &seen("g", Kind::File), later).unwrap();
    t.finish_listing(d, &["f".to_string(), "g".to_string()].into(), later, 0);
    assert_eq!(
        t.cached_lookup(d, "f", Instant::now()),
        None,
        "f is unknown (asked again), not missing"
    );
}

#[test]
fn unreferenced_leaves_are_evicted_and_their_parent_listing_forgotten() {
    let mut t = Tree::new("", defaults());
    let later = Instant::now() + Duration::from_secs(5);
    let d = t.upsert(ROOT_INO, &seen("d", Kind::Dir), later).unwrap();
    let f = t.upsert(d, &seen("f", Kind::File), later).unwrap();
    let g = t.upsert(d, &seen("g", Kind::File), later).unwrap();
    t.finish_listing(d, &["f".to_string(), "g".to_string()].into(), later, 0);
    t.add_lookup(g);
    let candidates = t.eviction_candidates(10);
    assert_eq!(candidates, vec![f], "d has children, g is referenced");
    t.evict(f);
    assert!(t.get(f).is_none());
    assert_eq!(
        t.cached_lookup(d, "f", Instant::now()),
        None,
        "unknown again, not missing"
    );
    t.forget(g, 1);
    for ino in t.eviction_candidates(10) {
        t.evict(ino);
    }
    assert!(t.get(g).is_none());
    for ino in t.eviction_candidates(10) {
        t.evict(ino);
    }
    assert!(t.get(d).is_none(), "an emptied, unreferenced directory goes too");
    assert_eq!(t.node_count(), 1);
}

/// A file created here, then a listing of its directory starts, then the file's
/// upload lands before the listing ends: the listing does not show it, and must not
/// drop it (it is no longer local, but it was placed after the listing began).
#[test]
fn a_listing_that_began_before_an_upload_landed_keeps_the_file() {
    let mut t = Tree::new("", defaults());
    let later = Instant::now() + Duration::from_secs(5);
    let d = t.upsert(ROOT_INO, &seen("d", Kind::Dir), later).unwrap();
    let f = t.upsert(d, &seen("new", Kind::File), later).unwrap();
    t.get_mut(f).unwrap().local = true;
    t.placed(f);
    let listing_began = t.dir_changes(d);
    t.now_in_bucket(f, later);
    assert!(!t.get(f).unwrap().local);
    t.finish_listing(d, &Default::default(), later, listing_began);
    assert_eq!(t.cached_lookup(d, "new", Instant::now()), Some(Some(f)));
    // A later listing that still does not show it is believed.
    let listing_began = t.dir_changes(d);
    t.finish_listing(d, &Default::default(), later, listing_began);
    assert_eq!(t.cached_lookup(d, "new", Instant::now()), Some(None));
}

/// A file uploaded into directories made here: one that awaits its marker (its put on
/// its way or failed) stays local, the others are directories of the bucket now,
/// trusted for the TTL only (they go with their last key).
#[test]
fn an_upload_leaves_a_directory_awaiting_its_marker_local() {
    let mut t = Tree::new("", defaults());
    let (far, soon) = (
        Instant::now() + Duration::from_secs(3600),
        Instant::now() + Duration::from_secs(1),
    );
    let a = t.upsert(ROOT_INO, &seen("a", Kind::Dir), far).unwrap();
    let b = t.upsert(a, &seen("b", Kind::Dir), far).unwrap();
    let f = t.upsert(b, &seen("f", Kind::File), far).unwrap();
    for ino in [a, b, f] {
        t.get_mut(ino).unwrap().local = true;
    }
    t.get_mut(b).unwrap().awaits_marker = true;
    t.now_in_bucket(f, soon);
    let state = |t: &Tree, ino| (t.get(ino).unwrap().local, t.get(ino).unwrap().fresh_until);
    assert_eq!(state(&t, b), (true, far), "awaiting its marker");
    assert_eq!(state(&t, a), (false, soon));
    assert!(t.holds_local(a), "a holds b");
    t.now_in_bucket(b, soon);
    assert_eq!(state(&t, b), (false, soon), "its marker is in");
    assert!(!t.get(b).unwrap().awaits_marker);
    assert!(!t.holds_local(a));
}

/// An upload replaces an object that is already in the bucket while a listing of its
/// directory is under way: the listing's older size and ETag must not win.
#[test]
fn a_listing_that_began_before_a_replacing_upload_keeps_the_new_version() {
    let mut t = Tree::new("", defaults());
    let later = Instant::now() + Duration::from_secs(5);
    let d = t.upsert(ROOT_INO, &seen("d", Kind::Dir), later).unwrap();
    let f = t.upsert(d, &seen("f", Kind::File), later).unwrap();
    let listing_began = t.dir_changes(d);
    let n = t.get_mut(f).unwrap();
    n.etag = Some("new".into());
    n.attr.size = 9;
    t.placed(f);
    let version = |t: &Tree| (t.get(f).unwrap().etag.clone(), t.get(f).unwrap().attr.size);
    assert_eq!(
        t.upsert_listed(d, &seen("f", Kind::File), later, listing_began, &|_| false),
        Some(f)
    );
    assert_eq!(version(&t), (Some("new".into()), 9));
    // A listing that began after the upload is believed.
    let listing_began = t.dir_changes(d);
    t.upsert_listed(d, &seen("f", Kind::File), later, listing_began, &|_| false);
    assert_eq!(version(&t), (Some("e".into()), 1));
}

#[test]
fn negative_and_listing_caches_expire() {
    let mut t = Tree::new("", defaults());
    let now = Instant::now();
    t.remember_missing(ROOT_INO, "x", now + Duration::from_secs(5));
    assert_eq!(t.cached_lookup(ROOT_INO, "x", now), Some(None));
    assert_eq!(t.cached_lookup(ROOT_INO, "x", now + Duration::from_secs(6)), None);
    t.upsert(ROOT_INO, &seen("b", Kind::File), now + Duration::from_secs(5));
    t.finish_listing(ROOT_INO, &Default::default(), now + Duration::from_secs(5), 0);
    assert_eq!(t.cached_lookup(ROOT_INO, "b", now), Some(None));
}

/// What a listing does to a file's metadata: the version a HEAD read vouches while the
/// listing shows it; the same ETag with another LastModified (a chmod elsewhere) unloads
/// it; a version the mount wrote takes the first listing's LastModified, and a later
/// rewrite of it unloads it too; only a HEAD's version spares a lookup its HEAD.
#[test]
fn a_listing_vouches_for_metadata_only_at_its_version() {
    let mut t = Tree::new("", defaults());
    let later = Instant::now() + Duration::from_secs(5);
    let at = |secs: u64, millis: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis);
    let listed = |secs: u64, millis: u64| Seen {
        mtime: at(secs, millis),
        ..seen("f", Kind::File)
    };
    let f = t.upsert(ROOT_INO, &listed(100, 0), later).unwrap();
    let head = crate::store::ObjectMeta {
        key: "f".into(),
        size: 1,
        etag: Some("e".into()),
        last_modified: Some(at(100, 0)),
        metadata: Default::default(),
    };
    t.apply_head("f", &head, &|_| false);
    assert!(t.version_read_by_head(f).is_some());
    // The same version, in a listing's milliseconds.
    assert!(t.metadata_known("f", Some("e"), at(100, 431)));
    t.upsert(ROOT_INO, &listed(100, 431), later);
    assert!(t.get(f).unwrap().metadata_loaded);
    // Rewritten in place a second later: same ETag, metadata to read again.
    assert!(!t.metadata_known("f", Some("e"), at(101, 0)));
    t.upsert(ROOT_INO, &listed(101, 0), later);
    assert!(!t.get(f).unwrap().metadata_loaded);
    assert!(t.version_read_by_head(f).is_none());

    // Written here: the first listing gives the version, vouching for listings only.
    t.apply_head("f", &head, &|_| false);
    t.get_mut(f).unwrap().written_here("w".into());
    assert!(t.metadata_known("f", Some("w"), at(200, 0)));
    t.upsert(
        ROOT_INO,
        &Seen {
            etag: Some("w".into()),
            ..listed(200, 0)
        },
        later,
    );
    assert!(t.get(f).unwrap().metadata_loaded);
    assert!(
        t.version_read_by_head(f).is_none(),
        "a listing's version spares no lookup its HEAD"
    );
    assert!(!t.metadata_known("f", Some("w"), at(201, 0)));
}
