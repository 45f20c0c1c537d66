//! Test-only hooks (feature `test-util`): let tests act at precise points of a transfer, e.g.
//! change or delete a source file between the scan and the read. Never built into releases.

use std::sync::{Mutex, OnceLock};

type Hook = Box<dyn Fn(&[u8]) + Send + Sync>;

static BEFORE_READ: OnceLock<Mutex<Option<Hook>>> = OnceLock::new();

/// Runs `hook` with the relative path of every source file just before the sender opens it.
/// Hooks are process-wide: use them only in a test binary of their own.
pub fn set_before_read(hook: impl Fn(&[u8]) + Send + Sync + 'static) {
    *BEFORE_READ.get_or_init(|| Mutex::new(None)).lock().expect("hook lock") = Some(Box::new(hook));
}

/// Removes the hook.
pub fn clear_before_read() {
    if let Some(hook) = BEFORE_READ.get() {
        *hook.lock().expect("hook lock") = None;
    }
}

pub(crate) fn before_read(path: &[u8]) {
    if let Some(hook) = BEFORE_READ.get()
        && let Some(hook) = hook.lock().expect("hook lock").as_ref()
    {
        hook(path);
    }
}
