//! Whether the thread running a request may wait for the local disk itself. The FUSE
//! adapter polls each request on the thread that read it from the kernel, up to its first
//! wait (`fuse.rs`, `run_from_here`); a block the disk cache holds is then read right
//! there, rather than handed to the blocking pool and back to the runtime, which cost
//! four context switches per block (BENCHMARKS.md item 107). Everywhere else (runtime
//! threads, which must not block) the answer is no.

use std::cell::Cell;

thread_local! {
    static ALLOWED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with disk waits allowed on this thread (reset after it, also on a panic).
pub fn allowing<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            ALLOWED.with(|a| a.set(self.0));
        }
    }
    let _reset = Reset(ALLOWED.with(|a| a.replace(true)));
    f()
}

/// Whether this thread may wait for the disk now.
pub fn allowed() -> bool {
    ALLOWED.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_only_inside_and_reset_after_a_panic() {
        assert!(!allowed());
        assert!(allowing(allowed));
        assert!(!allowed());
        let caught = std::panic::catch_unwind(|| allowing(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(!allowed(), "reset after the panic");
        assert!(
            !std::thread::spawn(|| allowing(|| std::thread::spawn(allowed).join().unwrap()))
                .join()
                .unwrap(),
            "not on another thread"
        );
    }
}
