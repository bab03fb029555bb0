//! Puts known data into a broker so tests can compare what kollector reports
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

const TIMEOUT: Duration = Duration::from_secs(15);

fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("broker.address.family", "v4").set("log_level", "3");
    c
}

/// Creates `topic` with `partitions` partitions (replication 1) and waits for
/// the create to succeed.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap).create().expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let results = rt.block_on(admin.create_topics([&new], &opts)).expect("create_topics");
    for r in results {
        if let Err((name, code)) = r {
            panic!("create topic {name}: {code}");
        }
    }
}

/// Produces `count` records to `topic`/`partition`, one request each, and
/// waits for every delivery. Returns the number delivered (== count or panics).
pub fn produce_records(bootstrap: &str, topic: &str, partition: i32, count: usize) -> usize {
    let producer: BaseProducer = base_config(bootstrap)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..count {
        let payload = format!("record-{i}");
        let key = format!("k{i}");
        producer
            .send(BaseRecord::to(topic).partition(partition).key(&key).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("enqueue record");
        // Wait for this delivery before sending the next, so each record is its own batch.
        producer.flush(TIMEOUT).expect("flush");
    }
    count
}

/// Commits `offsets` [(topic, partition, offset)] for `group` without joining
/// it (a "simple" commit with no generation), as an admin tool would.
pub fn commit_offsets(bootstrap: &str, group: &str, offsets: &[(&str, i32, i64)]) {
    let consumer: BaseConsumer =
        base_config(bootstrap).set("group.id", group).set("enable.auto.commit", "false").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).expect("tpl add");
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit offsets");
}

/// The cluster id a broker reports, read with a fresh client (which is
/// dropped before returning).
pub fn cluster_id(bootstrap: &str) -> String {
    let consumer: BaseConsumer = base_config(bootstrap).create().expect("client");
    consumer.fetch_metadata(None, TIMEOUT).expect("metadata");
    consumer.client().fetch_cluster_id(TIMEOUT).expect("cluster id")
}
