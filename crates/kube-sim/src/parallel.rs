//! Work split over the machine's cores for bulk loads (generating and parsing objects outside
//! the store's lock).

/// `f(0), f(1), … f(n - 1)` in order, computed in contiguous chunks on up to one thread per core.
pub(crate) fn map_indexed<U: Send>(n: usize, f: impl Fn(usize) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8)
        .min(n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads)
            .map(|t| s.spawn(move || (t * chunk..((t + 1) * chunk).min(n)).map(f).collect()))
            .collect();
        let mut out: Vec<U> = (0..chunk.min(n)).map(f).collect();
        for h in handles {
            // A panic in `f` is a bug; carry it to the caller as the sequential version would.
            match h.join() {
                Ok(part) => out.extend::<Vec<U>>(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// `consume(produce(0))`, `consume(produce(1))`, … for `batches` batches, with the next batch
/// produced on a helper thread while the caller consumes the current one (a bulk load generates
/// while the store takes the lock to insert). Stops at the first error.
pub(crate) fn pipeline<T: Send, E>(
    batches: usize,
    produce: impl Fn(usize) -> T + Sync,
    mut consume: impl FnMut(T) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let produce = &produce;
        s.spawn(move || {
            for b in 0..batches {
                // The consumer stopped (an error): nothing more to make.
                if tx.send(produce(b)).is_err() {
                    break;
                }
            }
        });
        rx.into_iter().try_for_each(&mut consume)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pipeline_consumes_every_batch_in_order_and_stops_at_an_error() {
        let mut seen = Vec::new();
        let r: Result<(), ()> = super::pipeline(
            5,
            |b| b * 10,
            |x| {
                seen.push(x);
                Ok(())
            },
        );
        assert_eq!((r, seen), (Ok(()), vec![0, 10, 20, 30, 40]));
        let mut seen = Vec::new();
        let r = super::pipeline(
            1000,
            |b| b,
            |x| {
                seen.push(x);
                if x == 2 {
                    Err(x)
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!((r, seen), (Err(2), vec![0, 1, 2]));
    }

    #[test]
    fn results_come_in_index_order_whatever_the_split() {
        for n in [0, 1, 2, 3, 7, 1000] {
            assert_eq!(
                super::map_indexed(n, |i| i * 2),
                (0..n).map(|i| i * 2).collect::<Vec<_>>()
            );
        }
    }
}
