//! Fixed scenarios of the core against another client, one test each: a remote replace
//! racing a local write, O_TRUNC on a read-only open, a symlink replaced by a plain object,
//! revalidation, listings and lookups older than a deferred delete, and Hugging Face's
//! mount-only directories (see the parent module for the harness).

use super::{BLOCK, CALLER, Core, block_on, bytes};
use crate::common;
use bytes::Bytes;
use s3vol::fs::{Errno, Fs, Kind, OpenMode, ROOT_INO, Settle, UploadMode};
use s3vol::store::{ObjectStore, PutOptions, StoreError};
use std::sync::Arc;

/// The source of the Hugging Face scenarios: directory markers forbidden.
const HF: &str = "hf://ns/b";

/// Writes `local` at `offset` into `key` (holding `base`) through an open handle while
/// another client replaces the object with `theirs`, then closes. Returns what close()
/// gave and what the bucket holds.
fn write_while_replaced(base: &[u8], offset: u64, local: &[u8], theirs: &[u8]) -> (Result<(), Errno>, Vec<u8>) {
    block_on(async {
        let core = Core::new();
        core.remote_put("f", base.to_vec()).await;
        let (ino, _) = core.walk("f").await.expect("f exists");
        let mode = OpenMode {
            write: true,
            ..OpenMode::default()
        };
        let fh = core.fs.open(ino, mode).await.expect("open").fh;
        core.fs.write(fh, offset, local).await.expect("write");
        core.remote_put("f", theirs.to_vec()).await;
        let closed = core.fs.flush(fh).await;
        core.fs.release(fh).await;
        (closed, core.bucket().contents("f").expect("f").to_vec())
    })
}

/// An object replaced remotely while a handle changes part of it: close() may keep
/// either version whole (last writer wins with the version it opened, or an error and
/// theirs untouched), never a mix of their bytes and ours.
#[test]
fn an_upload_never_mixes_a_remotely_replaced_base_with_local_changes() {
    let _turn = common::shared();
    let block = BLOCK as usize;
    for (size, offset, len) in [(block / 2, 10, 100), (3 * block, block, block)] {
        let base = bytes(size, 1);
        let theirs = bytes(size, 2);
        let local = bytes(len, 3);
        let (closed, stored) = write_while_replaced(&base, offset as u64, &local, &theirs);
        let mut ours = base.clone();
        ours[offset..offset + len].copy_from_slice(&local);
        let mut mixed = theirs.clone();
        mixed[offset..offset + len].copy_from_slice(&local);
        assert!(
            stored != mixed,
            "{size}-byte object: the upload combined the remote replacement with the local \
             write (close gave {closed:?})"
        );
        assert!(
            (closed.is_ok() && stored == ours) || (closed.is_err() && stored == theirs),
            "{size}-byte object: close gave {closed:?} and the bucket holds neither version"
        );
    }
}

/// open(O_RDONLY | O_TRUNC) truncates on Linux (O_TRUNC asks for write permission, not a
/// writable handle), and with FUSE_ATOMIC_O_TRUNC the kernel sets the size to 0 and drops
/// its cached pages on the filesystem's word that it truncated. A core that ignores
/// O_TRUNC on a read-only open leaves the kernel and the bucket disagreeing: a program
/// running from that file dies of SIGSEGV (pjdfstest open::etxtbsy shows it).
#[test]
fn o_trunc_truncates_whatever_the_access_mode() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::new();
        core.remote_put("f", bytes(100, 1)).await;
        let (ino, _) = core.walk("f").await.expect("f exists");
        let mode = OpenMode {
            write: false,
            truncate: true,
            append: false,
        };
        let fh = core.fs.open(ino, mode).await.expect("open O_RDONLY|O_TRUNC").fh;
        let size = core.fs.getattr(ino).await.expect("getattr").size;
        let read = core.fs.read(fh, 0, 1000).await.expect("read");
        let closed = core.fs.flush(fh).await;
        core.fs.release(fh).await;
        assert_eq!((size, read.len()), (0, 0), "size and bytes seen after O_TRUNC");
        assert_eq!(closed, Ok(()));
        assert_eq!(
            core.bucket().contents("f").map(|b| b.len()),
            Some(0),
            "the bucket holds the truncated file"
        );
    });
}

/// A symlink is an object with `x-amz-meta-mode` saying S_IFLNK. Replaced by another client
/// with a plain object, it is a plain file again: the new object's attributes, not the old
/// object's metadata.
#[test]
fn a_symlink_replaced_remotely_by_a_plain_object_is_a_file_again() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::new();
        core.fs.symlink(ROOT_INO, "l", "target", CALLER).await.expect("symlink");
        assert_eq!(core.walk("l").await.expect("l").1, Kind::Symlink);
        core.remote_put("l", b"plain".to_vec()).await;
        let (ino, kind) = core.walk("l").await.expect("l after the replacement");
        assert_eq!(kind, Kind::File);
        let attr = core.fs.getattr(ino).await.expect("getattr");
        assert_eq!((attr.kind, attr.size), (Kind::File, 5));
    });
}

/// A lookup that goes to the bucket also lists `name/`, so that a directory's next path
/// component is answered from that listing; a name last seen as a file (a revalidation
/// after the metadata TTL) is spared that LIST, and still becomes a directory if it did.
#[test]
fn revalidating_a_file_lists_only_its_directory() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::new();
        core.remote_put("f", b"data".to_vec()).await;
        let lists = || core.bucket().requests("list");
        let before = lists();
        assert_eq!(core.walk("f").await.expect("f").1, Kind::File);
        assert_eq!(lists() - before, 2, "cold: the root and f/");
        let before = lists();
        assert_eq!(core.walk("f").await.expect("f again").1, Kind::File);
        assert_eq!(lists() - before, 1, "revalidation: the root only");
        core.bucket().delete("f").await.expect("delete");
        core.remote_put("f/inner", b"x".to_vec()).await;
        assert_eq!(core.walk("f").await.expect("f as a directory").1, Kind::Dir);
        assert_eq!(core.walk("f/inner").await.expect("f/inner").1, Kind::File);
    });
}

/// Runs `observe` (a readdir or a lookup of `d/f`) with its LISTs answered from the bucket
/// as it was while `d/f`, unlinked while open, was waiting for its last close, and
/// answered only after that close deleted it. Returns what `observe` saw.
async fn observe_across_a_deferred_delete<T, F, Fut>(core: &Core, observe: F) -> T
where
    F: FnOnce(Arc<Fs>, u64) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    core.fs.mkdir(ROOT_INO, "d", 0o755, CALLER).await.expect("mkdir d");
    core.write("d/f", 0, b"data", false).await.expect("write d/f");
    let (dir, _) = core.walk("d").await.expect("d");
    let (file, _) = core.walk("d/f").await.expect("d/f");
    let fh = core.fs.open(file, OpenMode::default()).await.expect("open").fh;
    core.fs.unlink(dir, "f").await.expect("unlink while open");
    assert!(core.bucket().contents("d/f").is_some(), "kept until the last close");

    let gate = core.bucket().hold_lists();
    let lists = core.bucket().requests("list");
    let observer = tokio::spawn(observe(core.fs.clone(), dir));
    // One thread: once a LIST is counted, it has read the keys and waits.
    while core.bucket().requests("list") == lists {
        tokio::task::yield_now().await;
    }
    core.fs.release(fh).await;
    assert!(core.bucket().contents("d/f").is_none(), "deleted at the last close");
    gate.close();
    observer.await.expect("observer task")
}

/// A file unlinked while open is deleted from the bucket at its last close, and hidden
/// from listings until then. A LIST sent before that close but answered after it (the
/// delete done, the name no longer hidden) still shows the file: it must not bring the
/// file back.
#[test]
fn a_listing_older_than_a_deferred_delete_does_not_bring_the_file_back() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::new();
        let names = observe_across_a_deferred_delete(&core, |fs, dir| async move {
            let fh = fs.opendir(dir).await.expect("opendir");
            let page = fs.readdir(dir, fh, 0).await.expect("readdir");
            fs.releasedir(fh);
            page.into_iter().map(|e| e.name).collect::<Vec<String>>()
        })
        .await;
        assert_eq!(names, [".", ".."], "what readdir of d shows");
        assert_eq!(core.walk("d/f").await.map(|(_, k)| k), Err(Errno(libc::ENOENT)));
    });
}

/// The same for a lookup, whose HEAD and LISTs may find the file before its delete.
#[test]
fn a_lookup_older_than_a_deferred_delete_does_not_find_the_file() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::new();
        let found =
            observe_across_a_deferred_delete(
                &core,
                |fs, dir| async move { fs.lookup(dir, "f").await.map(|a| a.kind) },
            )
            .await;
        assert_eq!(found, Err(Errno(libc::ENOENT)), "what a lookup of d/f finds");
    });
}

/// Hugging Face forbids `dir/` markers. README: "an empty directory lives in the mount only
/// until a file is written into it": mkdir puts nothing in the bucket, the directory shows
/// in lookups and listings, rmdir removes it; a file written into it puts it in the bucket,
/// a directory of the bucket like any other from then on (gone with its last key). Another
/// client cannot make a marker either: the gate refuses the name.
#[test]
fn a_hugging_face_directory_lives_in_the_mount_until_a_file_is_written_into_it() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::for_source(HF);
        core.fs.mkdir(ROOT_INO, "d", 0o755, CALLER).await.expect("mkdir d");
        assert!(core.bucket().keys().is_empty(), "no marker");
        assert_eq!(core.walk("d").await.map(|(_, k)| k), Ok(Kind::Dir));
        let root = core.readdir(ROOT_INO).await.expect("readdir /");
        assert_eq!(root.into_iter().collect::<Vec<_>>(), [("d".to_string(), Kind::Dir)]);
        core.fs.rmdir(ROOT_INO, "d").await.expect("rmdir d");
        assert_eq!(core.walk("d").await.map(|(_, k)| k), Err(Errno(libc::ENOENT)));

        core.fs
            .mkdir(ROOT_INO, "d", 0o755, CALLER)
            .await
            .expect("mkdir d again");
        core.write("d/f", 0, b"data", false).await.expect("write d/f");
        assert_eq!(core.bucket().keys(), ["d/f"]);
        let (d, _) = core.walk("d").await.expect("d");
        core.fs.unlink(d, "f").await.expect("unlink d/f");
        assert!(core.bucket().keys().is_empty());
        // Listed again: gone with its last key (without that listing, see the next test).
        core.readdir(ROOT_INO).await.expect("readdir /");
        assert_eq!(core.walk("d").await.map(|(_, k)| k), Err(Errno(libc::ENOENT)));

        let refused = core.store.put("m/", Bytes::new(), &PutOptions::default()).await;
        assert!(matches!(refused, Err(StoreError::InvalidName(_))), "{refused:?}");
        assert!(core.bucket().keys().is_empty());
    });
}

/// A directory made here and written into is a directory of the bucket (README: it lives
/// in the mount only "until a file is written into it"; directories "come from
/// `/`-delimited listings"), so it goes with its last key: a lookup says so as a listing
/// of its parent does, without that listing first. (Once, written into, it stopped being
/// mount-only yet kept the mount-only entry's lifetime, a year: a lookup found it until
/// its parent was listed again. The model's check lists every directory after each step,
/// which hid this from the proptest.)
#[test]
fn a_directory_written_into_goes_with_its_last_file() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::for_source(HF);
        core.fs.mkdir(ROOT_INO, "d", 0o755, CALLER).await.expect("mkdir d");
        core.write("d/f", 0, b"data", false).await.expect("write d/f");
        let (d, _) = core.walk("d").await.expect("d");
        core.fs.unlink(d, "f").await.expect("unlink d/f");
        assert!(core.bucket().keys().is_empty());
        assert_eq!(core.walk("d").await.map(|(_, k)| k), Err(Errno(libc::ENOENT)));
        let root = core.readdir(ROOT_INO).await.expect("readdir /");
        assert!(root.is_empty(), "readdir of / agrees: {root:?}");
    });
}

/// README: "a file and a directory of one name show the directory". A mount-only
/// directory and another client's file of its name: both a lookup and a listing of the
/// parent show the directory (a listing once showed the file).
#[test]
fn a_mount_only_directory_shadows_a_remote_file_of_its_name() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::for_source(HF);
        core.fs.mkdir(ROOT_INO, "c", 0o755, CALLER).await.expect("mkdir c");
        let (c, _) = core.walk("c").await.expect("c");
        core.fs.mkdir(c, "a", 0o755, CALLER).await.expect("mkdir c/a");
        core.remote_put("c/a", b"x".to_vec()).await;
        assert_eq!(core.walk("c/a").await.map(|(_, k)| k), Ok(Kind::Dir), "lookup");
        let entries = core.readdir(c).await.expect("readdir c");
        assert_eq!(entries.get("a"), Some(&Kind::Dir), "readdir of c");
    });
}

/// README: an empty directory made here "lives in the mount only until a file is written
/// into it (it is gone after a remount if still empty)". One made in a directory of the
/// bucket keeps that directory when its last key goes (they once both vanished when the
/// parent's last file was deleted through the mount); removed, it no longer does.
#[test]
fn a_mount_only_directory_keeps_its_emptied_parent() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::for_source(HF);
        core.remote_put("a/f", b"x".to_vec()).await;
        let (a, _) = core.walk("a").await.expect("a");
        core.fs.mkdir(a, "b", 0o755, CALLER).await.expect("mkdir a/b");
        core.fs.unlink(a, "f").await.expect("unlink a/f");
        assert_eq!(core.walk("a").await.map(|(_, k)| k), Ok(Kind::Dir), "a");
        assert_eq!(core.walk("a/b").await.map(|(_, k)| k), Ok(Kind::Dir), "a/b");
        let root = core.readdir(ROOT_INO).await.expect("readdir /");
        assert_eq!(root.get("a"), Some(&Kind::Dir), "readdir of /");
        let inside = core.readdir(a).await.expect("readdir a");
        assert_eq!(inside.into_iter().collect::<Vec<_>>(), [("b".to_string(), Kind::Dir)]);
        core.fs.rmdir(a, "b").await.expect("rmdir a/b");
        assert_eq!(
            core.walk("a").await.map(|(_, k)| k),
            Err(Errno(libc::ENOENT)),
            "a at last"
        );
    });
}

/// The two above at once, as the proptest found them: a directory of the bucket (written
/// into through the mount) holding a mount-only directory, and another client's file of
/// its name. Its last key gone, the directory stays for the one made in it, and hides the
/// file: a lookup that goes to the bucket (the listing shows only the file) says so too.
#[test]
fn a_directory_kept_for_a_mount_only_one_hides_a_remote_file_of_its_name() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::for_source(HF);
        core.fs.mkdir(ROOT_INO, "a", 0o755, CALLER).await.expect("mkdir a");
        core.remote_put("a", b"x".to_vec()).await;
        core.write("a/b", 0, b"", false).await.expect("write a/b");
        let (a, _) = core.walk("a").await.expect("a");
        core.fs.mkdir(a, "a", 0o755, CALLER).await.expect("mkdir a/a");
        core.fs.unlink(a, "b").await.expect("unlink a/b");
        assert_eq!(core.bucket().keys(), ["a"]);
        assert_eq!(core.walk("a").await.map(|(_, k)| k), Ok(Kind::Dir), "lookup a");
        let root = core.readdir(ROOT_INO).await.expect("readdir /");
        assert_eq!(root.into_iter().collect::<Vec<_>>(), [("a".to_string(), Kind::Dir)]);
        assert_eq!(core.walk("a/a").await.map(|(_, k)| k), Ok(Kind::Dir), "lookup a/a");
    });
}

/// README: "rmdir answers ENOTEMPTY". A mount-only directory into which another client
/// put a file is not empty: rmdir, and a rename of a directory over it, ask the bucket
/// (they once removed it without asking: the file stayed, and the directory with it).
#[test]
fn rmdir_of_a_mount_only_directory_asks_the_bucket() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::for_source(HF);
        core.fs.mkdir(ROOT_INO, "b", 0o755, CALLER).await.expect("mkdir b");
        core.remote_put("b/a", b"x".to_vec()).await;
        assert_eq!(core.fs.rmdir(ROOT_INO, "b").await, Err(Errno(libc::ENOTEMPTY)));
        core.fs.mkdir(ROOT_INO, "e", 0o755, CALLER).await.expect("mkdir e");
        assert_eq!(
            core.fs.rename(ROOT_INO, "e", ROOT_INO, "b", false).await,
            Err(Errno(libc::ENOTEMPTY)),
            "rename e b"
        );
        assert_eq!(core.walk("b/a").await.map(|(_, k)| k), Ok(Kind::File));
    });
}

/// With uploads and deletes in the background (the default), a file renamed onto a name
/// whose unlink is still on its way lands after that delete, not before it: the delete
/// must not take the renamed file with it. The same for a directory renamed onto one just
/// removed. (Seen in mount_model under load: the bucket lost the file, rmdir then found
/// the directory empty.)
#[test]
fn a_rename_onto_a_name_whose_delete_is_on_its_way_survives_it() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::with_upload_mode("s3://b", UploadMode::Background);
        for (path, data) in [("f", &b"old"[..]), ("g", b"new"), ("d/x", b"x"), ("e/y", b"y")] {
            if let Some((dir, _)) = path.split_once('/') {
                let _ = core.fs.mkdir(ROOT_INO, dir, 0o755, CALLER).await;
            }
            core.write(path, 0, data, false).await.expect("write");
        }
        core.fs.sync_all(Settle::Uploaded).await.expect("sync");

        core.fs.unlink(ROOT_INO, "f").await.expect("unlink f");
        core.fs
            .rename(ROOT_INO, "g", ROOT_INO, "f", false)
            .await
            .expect("rename g f");
        let (d, _) = core.walk("d").await.expect("d");
        core.fs.unlink(d, "x").await.expect("unlink d/x");
        core.fs.rmdir(ROOT_INO, "d").await.expect("rmdir d");
        core.fs
            .rename(ROOT_INO, "e", ROOT_INO, "d", false)
            .await
            .expect("rename e d");
        core.fs.sync_all(Settle::Uploaded).await.expect("sync");

        assert_eq!(core.bucket().contents("f").as_deref(), Some(&b"new"[..]));
        assert_eq!(core.bucket().contents("d/y").as_deref(), Some(&b"y"[..]));
        assert_eq!(core.bucket().keys(), ["d/", "d/y", "f"], "what the bucket holds");
    });
}

/// With uploads in the background, a file written over another client's object shows
/// the size the mount gave it until its upload lands: a lookup (its parent's listing) and
/// a getattr (a HEAD) once put the bucket's older size over it. (Found by core_model in
/// Background mode.)
#[test]
fn a_file_whose_upload_is_on_its_way_keeps_its_own_size() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::with_upload_mode("s3://b", UploadMode::Background);
        core.remote_put("b", Vec::new()).await;
        core.write("b", 0, b"x", false).await.expect("write b");
        let (ino, kind) = core.walk("b").await.expect("b");
        assert_eq!(kind, Kind::File);
        assert_eq!(
            core.fs.getattr(ino).await.expect("getattr").size,
            1,
            "before the upload"
        );
        assert_eq!(core.read_all(ino).await.expect("read"), b"x");
        core.fs.sync_all(Settle::Uploaded).await.expect("sync");
        assert_eq!(core.bucket().contents("b").as_deref(), Some(&b"x"[..]));
        assert_eq!(core.fs.getattr(ino).await.expect("getattr").size, 1, "after it");
    });
}

/// With deletes in the background, a directory removed is gone for lookups and listings
/// while the delete of its marker (or of the last marker under it) is on its way: the
/// bucket still lists `d/` (or `a/` for `a/b/`) until then. (Found by core_model in
/// Background mode: a lookup found the directory again.)
#[test]
fn a_directory_whose_last_key_is_being_deleted_is_gone() {
    let _turn = common::shared();
    block_on(async {
        let core = Core::with_upload_mode("s3://b", UploadMode::Background);
        core.fs.mkdir(ROOT_INO, "d", 0o755, CALLER).await.expect("mkdir d");
        core.remote_put("a/b/", Vec::new()).await;
        core.fs.sync_all(Settle::Uploaded).await.expect("sync");
        let (a, _) = core.walk("a").await.expect("a");
        core.fs.rmdir(ROOT_INO, "d").await.expect("rmdir d");
        core.fs.rmdir(a, "b").await.expect("rmdir a/b");
        assert_eq!(core.walk("d").await.map(|(_, k)| k), Err(Errno(libc::ENOENT)), "d");
        assert_eq!(core.walk("a").await.map(|(_, k)| k), Err(Errno(libc::ENOENT)), "a");
        let root = core.readdir(ROOT_INO).await.expect("readdir /");
        assert!(root.is_empty(), "readdir of /: {root:?}");
        core.fs.sync_all(Settle::Uploaded).await.expect("sync");
        assert!(core.bucket().keys().is_empty(), "{:?}", core.bucket().keys());
    });
}
