//! Locks that outlive a panic. A thread that panicked while holding one of
//! these left a value that is still whole (every writer here replaces or
//! edits it in one step), so the next user takes it as it is instead of
//! turning one panic into a panic on every later call.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering the guard of a poisoned one.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_gives_its_value() {
        let shared = std::sync::Arc::new(Mutex::new(7));
        let holder = std::sync::Arc::clone(&shared);
        let _ = std::thread::spawn(move || {
            let _guard = lock(&holder);
            std::panic::panic_any("poison it");
        })
        .join();
        assert!(shared.is_poisoned());
        assert_eq!(*lock(&shared), 7);
    }
}
