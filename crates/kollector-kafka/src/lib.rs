//! One Kafka cluster's client and collection.
pub mod admin;
