//! Work read ahead of an in-order consumer: items `0..n` (a chunk's head, a decoded chunk)
//! made on worker threads, and by the consumer itself while its next item is not ready, and
//! consumed in index order on the calling thread. The consumer sees exactly the items, in the
//! order, of a one-thread loop, so what it computes does not depend on the number of threads.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::trace::{Scratch, TraceError};

struct Shared<T> {
    /// next item to make
    next: usize,
    /// next item the consumer takes
    consumed: usize,
    /// made and not yet taken
    ready: BTreeMap<usize, T>,
    /// items taken, their buffers reused
    spare: Vec<T>,
    /// the consumer stopped (an error, or it unwound): workers leave
    stop: bool,
    /// a worker unwound: the consumer makes what it had claimed
    failed: bool,
}

fn lock<T>(m: &Mutex<Shared<T>>) -> MutexGuard<'_, Shared<T>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets its flag and wakes the other side when dropped, also while unwinding: neither side
/// waits forever for one that is gone.
struct Leave<'a, T> {
    shared: &'a Mutex<Shared<T>>,
    wake: &'a Condvar,
    worker: bool,
}

impl<T> Drop for Leave<'_, T> {
    fn drop(&mut self) {
        let mut s = lock(self.shared);
        if self.worker {
            s.failed |= std::thread::panicking();
        } else {
            s.stop = true;
        }
        drop(s);
        self.wake.notify_all();
    }
}

/// `consume(i, item)` for i in `0..n`, in order, on this thread; `make(i, scratch, spare)`
/// makes item i (reusing `spare`, an item consumed before, when there is one) on `workers`
/// threads and on this one while item i is not ready. At most `window` items are made ahead
/// of the consumer (held ready or being made). Stops at the first error of `consume`.
pub(crate) fn in_order<T: Send>(
    n: usize,
    workers: usize,
    window: usize,
    make: &(dyn Fn(usize, &mut Scratch, Option<T>) -> T + Sync),
    mut consume: impl FnMut(usize, &mut T) -> Result<(), TraceError>,
) -> Result<(), TraceError> {
    let mut scratch = Scratch::default();
    if workers == 0 || n < 2 {
        let mut spare = None;
        for i in 0..n {
            let mut item = make(i, &mut scratch, spare.take());
            consume(i, &mut item)?;
            spare = Some(item);
        }
        return Ok(());
    }
    let window = window.max(1);
    let shared = Mutex::new(Shared {
        next: 0,
        consumed: 0,
        ready: BTreeMap::new(),
        spare: Vec::new(),
        stop: false,
        failed: false,
    });
    let (work, done) = (Condvar::new(), Condvar::new());
    std::thread::scope(|scope| {
        let makers: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let _leave = Leave { shared: &shared, wake: &done, worker: true };
                    let mut scratch = Scratch::default();
                    loop {
                        let (i, spare) = {
                            let mut s = lock(&shared);
                            while !s.stop && s.next < n && s.next >= s.consumed + window {
                                s = work.wait(s).unwrap_or_else(|p| p.into_inner());
                            }
                            if s.stop || s.next >= n {
                                return;
                            }
                            s.next += 1;
                            (s.next - 1, s.spare.pop())
                        };
                        let item = make(i, &mut scratch, spare);
                        lock(&shared).ready.insert(i, item);
                        done.notify_all();
                    }
                })
            })
            .collect();
        let leave = Leave { shared: &shared, wake: &work, worker: false };
        let out = (|| {
            for i in 0..n {
                let mut item = loop {
                    let mut s = lock(&shared);
                    if let Some(item) = s.ready.remove(&i) {
                        break item;
                    }
                    // Not ready: this thread makes the next item itself (item i when no worker has
                    // claimed it, else a later one within the window) rather than wait; or item i
                    // when the worker that claimed it unwound.
                    let mine = if s.next <= i {
                        s.next = i + 1;
                        Some(i)
                    } else if s.failed {
                        Some(i)
                    } else if s.next < n && s.next < s.consumed + window {
                        s.next += 1;
                        Some(s.next - 1)
                    } else {
                        None
                    };
                    match mine {
                        Some(j) => {
                            let spare = s.spare.pop();
                            drop(s);
                            let item = make(j, &mut scratch, spare);
                            if j == i {
                                break item;
                            }
                            lock(&shared).ready.insert(j, item);
                        }
                        None => drop(done.wait(s).unwrap_or_else(|p| p.into_inner())),
                    }
                };
                let r = consume(i, &mut item);
                let mut s = lock(&shared);
                s.spare.push(item);
                s.consumed = i + 1;
                drop(s);
                work.notify_all();
                r?;
            }
            Ok(())
        })();
        // The makers stop, and are joined here: one that unwound is not the scope's panic
        // (its items were made on this thread).
        drop(leave);
        for m in makers {
            let _ = m.join();
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_in_order_whatever_the_threads() {
        for workers in 0..4 {
            for window in [1, 2, 5] {
                let mut seen = Vec::new();
                in_order(
                    50,
                    workers,
                    window,
                    &|i, _, spare: Option<Vec<usize>>| {
                        let mut v = spare.unwrap_or_default();
                        v.clear();
                        v.push(i * 3);
                        v
                    },
                    |i, item| {
                        seen.push((i, item[0]));
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(seen, (0..50).map(|i| (i, i * 3)).collect::<Vec<_>>(), "{workers} workers, window {window}");
            }
        }
    }

    #[test]
    fn an_error_stops_the_consumer_and_the_workers() {
        let mut seen = 0;
        let r = in_order(
            1000,
            2,
            4,
            &|i, _, _: Option<()>| {
                let _ = i;
            },
            |i, _| {
                seen += 1;
                if i == 10 {
                    return Err(TraceError::Writer { what: "stop".into() });
                }
                Ok(())
            },
        );
        assert!(r.is_err());
        assert_eq!(seen, 11);
    }

    #[test]
    fn a_worker_that_unwinds_leaves_its_items_to_the_consumer() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let tries = AtomicUsize::new(0);
        let mut seen = Vec::new();
        let make = |i: usize, _: &mut Scratch, _: Option<usize>| {
            // the worker (the test's thread has a name) unwinds at its first item
            if std::thread::current().name().is_none() {
                tries.fetch_add(1, SeqCst);
                panic!("test: a maker unwinds");
            }
            i
        };
        in_order(20, 1, 3, &make, |i, item| {
            // the worker has claimed an item before the consumer goes on
            while tries.load(SeqCst) == 0 {
                std::thread::yield_now();
            }
            seen.push((i, *item));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..20).map(|i| (i, i)).collect::<Vec<_>>());
        assert_eq!(tries.load(SeqCst), 1);
    }
}
