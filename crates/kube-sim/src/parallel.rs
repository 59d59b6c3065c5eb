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

#[cfg(test)]
mod tests {
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
