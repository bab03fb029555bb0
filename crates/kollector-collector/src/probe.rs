//! One-time collection to test connection settings before saving a monitor.
//! The temporary client is closed before the answer is returned; nothing is
//! stored and the identity guard does not apply (there is nothing pinned yet).

use kollector_core::{CollectError, ErrorKind, MonitorSpec, Snapshot};
use kollector_kafka::{ClientOptions, KafkaClient};

pub async fn probe(spec: MonitorSpec, options: ClientOptions) -> Result<Snapshot, CollectError> {
    tokio::task::spawn_blocking(move || {
        let client = KafkaClient::connect(&spec, &options)?;
        let result = client.collect(&spec);
        drop(client);
        result
    })
    .await
    .map_err(|e| CollectError::new(ErrorKind::Panic, format!("probe panicked: {e}")))?
}
