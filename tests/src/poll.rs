//! Waiting for conditions with a deadline. Tests never sleep for a fixed time
//! and hope; they poll a condition and fail with a description when the
//! deadline passes.

use std::time::{Duration, Instant};

/// Polls `probe` every 100 ms until it returns `Some`, or panics naming
/// `what` and the last observation once `timeout` has passed.
pub fn wait_for<T, F>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Result<T, String>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The async twin of [`wait_for`], for tests that talk gRPC.
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `read` every 100 ms until its value has not changed for `quiet`
/// (a count that has settled: collections after a gate shut, a thread pool
/// after its idle threads left), or panics naming `what` once `timeout`
/// has passed; returns the settled value.
pub fn wait_unchanged<T, F>(what: &str, quiet: Duration, timeout: Duration, mut read: F) -> T
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> T,
{
    let mut last = read();
    let mut since = Instant::now();
    wait_for(what, timeout, || {
        let now = read();
        if now != last {
            (last, since) = (now, Instant::now());
            return Err(format!("{last:?}, changing"));
        }
        if since.elapsed() >= quiet {
            Ok(())
        } else {
            Err(format!("{last:?} for {:?}", since.elapsed()))
        }
    });
    last
}
