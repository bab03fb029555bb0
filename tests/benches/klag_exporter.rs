//! kollector next to klag-exporter 0.1.29, watching the same tansu clusters
//! in one run (prints figures; recorded in BENCHMARKS.md):
//!
//!   cargo install klag-exporter --version 0.1.29 --locked   # once; needs libsasl2-dev libcurl4-openssl-dev cmake
//!   cargo build --release -p kollector && cargo bench -p kollector-tests --bench klag_exporter
//!
//! (about 10 minutes; `KLAG_EXPORTER` names the binary if it is not on PATH
//! or in ~/.cargo/bin; `KLAG_SIZES=1,20` picks the numbers of clusters.)
//!
//! Each cluster is its own tansu broker, behind a counting proxy that tansu
//! advertises, so every request of both programs passes through it and is
//! counted per program (by the client id in each request header). Each
//! holds two topics (orders: 4 partitions, payments: 2) and four consumer
//! groups with known commits. For 1, 20 and 100 clusters both programs run
//! at the same time, at the same 10 s interval, one process each:
//! - every (cluster, group, topic, partition) must have the same committed
//!   offset and lag in both, equal to what the fixtures wrote;
//! - then over a 60 s window: CPU (% of one core), RSS and threads at its
//!   end, and Kafka requests per cluster per cycle by API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::kollector::{http_get, KollectorProcess};
use kollector_tests::metrics::Metrics;
use kollector_tests::net::{rss_kib, thread_count};
use kollector_tests::poll::wait_for;
use kollector_tests::proc_stat::cpu_seconds;
use kollector_tests::request_counter::{api_name, RequestCounter};
use kollector_tests::tansu::TansuBroker;

const INTERVAL_S: u64 = 10;
const WINDOW: Duration = Duration::from_secs(60);
const TOPICS: [(&str, i32); 2] = [("orders", 4), ("payments", 2)];
const GROUPS: usize = 4;

/// Log end of a partition: 10 + 3p records.
fn records(partition: i32) -> i64 {
    10 + 3 * partition as i64
}

/// Group g's commit on a partition: somewhere in 0..=end, different per group.
fn committed(group: usize, partition: i32) -> i64 {
    (group as i64 * 3 + partition as i64 * 2) % (records(partition) + 1)
}

struct Cluster {
    name: String,
    counter: RequestCounter,
    _broker: TansuBroker,
}

fn start_cluster(i: usize) -> Cluster {
    let name = format!("cmp-{i:03}");
    let (broker, counter) = RequestCounter::in_front_of_tansu(&name);
    let bs = counter.address();
    for (topic, partitions) in TOPICS {
        create_topic(&bs, topic, partitions);
        for p in 0..partitions {
            produce_records(&bs, topic, p, records(p) as usize);
        }
    }
    for g in 0..GROUPS {
        let commits: Vec<(&str, i32, i64)> = TOPICS
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (*t, p, committed(g, p))))
            .filter(|(_, _, c)| *c > 0)
            .collect();
        commit_offsets(&bs, &format!("group-{g}"), &commits);
    }
    Cluster { name, counter, _broker: broker }
}

fn klag_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KLAG_EXPORTER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([home.join(".cargo/bin")])
        .map(|d| d.join("klag-exporter"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            eprintln!("klag-exporter not found: cargo install klag-exporter --version 0.1.29 --locked");
            std::process::exit(1)
        })
}

struct Klag {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Klag {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_klag(clusters: &[Cluster]) -> Klag {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = kollector_tests::free_port();
    let mut config = format!(
        "[exporter]\npoll_interval = \"{INTERVAL_S}s\"\nhttp_port = {port}\nhttp_host = \"127.0.0.1\"\ngranularity = \"partition\"\n\n"
    );
    for c in clusters {
        config.push_str(&format!(
            "[[clusters]]\nname = \"{}\"\nbootstrap_servers = \"{}\"\ngroup_whitelist = [\".*\"]\ngroup_blacklist = []\ntopic_whitelist = [\".*\"]\ntopic_blacklist = [\"^__.*\"]\n[clusters.consumer_properties]\n\"client.id\" = \"klag-exporter\"\n\n",
            c.name,
            c.counter.address()
        ));
    }
    let path = dir.path().join("klag.toml");
    std::fs::write(&path, config).expect("write klag config");
    let child = Command::new(klag_binary())
        .arg("--config")
        .arg(&path)
        .arg("--log-level")
        .arg("warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start klag-exporter");
    Klag { child, port, _dir: dir }
}

fn start_kollector(clusters: &[Cluster]) -> KollectorProcess {
    let mut monitors = String::new();
    for c in clusters {
        monitors.push_str(&format!(
            "[[monitors]]\nid = \"{}\"\nbootstrap = [\"{}\"]\ninterval = \"{INTERVAL_S}s\"\n\n",
            c.name,
            c.counter.address()
        ));
    }
    KollectorProcess::standalone(&monitors)
}

/// (cluster, group, topic, partition) -> (committed, lag).
type Answers = BTreeMap<(String, String, String, i32), (i64, i64)>;

fn truth(clusters: &[Cluster]) -> Answers {
    let mut out = Answers::new();
    for c in clusters {
        for g in 0..GROUPS {
            for (topic, n) in TOPICS {
                for p in 0..n {
                    let committed = committed(g, p);
                    if committed > 0 {
                        out.insert(
                            (c.name.clone(), format!("group-{g}"), topic.to_string(), p),
                            (committed, records(p) - committed),
                        );
                    }
                }
            }
        }
    }
    out
}

fn answers(m: &Metrics, cluster_label: &str, group_label: &str, offset: &str, lag: &str) -> Answers {
    let mut out = Answers::new();
    for s in m.find(offset, &[]) {
        let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        if l("topic").starts_with("__") {
            continue;
        }
        let Ok(partition) = l("partition").parse::<i32>() else { continue };
        let key = (l(cluster_label), l(group_label), l("topic"), partition);
        let lag_labels: Vec<(&str, &str)> = [cluster_label, group_label, "topic", "partition"]
            .iter()
            .map(|k| (*k, s.labels.get(*k).map(String::as_str).unwrap_or("")))
            .collect();
        let lag_value = m.find(lag, &lag_labels).first().map(|s| s.value as i64).unwrap_or(-1);
        out.insert(key, (s.value as i64, lag_value));
    }
    out
}

fn kollector_answers(k: &KollectorProcess) -> Answers {
    answers(&k.metrics(), "monitor", "consumergroup", "kafka_consumergroup_current_offset", "kafka_consumergroup_lag")
}

fn klag_answers(klag: &Klag) -> Answers {
    let Ok((200, text)) = http_get(&format!("127.0.0.1:{}", klag.port), "/metrics") else { return Answers::new() };
    let Ok(m) = Metrics::parse(&text) else { return Answers::new() };
    answers(&m, "cluster_name", "group", "kafka_consumergroup_group_offset", "kafka_consumergroup_group_lag")
}

struct Usage {
    cpu_percent: f64,
    rss_mib: f64,
    threads: u64,
    requests: BTreeMap<i16, u64>,
}

fn main() {
    let sizes: Vec<usize> = std::env::var("KLAG_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 20, 100]);
    let most = sizes.iter().copied().max().unwrap_or(1);
    let started = Instant::now();
    // Clusters are set up a few at a time (each set-up is a handful of
    // blocking client calls).
    let mut clusters: Vec<Cluster> = Vec::with_capacity(most);
    for chunk in (0..most).collect::<Vec<_>>().chunks(8) {
        let made: Vec<Cluster> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|&i| s.spawn(move || start_cluster(i))).collect();
            handles.into_iter().map(|h| h.join().expect("cluster set-up")).collect()
        });
        clusters.extend(made);
    }
    eprintln!("{most} clusters ready in {:.0?}", started.elapsed());

    println!("| clusters | program | CPU (% core) | RSS (MiB) | threads | requests per cluster per cycle | by API (per cluster per cycle) |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let watched = &clusters[..n];
        let expected = truth(watched);
        let kollector = start_kollector(watched);
        let klag = start_klag(watched);
        wait_for(&format!("both programs report all {n} clusters"), Duration::from_secs(300), || {
            let (a, b) = (kollector_answers(&kollector), klag_answers(&klag));
            if a == expected && b == expected {
                Ok(())
            } else {
                Err(format!(
                    "kollector {}/{} right, klag-exporter {}/{} right",
                    expected.iter().filter(|(k, v)| a.get(*k) == Some(*v)).count(),
                    expected.len(),
                    expected.iter().filter(|(k, v)| b.get(*k) == Some(*v)).count(),
                    expected.len()
                ))
            }
        });
        // Both agree with each other and with the fixtures for every
        // partition of every group: the figures below are for right answers.
        for c in watched {
            c.counter.reset();
        }
        let pids = [("kollector", kollector.pid()), ("klag-exporter", klag.child.id())];
        let cpu0: Vec<f64> = pids.iter().map(|(_, p)| cpu_seconds(*p).unwrap_or(0.0)).collect();
        std::thread::sleep(WINDOW); // the measurement window itself
        let cycles = (WINDOW.as_secs() / INTERVAL_S) as f64 * n as f64;
        for (i, (name, pid)) in pids.iter().enumerate() {
            let mut requests = BTreeMap::new();
            let prefix = if *name == "kollector" { "kollector" } else { "klag" };
            for c in watched {
                for (api, k) in c.counter.counts_from(prefix) {
                    *requests.entry(api).or_default() += k;
                }
            }
            let u = Usage {
                cpu_percent: (cpu_seconds(*pid).unwrap_or(0.0) - cpu0[i]) / WINDOW.as_secs_f64() * 100.0,
                rss_mib: rss_kib(*pid).unwrap_or(0) as f64 / 1024.0,
                threads: thread_count(*pid).unwrap_or(0),
                requests,
            };
            let total: u64 = u.requests.values().sum();
            let by_api: Vec<String> =
                u.requests.iter().map(|(api, k)| format!("{} {:.1}", api_name(*api), *k as f64 / cycles)).collect();
            println!(
                "| {n} | {name} | {:.1} | {:.1} | {} | {:.1} | {} |",
                u.cpu_percent,
                u.rss_mib,
                u.threads,
                total as f64 / cycles,
                by_api.join(", ")
            );
        }
        // Still right at the end of the window.
        assert_eq!(kollector_answers(&kollector), expected, "kollector's answers");
        assert_eq!(klag_answers(&klag), expected, "klag-exporter's answers");
    }
}
