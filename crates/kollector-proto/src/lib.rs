//! kollector's gRPC contract.
//!
//! `proto/kollector/v1/*.proto` is the single source of truth for the wire;
//! this crate compiles it (tonic + prost) and converts between wire messages
//! and `kollector-core` types, so services and the CLI never hand-map fields.
//! Conversions to the wire drop secrets: read APIs say whether a password is
//! set, never what it is.

pub mod v1 {
    tonic::include_proto!("kollector.v1");

    // Debug for the messages that carry passwords: every field but those.
    impl std::fmt::Debug for SaslInput {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SaslInput")
                .field("mechanism", &self.mechanism)
                .field("username", &self.username)
                .field("password", &if self.password.is_empty() { "" } else { "<redacted>" })
                .field("token_endpoint", &self.token_endpoint)
                .field("scope", &self.scope)
                .field("extensions", &self.extensions)
                .field("ca_file", &self.ca_file)
                .field("aws_region", &self.aws_region)
                .finish()
        }
    }
    impl std::fmt::Debug for TlsInput {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TlsInput")
                .field("ca_file", &self.ca_file)
                .field("cert_file", &self.cert_file)
                .field("key_file", &self.key_file)
                .field("key_password", &if self.key_password.is_empty() { "" } else { "<redacted>" })
                .field("insecure_skip_verify", &self.insecure_skip_verify)
                .finish()
        }
    }
}

mod convert;
pub mod transport;

/// Reads every page of a paged call (ListMonitors, GetLatest,
/// GetAssignments): `page` is called with each page token in turn (the first
/// empty) and returns the page and the next token, until one comes back
/// without a next token. Tokens are monitor ids in order: one that does not
/// move forward (a broken server) ends the reading with `stuck(token)`
/// rather than a loop.
pub async fn every_page<P, E, Fut>(
    mut page: impl FnMut(String) -> Fut,
    stuck: impl FnOnce(String) -> E,
) -> Result<Vec<P>, E>
where
    Fut: std::future::Future<Output = Result<(P, String), E>>,
{
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let (p, next) = page(token.clone()).await?;
        pages.push(p);
        if next.is_empty() {
            return Ok(pages);
        }
        if next <= token {
            return Err(stuck(next));
        }
        token = next;
    }
}

/// A page token that did not move forward (a broken server), as the error
/// the paged readers below return.
pub fn stuck_page_token(token: String) -> tonic::Status {
    tonic::Status::internal(format!("the server's page token {token:?} does not move forward"))
}

/// What a ManagerService client runs over (a plain channel, or one with an
/// interceptor adding a bearer token): the bounds tonic's generated client
/// puts on its methods, named once.
pub trait ManagerTransport:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<tonic::codegen::StdError>,
        ResponseBody: tonic::codegen::Body<
            Data = tonic::codegen::Bytes,
            Error: Into<tonic::codegen::StdError> + Send,
        > + Send
                          + 'static,
    > + Clone
{
}

impl<T> ManagerTransport for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
            ResponseBody: tonic::codegen::Body<
                Data = tonic::codegen::Bytes,
                Error: Into<tonic::codegen::StdError> + Send,
            > + Send
                              + 'static,
        > + Clone
{
}

type Manager<T> = v1::manager_service_client::ManagerServiceClient<T>;

/// Every monitor (ListMonitors), page by page: one reader for the CLI and the tests.
pub async fn all_monitors<T: ManagerTransport>(client: &Manager<T>) -> Result<Vec<v1::MonitorInfo>, tonic::Status> {
    let pages = every_page(
        |page_token| {
            let mut c = client.clone();
            async move {
                let r =
                    c.list_monitors(v1::ListMonitorsRequest { page_token, ..Default::default() }).await?.into_inner();
                Ok((r.monitors, r.next_page_token))
            }
        },
        stuck_page_token,
    );
    Ok(pages.await?.into_iter().flatten().collect())
}

/// Every monitor's latest result (snapshots left out if `summary`), page by page.
pub async fn all_latest<T: ManagerTransport>(
    client: &Manager<T>,
    summary: bool,
) -> Result<Vec<v1::MonitorResult>, tonic::Status> {
    let pages = every_page(
        |page_token| {
            let mut c = client.clone();
            async move {
                let req = v1::GetLatestRequest { summary, page_token, ..Default::default() };
                let r = c.get_latest(req).await?.into_inner();
                Ok((r.results, r.next_page_token))
            }
        },
        stuck_page_token,
    );
    Ok(pages.await?.into_iter().flatten().collect())
}

/// Every page of GetAssignments, whole (the first page alone carries
/// `invalid` and `secrets_on_old_keys`).
pub async fn all_assignment_pages<T: ManagerTransport>(
    client: &Manager<T>,
) -> Result<Vec<v1::GetAssignmentsResponse>, tonic::Status> {
    every_page(
        |page_token| {
            let mut c = client.clone();
            async move {
                let r = c
                    .get_assignments(v1::GetAssignmentsRequest { page_token, ..Default::default() })
                    .await?
                    .into_inner();
                let next = r.next_page_token.clone();
                Ok((r, next))
            }
        },
        stuck_page_token,
    )
    .await
}

/// The answer to ListRunning for `monitors` (sorted here): the whole list
/// and its digest, or, when the caller holds a list of the same digest
/// (`unless_digest`), `unchanged` and no list. One place for collectors and
/// the simulated ones alike.
pub fn list_running_answer(
    collector_id: String,
    lease: i64,
    mut monitors: Vec<v1::RunningMonitor>,
    unless_digest: u64,
) -> v1::ListRunningResponse {
    let digest = running_digest(&mut monitors);
    let unchanged = unless_digest == digest;
    if unchanged {
        monitors.clear();
    }
    v1::ListRunningResponse { collector_id, monitors, lease, digest, unchanged }
}

/// Sorts a collector's running list by monitor id and digests it: what a
/// ListRunning answer carries in `digest`, so that a caller holding the same
/// list can be answered `unchanged` (no list). Only the collector that made
/// a digest compares it, so std's hasher (stable within a build) suffices.
/// Never 0 (0 means "no digest" in a request).
pub fn running_digest(monitors: &mut [v1::RunningMonitor]) -> u64 {
    use std::hash::{Hash, Hasher};
    monitors.sort_by(|a, b| a.monitor_id.cmp(&b.monitor_id));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in monitors.iter() {
        (&m.monitor_id, m.generation, m.epoch, m.stopping).hash(&mut h);
    }
    h.finish().max(1)
}

pub use convert::{
    error_from_proto, history_from_proto, history_to_proto, input_from_proto, input_to_proto, monitor_view,
    result_from_proto, result_to_proto, snapshot_from_proto, snapshot_to_proto, status_from_proto, status_to_proto,
};
pub use transport::{GrpcLimits, DEFAULT_MAX_MESSAGE_BYTES};

#[cfg(test)]
mod debug_tests {
    #[test]
    fn debug_output_never_shows_a_password() {
        let s = super::v1::MonitorSpecInput {
            sasl: Some(super::v1::SaslInput {
                mechanism: "PLAIN".into(),
                username: "u".into(),
                password: "hunter2".into(),
                ..Default::default()
            }),
            tls: Some(super::v1::TlsInput { key_password: "keypass".into(), ..Default::default() }),
            ..Default::default()
        };
        let text = format!("{s:?} {:#?}", super::v1::CreateMonitorRequest { spec: Some(s.clone()) });
        assert!(!text.contains("hunter2") && !text.contains("keypass") && text.contains("<redacted>"), "{text}");
    }
}

#[cfg(test)]
mod paging_tests {
    use super::*;

    /// Drives a future that never waits (the pages here are ready at once).
    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a ready future was pending"),
        }
    }

    fn read(script: &[(&'static str, &'static str)]) -> (Result<Vec<&'static str>, String>, Vec<String>) {
        let mut seen = Vec::new();
        let out = now(every_page(
            |token| {
                seen.push(token);
                let (page, next) = script[seen.len() - 1];
                async move { Ok::<_, String>((page, next.to_string())) }
            },
            |t| format!("stuck at {t}"),
        ));
        (out, seen)
    }

    #[test]
    fn every_page_follows_tokens_to_the_end_and_stops_on_one_that_does_not_move() {
        let (out, seen) = read(&[("a", "m1"), ("b", "m5"), ("c", "")]);
        assert_eq!(out, Ok(vec!["a", "b", "c"]));
        assert_eq!(seen, vec!["", "m1", "m5"]);
        assert_eq!(read(&[("a", "m5"), ("b", "m5")]).0, Err("stuck at m5".to_string()));
        assert_eq!(read(&[("a", "m5"), ("b", "m1")]).0, Err("stuck at m1".to_string()));
    }

    #[test]
    fn an_unchanged_list_is_answered_by_its_digest_alone() {
        let m = |id: &str, epoch| v1::RunningMonitor { monitor_id: id.into(), generation: 1, epoch, stopping: false };
        let full = list_running_answer("c1".into(), 7, vec![m("b", 2), m("a", 1)], 0);
        assert!(!full.unchanged && full.digest != 0);
        assert_eq!(full.monitors.iter().map(|m| m.monitor_id.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        let same = list_running_answer("c1".into(), 7, vec![m("a", 1), m("b", 2)], full.digest);
        assert!(same.unchanged && same.monitors.is_empty(), "the same list in another order: unchanged");
        let moved = list_running_answer("c1".into(), 7, vec![m("a", 1), m("b", 3)], full.digest);
        assert!(!moved.unchanged && moved.monitors.len() == 2, "another epoch is a change");
    }
}
