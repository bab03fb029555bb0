//! A TCP proxy in front of a broker that counts the Kafka requests passing
//! through it, by API key, on the broker side of the client (librdkafka's
//! own statistics miss the OffsetFetch requests of its admin API). It reads
//! each request frame's length, API key and client id and forwards the
//! bytes as they are; answers are copied back untouched. Counts are kept
//! per client id too, so two programs watching the same broker (kollector
//! and klag-exporter in the comparison bench) are counted apart.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::tansu::TansuBroker;

/// Requests by (client id, API key).
type Counts = BTreeMap<(String, i16), u64>;

pub struct RequestCounter {
    address: String,
    counts: Arc<Mutex<Counts>>,
    stop: Arc<AtomicBool>,
}

impl Drop for RequestCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect(&self.address);
    }
}

impl RequestCounter {
    /// A tansu broker that advertises this counter's port, so every client,
    /// librdkafka's and the direct group connections alike, reaches it
    /// through the counter: bootstrap at [`RequestCounter::address`].
    pub fn in_front_of_tansu(cluster_id: &str) -> (TansuBroker, RequestCounter) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the counting proxy");
        let port = listener.local_addr().expect("its address").port();
        let broker = TansuBroker::start_advertising(cluster_id, crate::free_port(), port);
        let counter = RequestCounter::serve(listener, &broker.bootstrap());
        (broker, counter)
    }

    /// Listens on a free loopback port and forwards to `upstream` (host:port).
    pub fn start(upstream: &str) -> RequestCounter {
        RequestCounter::serve(TcpListener::bind("127.0.0.1:0").expect("bind the counting proxy"), upstream)
    }

    /// Serves on `listener` (bound first, so a broker can advertise its
    /// port and every client, librdkafka's too, comes through it).
    pub fn serve(listener: TcpListener, upstream: &str) -> RequestCounter {
        // Accepts block: a non-blocking listener (as `kafka_security::bind`
        // makes) would spin a core in the accept loop.
        listener.set_nonblocking(false).expect("a blocking listener");
        let address = listener.local_addr().expect("its address").to_string();
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (upstream, c, s) = (upstream.to_string(), counts.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (mut from_client, mut to_server) =
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let counts = c.clone();
                std::thread::spawn(move || {
                    let mut len = [0u8; 4];
                    while from_client.read_exact(&mut len).is_ok() {
                        let n = i32::from_be_bytes(len).max(0) as usize;
                        let mut frame = vec![0u8; n];
                        if from_client.read_exact(&mut frame).is_err() {
                            break;
                        }
                        if n >= 2 {
                            let api = i16::from_be_bytes([frame[0], frame[1]]);
                            *counts.lock().unwrap().entry((client_id(&frame), api)).or_default() += 1;
                        }
                        if to_server.write_all(&len).and_then(|_| to_server.write_all(&frame)).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Both);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Both);
                });
            }
        });
        RequestCounter { address, counts, stop }
    }

    /// Where clients connect (host:port).
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// Requests seen so far, by Kafka API key.
    pub fn counts(&self) -> BTreeMap<i16, u64> {
        self.counts_from("")
    }

    /// Requests seen so far from clients whose id starts with `prefix`, by
    /// Kafka API key.
    pub fn counts_from(&self, prefix: &str) -> BTreeMap<i16, u64> {
        let mut by_api = BTreeMap::new();
        for ((client, api), n) in self.counts.lock().unwrap().iter() {
            if client.starts_with(prefix) {
                *by_api.entry(*api).or_default() += n;
            }
        }
        by_api
    }

    /// Forgets the counts so far.
    pub fn reset(&self) {
        self.counts.lock().unwrap().clear();
    }
}

/// The client id of a request header (v1 and later: api key, api version,
/// correlation id, then a nullable i16-length string); "" when absent.
fn client_id(frame: &[u8]) -> String {
    let Some(len) = frame.get(8..10).map(|b| i16::from_be_bytes([b[0], b[1]])) else { return String::new() };
    if len <= 0 {
        return String::new();
    }
    frame.get(10..10 + len as usize).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// A Kafka API key's name ("OffsetFetch"), or the number if unknown.
pub fn api_name(key: i16) -> String {
    kollector_kafka::wire::ApiKey::try_from(key).map(|k| format!("{k:?}")).unwrap_or_else(|_| key.to_string())
}
