//! Puts known data into a broker so what kollector reports can be compared
//! with ground truth: topics with a given partition count, an exact number of
//! records per partition, and committed offsets for a consumer group.
//!
//! tansu 0.6.0 reports the high watermark as (base offset of the last batch +
//! 1), so records are produced one per request (`linger.ms=0`,
//! `batch.num.messages=1`, each delivery awaited) to make the latest offset
//! equal the number of records.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::DevError;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Client settings for talking to a local broker.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("broker.address.family", "v4").set("log_level", "3");
    c
}

fn kafka<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> DevError + '_ {
    move |e| DevError::Kafka(format!("{what}: {e}"))
}

/// Creates `topic` with `partitions` partitions (replication 1), from async
/// code. A topic that exists already is fine.
pub async fn create_topic_async(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), DevError> {
    create_topic_with(client_config(bootstrap), topic, partitions).await
}

/// [`create_topic_async`] with a client built from `config` (e.g. with
/// TLS or SASL settings added to [`client_config`]).
pub async fn create_topic_with(config: ClientConfig, topic: &str, partitions: i32) -> Result<(), DevError> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(kafka("admin client"))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));
    for r in admin.create_topics([&new], &opts).await.map_err(kafka("create_topics"))? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(DevError::Kafka(format!("create topic {name}: {code}"))),
        }
    }
    Ok(())
}

/// [`create_topic_async`] for synchronous code (not from inside an async runtime).
pub fn try_create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), DevError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(kafka("runtime"))?;
    rt.block_on(create_topic_async(bootstrap, topic, partitions))
}

/// Produces `count` records to `topic`/`partition`, one request each, and
/// waits for every delivery.
pub fn try_produce_records(bootstrap: &str, topic: &str, partition: i32, count: usize) -> Result<(), DevError> {
    produce_records_with(client_config(bootstrap), topic, partition, count)
}

/// [`try_produce_records`] with a client built from `config`.
pub fn produce_records_with(
    mut config: ClientConfig,
    topic: &str,
    partition: i32,
    count: usize,
) -> Result<(), DevError> {
    let producer: BaseProducer = config
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("acks", "all")
        .create()
        .map_err(kafka("producer"))?;
    for i in 0..count {
        let (payload, key) = (format!("record-{i}"), format!("k{i}"));
        producer
            .send(BaseRecord::to(topic).partition(partition).key(&key).payload(&payload))
            .map_err(|(e, _)| DevError::Kafka(format!("enqueue record: {e}")))?;
        // Wait for this delivery before sending the next, so each record is its own batch.
        producer.flush(TIMEOUT).map_err(kafka("flush"))?;
    }
    Ok(())
}

/// Commits `offsets` [(topic, partition, offset)] for `group` without joining
/// it (a "simple" commit with no generation), as an admin tool would.
pub fn try_commit_offsets(bootstrap: &str, group: &str, offsets: &[(&str, i32, i64)]) -> Result<(), DevError> {
    commit_offsets_with(client_config(bootstrap), group, offsets)
}

/// [`try_commit_offsets`] with a client built from `config`.
pub fn commit_offsets_with(
    mut config: ClientConfig,
    group: &str,
    offsets: &[(&str, i32, i64)],
) -> Result<(), DevError> {
    let consumer: BaseConsumer =
        config.set("group.id", group).set("enable.auto.commit", "false").create().map_err(kafka("consumer"))?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).map_err(kafka("offset list"))?;
    }
    consumer.commit(&tpl, CommitMode::Sync).map_err(kafka("commit offsets"))
}

/// The cluster id a broker reports, read with a fresh client (dropped before returning).
pub fn try_cluster_id(bootstrap: &str) -> Result<String, DevError> {
    let consumer: BaseConsumer = client_config(bootstrap).create().map_err(kafka("client"))?;
    consumer.fetch_metadata(None, TIMEOUT).map_err(kafka("metadata"))?;
    consumer.client().fetch_cluster_id(TIMEOUT).ok_or_else(|| DevError::Kafka("no cluster id".into()))
}

fn or_panic<T>(r: Result<T, DevError>) -> T {
    r.unwrap_or_else(|e| panic!("fixture failed: {e}"))
}

/// [`try_create_topic`], panicking on failure (tests).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    or_panic(try_create_topic(bootstrap, topic, partitions))
}

/// [`try_produce_records`], panicking on failure (tests). Returns `count`.
pub fn produce_records(bootstrap: &str, topic: &str, partition: i32, count: usize) -> usize {
    or_panic(try_produce_records(bootstrap, topic, partition, count));
    count
}

/// [`try_commit_offsets`], panicking on failure (tests).
pub fn commit_offsets(bootstrap: &str, group: &str, offsets: &[(&str, i32, i64)]) {
    or_panic(try_commit_offsets(bootstrap, group, offsets))
}

/// [`try_cluster_id`], panicking on failure (tests).
pub fn cluster_id(bootstrap: &str) -> String {
    or_panic(try_cluster_id(bootstrap))
}

/// Copies a C string owned by librdkafka (e.g. a mock cluster's bootstrap list).
///
/// # Safety
/// `p` must be null or a valid NUL-terminated string for the duration of the call.
pub unsafe fn c_str(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
