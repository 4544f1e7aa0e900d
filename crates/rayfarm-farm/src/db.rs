//! The job store on its own thread: SQLite commits (each one an fsync, `synchronous=FULL`) never
//! run on a tokio worker thread.
//!
//! [`StoreHandle::call`] sends a closure to the thread that owns the [`Store`] and awaits its
//! answer; calls run one at a time, in the order they were made, so every closure sees the
//! store as the previous one left it (the same guarantee the mutex gave, without blocking the
//! runtime). The thread ends when the last handle is dropped.

use crate::store::Store;
use std::sync::mpsc;

type Call = Box<dyn FnOnce(&mut Store) + Send>;

/// A cheap, cloneable handle on the store's thread.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Call>,
}

impl StoreHandle {
    /// Moves `store` to a new thread, `rayfarm-store`.
    pub fn spawn(mut store: Store) -> std::io::Result<StoreHandle> {
        let (tx, rx) = mpsc::channel::<Call>();
        std::thread::Builder::new()
            .name("rayfarm-store".into())
            .spawn(move || {
                for call in rx {
                    // A panicking call drops its answer channel (the caller then panics with a
                    // clear message); the store and the thread go on.
                    let _ =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&mut store)));
                }
            })?;
        Ok(StoreHandle { tx })
    }

    /// Runs `f` on the store's thread and returns its answer.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(Box::new(move |s: &mut Store| {
            let _ = tx.send(f(s));
        }));
        if sent.is_err() {
            panic!("the job store's thread has stopped");
        }
        rx.await
            .unwrap_or_else(|_| panic!("a job store call panicked (see the log above)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn calls_run_in_order_off_the_runtime_thread() {
        let h = StoreHandle::spawn(Store::open_in_memory().unwrap()).unwrap();
        let runtime_thread = std::thread::current().id();
        let on = h.call(|_| std::thread::current().id()).await;
        assert_ne!(on, runtime_thread);
        let mut answers = Vec::new();
        for i in 0..20 {
            answers.push(h.call(move |s| (i, s.list_jobs().unwrap().len())).await);
        }
        assert_eq!(
            answers.iter().map(|a| a.0).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_call_leaves_the_store_usable() {
        let h = StoreHandle::spawn(Store::open_in_memory().unwrap()).unwrap();
        let h2 = h.clone();
        let r = tokio::spawn(async move { h2.call(|_| -> () { panic!("boom") }).await }).await;
        assert!(r.is_err());
        assert_eq!(h.call(|s| s.list_jobs().unwrap().len()).await, 0);
    }
}
