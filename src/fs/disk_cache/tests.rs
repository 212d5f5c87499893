use super::*;

const ONE: u64 = 2 * DATA_OFFSET as u64;

/// `data` in a block buffer, as a block fetched from the network is.
fn block(buffers: &Arc<BlockBuffers>, data: &[u8]) -> BlockBuffer {
    let mut b = buffers.take(data.len());
    b.as_mut()[DATA_OFFSET..DATA_OFFSET + data.len()].copy_from_slice(data);
    b.set_len(data.len());
    b
}

/// Puts block `index` of a small object (its blocks go to segments).
fn put(cache: &Arc<DiskCache>, buffers: &Arc<BlockBuffers>, key: &str, index: u64, data: &[u8]) {
    let object = ObjectVersion {
        key: Arc::from(key),
        etag: Arc::from("e"),
        size: 4096,
    };
    cache.put_later(&object, 4096, index, block(buffers, data));
}

fn open(dir: &Path, budget: u64) -> Arc<DiskCache> {
    Arc::new(DiskCache::open(dir, "b", budget, 0, 16).unwrap())
}

fn at(cache: &DiskCache, key: &str, index: u64) -> Option<Location> {
    let name = segments::name_of(cache.identity(key, "e", index).as_bytes());
    cache.state.lock().blocks.get(&name).copied()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(BLOCKS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn blocks_round_trip_and_corruption_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30);
    let buffers = BlockBuffers::new(4096, 1 << 20);
    put(&cache, &buffers, "k", 0, b"hello");
    put(&cache, &buffers, "k", 1, b"world");
    assert_eq!(cache.get("k", "e", 0, &buffers).as_deref(), Some(&b"hello"[..]));
    assert_eq!(cache.get("k", "e2", 0, &buffers), None, "another ETag is another block");
    let second = at(&cache, "k", 1).unwrap();
    assert_eq!(second.size, ONE, "a header page, the data padded to a page");
    let path = segments::segment_path(&cache.dir, second.seq);
    let mut raw = std::fs::read(&path).unwrap();
    raw[(second.offset as usize) + DATA_OFFSET] ^= 1;
    std::fs::write(&path, raw).unwrap();
    assert_eq!(cache.get("k", "e", 1, &buffers), None);
    assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 1);
    assert!(!cache.holds("k", "e", 1), "a corrupt block is dropped");
    assert_eq!(
        cache.get("k", "e", 0, &buffers).as_deref(),
        Some(&b"hello"[..]),
        "its neighbour stays"
    );
}

#[test]
fn hostile_segment_contents_are_misses_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30);
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let mut huge_len = block(&buffers, b"data");
    assert!(record::write_header(&cache.identity("k", "e", 0), &mut huge_len));
    let mut huge_len = huge_len.file_image().to_vec();
    let len_at = 8 + 4 + cache.identity("k", "e", 0).len();
    huge_len[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    for content in [Vec::new(), vec![0; 10], vec![0; 64 * DATA_OFFSET], huge_len] {
        put(&cache, &buffers, "k", 0, b"data");
        let record = at(&cache, "k", 0).unwrap();
        let (path, offset) = (segments::segment_path(&cache.dir, record.seq), record.offset as usize);
        let mut file = std::fs::read(&path).unwrap();
        file.truncate(offset);
        file.extend_from_slice(&content);
        std::fs::write(&path, &file).unwrap();
        assert_eq!(cache.get("k", "e", 0, &buffers), None, "{} bytes", content.len());
    }
    assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 4);
    let bigger = BlockBuffers::new(64 * 4096, 1 << 20);
    let cache = open(dir.path(), 1 << 30);
    put(&cache, &bigger, "big", 0, &vec![1; 64 * 4096]);
    assert_eq!(
        cache.get("big", "e", 0, &buffers),
        None,
        "a record larger than this mount's blocks"
    );
}

#[test]
fn eviction_keeps_the_budget_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![7u8; 1000];
    let cache = open(dir.path(), 5 * ONE);
    let buffers = BlockBuffers::new(4096, 1 << 20);
    for i in 0..20 {
        put(&cache, &buffers, "k", i, &data);
        assert!(cache.used() <= 5 * ONE);
    }
    assert!(cache.get("k", "e", 19, &buffers).is_some() && cache.get("k", "e", 0, &buffers).is_none());
    let used = cache.used();
    drop(cache);
    let reopened = open(dir.path(), 5 * ONE);
    assert_eq!(reopened.used(), used);
    assert!(reopened.get("k", "e", 19, &buffers).is_some());
}

#[test]
fn filled_segments_are_indexed_and_the_last_is_scanned_at_the_next_mount() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of four records; five records in each lane: one segment filled, one begun.
    let cache = open(dir.path(), 32 * ONE);
    let buffers = BlockBuffers::new(4096, 1 << 20);
    for i in 0..20 {
        put(&cache, &buffers, "k", i, &[i as u8; 100]);
    }
    let count = |ext: &str| files(dir.path()).iter().filter(|f| f.ends_with(ext)).count();
    assert_eq!((count(".seg"), count(".idx")), (2 * LANES, LANES));
    drop(cache);
    let reopened = open(dir.path(), 32 * ONE);
    for i in 0..20 {
        assert_eq!(
            reopened.get("k", "e", i, &buffers).as_deref(),
            Some(&[i as u8; 100][..]),
            "block {i}"
        );
    }
    assert_eq!(count(".idx"), 2 * LANES, "the scanned segments are indexed now");
    assert_eq!(reopened.used(), 20 * ONE);
    put(&reopened, &buffers, "k", 20, b"next");
    let new = at(&reopened, "k", 20).unwrap().seq;
    assert_eq!(new, 2 * LANES as u64, "a new mount appends to a new segment");
}

#[test]
fn a_block_read_again_outlives_blocks_read_once() {
    let dir = tempfile::tempdir().unwrap();
    // Eight segments of one record each.
    let cache = open(dir.path(), 8 * ONE);
    let buffers = BlockBuffers::new(4096, 1 << 20);
    put(&cache, &buffers, "hot", 0, b"hot");
    for i in 0..40 {
        put(&cache, &buffers, "once", i, b"once");
        assert!(
            cache.get("hot", "e", 0, &buffers).is_some(),
            "after {i} blocks read once"
        );
    }
    assert!(cache.get("once", "e", 0, &buffers).is_none());
}

#[test]
fn clear_removes_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 8 * ONE);
    let buffers = BlockBuffers::new(4096, 1 << 20);
    for i in 0..3 {
        put(&cache, &buffers, "k", i, b"x");
    }
    assert_eq!(cache.clear(), 3);
    assert!(files(dir.path()).is_empty() && cache.used() == 0);
    put(&cache, &buffers, "k", 0, b"x");
    drop(cache);
    assert_eq!(clear_unlocked(dir.path()).unwrap(), 1);
    assert!(files(dir.path()).is_empty());
}

#[test]
fn a_block_is_kept_while_it_is_written_and_after_but_not_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let cache = open(dir.path(), 1 << 30);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        // Written on a blocking thread: kept from the moment it is queued.
        put(&cache, &buffers, "k", 0, b"hello");
        assert!(cache.keeps("k", "e", 0));
        assert!(!cache.keeps("k", "e", 1));
    });
    drop(runtime);
    assert!(cache.keeps("k", "e", 0) && cache.holds("k", "e", 0));
    // A cache too small for the block turns it down: not kept once the write gave up.
    let small = open(&dir.path().join("small"), ONE / 2);
    put(&small, &buffers, "k", 0, b"hello");
    assert!(!small.keeps("k", "e", 0));
}

/// An object of `blocks` blocks of 4 KiB and 100 bytes more, and its data.
fn large(key: &str, blocks: u64) -> (ObjectVersion, Vec<u8>) {
    let size = blocks * 4096 + 100;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let object = ObjectVersion {
        key: Arc::from(key),
        etag: Arc::from("e"),
        size,
    };
    (object, data)
}

fn put_block(cache: &Arc<DiskCache>, buffers: &Arc<BlockBuffers>, object: &ObjectVersion, data: &[u8], index: u64) {
    let start = (index * 4096) as usize;
    let end = (start + 4096).min(data.len());
    cache.put_later(object, 4096, index, block(buffers, &data[start..end]));
}

fn whole(cache: &DiskCache, object: &ObjectVersion) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    cache.whole_file(object, 4096)?.read_to_end(&mut bytes).unwrap();
    Some(bytes)
}

#[test]
fn a_large_object_gets_a_file_of_its_own_offered_once_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30);
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let (object, data) = large("model", OBJECT_FILE_MIN_BLOCKS);
    let count = OBJECT_FILE_MIN_BLOCKS + 1;
    // In a shuffled order, as a model loader reads.
    let order: Vec<u64> = (0..count).map(|i| i * 5 % count).collect();
    for (n, &index) in order.iter().enumerate() {
        assert!(whole(&cache, &object).is_none(), "offered with {n} of {count} blocks");
        put_block(&cache, &buffers, &object, &data, index);
    }
    assert!(
        whole(&cache, &object) == Some(data.clone()),
        "the file is the object, byte for byte"
    );
    assert_eq!(
        files(dir.path()),
        vec![format!("{:016x}.obj", 0), format!("{:016x}.oix", 0)]
    );
    for index in 0..count {
        let start = (index * 4096) as usize;
        let end = (start + 4096).min(data.len());
        assert_eq!(
            cache.get("model", "e", index, &buffers).as_deref(),
            Some(&data[start..end])
        );
    }
    assert!(
        whole(
            &cache,
            &ObjectVersion {
                etag: Arc::from("other"),
                ..object.clone()
            }
        )
        .is_none()
    );
    assert!(
        whole(
            &cache,
            &ObjectVersion {
                size: object.size + 1,
                ..object.clone()
            }
        )
        .is_none()
    );

    drop(cache);
    let reopened = open(dir.path(), 1 << 30);
    assert!(
        whole(&reopened, &object) == Some(data.clone()),
        "offered after a remount"
    );
    assert_eq!(
        reopened.get("model", "e", count - 1, &buffers).as_deref(),
        Some(&data[16 * 4096..])
    );
    assert_eq!(reopened.used(), count * 4096);

    // A small object's blocks still go to segments.
    put(&reopened, &buffers, "small", 0, b"x");
    assert!(files(dir.path()).iter().any(|f| f.ends_with(".seg")));
}

#[test]
fn an_object_file_found_damaged_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let (object, data) = large("model", OBJECT_FILE_MIN_BLOCKS);
    let cache = open(dir.path(), 1 << 30);
    for index in 0..=OBJECT_FILE_MIN_BLOCKS {
        put_block(&cache, &buffers, &object, &data, index);
    }
    drop(cache);
    let path = objects::object_path(&dir.path().join(BLOCKS), 0);

    // A flipped byte: its block is a miss (and dropped) through s3vol.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 10] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let cache = open(dir.path(), 1 << 30);
    assert_eq!(cache.get("model", "e", 1, &buffers), None);
    assert_eq!(cache.stats.corrupt.load(Ordering::Relaxed), 1);
    assert!(cache.get("model", "e", 2, &buffers).is_some(), "its neighbour stays");
    drop(cache);

    // Cut short: the index says whole, the file is not, so none of it is trusted.
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let cache = open(dir.path(), 1 << 30);
    assert!(whole(&cache, &object).is_none());
    assert!(!cache.holds("model", "e", 0));
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[test]
fn a_partial_object_file_keeps_what_its_last_index_lists() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let (object, data) = large("shard", 2 * OBJECT_INDEX_EVERY as u64);
    let cache = open(dir.path(), 1 << 30);
    let written = OBJECT_INDEX_EVERY as u64 + 3;
    for index in 0..written {
        put_block(&cache, &buffers, &object, &data, index);
    }
    assert!(cache.holds("shard", "e", written - 1));
    drop(cache);
    // A crash: no index written since the first OBJECT_INDEX_EVERY blocks.
    let cache = open(dir.path(), 1 << 30);
    let held: Vec<u64> = (0..written).filter(|i| cache.holds("shard", "e", *i)).collect();
    assert_eq!(held, (0..OBJECT_INDEX_EVERY as u64).collect::<Vec<_>>());
    // The file goes on filling at the next mount, and is whole with its last block.
    for index in OBJECT_INDEX_EVERY as u64..=2 * OBJECT_INDEX_EVERY as u64 {
        put_block(&cache, &buffers, &object, &data, index);
    }
    assert!(whole(&cache, &object) == Some(data));
}

#[test]
fn object_files_are_evicted_whole_and_renewed_when_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let blocks = OBJECT_FILE_MIN_BLOCKS;
    // Room for four objects of 17 blocks.
    let cache = open(dir.path(), 4 * (blocks + 1) * 4096);
    let objects: Vec<(ObjectVersion, Vec<u8>)> = (0..8).map(|i| large(&format!("m{i}"), blocks)).collect();
    let (hot, hot_data) = &objects[0];
    for (n, (object, data)) in objects.iter().enumerate() {
        for index in 0..=blocks {
            put_block(&cache, &buffers, object, data, index);
        }
        assert!(cache.used() <= cache.budget());
        // The first model is loaded again after each new one.
        assert!(whole(&cache, hot) == Some(hot_data.clone()), "after {n} more");
        for index in 0..=blocks {
            assert!(
                cache.get(&hot.key, "e", index, &buffers).is_some(),
                "after {n}: block {index}"
            );
        }
    }
    assert!(whole(&cache, &objects[1].0).is_none(), "read once, evicted");
    assert!(whole(&cache, &objects[7].0).is_some());
    let obj_files = files(dir.path()).iter().filter(|f| f.ends_with(".obj")).count();
    assert!(obj_files <= 4, "{obj_files} object files");
    drop(cache);
    let reopened = open(dir.path(), 4 * (blocks + 1) * 4096);
    assert!(whole(&reopened, hot) == Some(hot_data.clone()), "renamed, found again");
    let held = reopened.state.lock().blocks.len() as u64;
    drop(reopened);
    assert_eq!(clear_unlocked(dir.path()).unwrap(), held);
    assert!(files(dir.path()).is_empty());
}

#[test]
fn at_unmount_every_object_file_s_index_lists_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let (object, data) = large("shard", 2 * OBJECT_INDEX_EVERY as u64);
    let cache = open(dir.path(), 1 << 30);
    let written = OBJECT_INDEX_EVERY as u64 + 3;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for index in 0..written {
            put_block(&cache, &buffers, &object, &data, index);
            // One at a time: a block finding every write slot taken goes unwritten.
            assert!(cache.writes_done(std::time::Duration::from_secs(10)).await);
        }
    });
    cache.save_object_indexes();
    drop(cache);
    let cache = open(dir.path(), 1 << 30);
    let held = (0..written).filter(|i| cache.holds("shard", "e", *i)).count() as u64;
    assert_eq!(held, written, "blocks written after the last periodic index");
}

#[test]
fn blocks_queued_at_once_are_written_in_batches_each_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let cache = Arc::new(DiskCache::open(dir.path(), "b", 1 << 30, 0, 128).unwrap());
    let (object, data) = large("big", 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Records and a large object's blocks (out of order), all waiting together.
        for i in 0..40 {
            put(&cache, &buffers, "k", i, format!("record {i}").as_bytes());
        }
        for index in (0..=20).rev() {
            put_block(&cache, &buffers, &object, &data, index);
        }
        assert!(cache.writes_done(Duration::from_secs(30)).await);
    });
    for i in 0..40 {
        let read = cache.get("k", "e", i, &buffers);
        assert_eq!(read.as_deref(), Some(format!("record {i}").as_bytes()), "record {i}");
    }
    assert_eq!(whole(&cache, &object), Some(data), "the object's file, byte for byte");
    // Reopened, the records are found where their batches put them.
    drop(cache);
    let cache = open(dir.path(), 1 << 30);
    for i in [0, 17, 39] {
        let read = cache.get("k", "e", i, &buffers);
        assert_eq!(read.as_deref(), Some(format!("record {i}").as_bytes()), "record {i}");
    }
}

#[test]
fn a_block_on_its_way_to_the_disk_is_read_from_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = BlockBuffers::new(4096, 1 << 20);
    let cache = open(dir.path(), 1 << 30);
    // Queued, not written yet (as while its writer gathers company or waits for the disk).
    let name = segments::name_of(cache.identity("k", "e", 0).as_bytes());
    let queued = Arc::new(block(&buffers, b"queued"));
    cache.state.lock().writing.insert(name, queued);
    assert!(cache.keeps("k", "e", 0) && !cache.holds("k", "e", 0));
    assert_eq!(cache.get("k", "e", 0, &buffers).as_deref(), Some(&b"queued"[..]));
    assert_eq!(cache.get("k", "e", 1, &buffers), None);
}
