//! DescribeCluster: cluster id, controller and brokers with their racks.

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys::bindings as ffi;

use super::{c_array, call, owned, owned_opt, AdminError};
use crate::deadline::Deadline;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerNode {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: Option<String>,
    pub controller_id: Option<i32>,
    pub brokers: Vec<BrokerNode>,
}

/// Copies a node.
///
/// # Safety
/// `node` must be null or a valid node for the duration of the call.
pub(crate) unsafe fn node(node: *const ffi::rd_kafka_Node_t) -> Option<BrokerNode> {
    if node.is_null() {
        return None;
    }
    Some(BrokerNode {
        id: ffi::rd_kafka_Node_id(node),
        host: owned(ffi::rd_kafka_Node_host(node)),
        port: ffi::rd_kafka_Node_port(node),
        rack: owned_opt(ffi::rd_kafka_Node_rack(node)),
    })
}

/// One DescribeCluster request (to any broker).
pub fn describe_cluster<C: ClientContext>(
    client: &Client<C>,
    deadline: impl Into<Deadline>,
) -> Result<ClusterDescription, AdminError> {
    const OP: &str = "DescribeCluster";
    let event = call(
        client,
        OP,
        ffi::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECLUSTER,
        ffi::RD_KAFKA_EVENT_DESCRIBECLUSTER_RESULT,
        deadline.into(),
        // SAFETY: live client handle, options and queue; librdkafka copies the options.
        |rk, options, queue| unsafe { ffi::rd_kafka_DescribeCluster(rk, options, queue) },
    )?;
    // SAFETY: the event is a DescribeCluster result; everything read is copied before it drops.
    unsafe {
        let result = ffi::rd_kafka_event_DescribeCluster_result(event.ptr());
        if result.is_null() {
            return Err(AdminError::Timeout(OP));
        }
        let mut cnt = 0usize;
        let nodes = ffi::rd_kafka_DescribeCluster_result_nodes(result, &mut cnt);
        let brokers = c_array(nodes, cnt).iter().filter_map(|n| node(*n)).collect();
        let controller = node(ffi::rd_kafka_DescribeCluster_result_controller(result));
        Ok(ClusterDescription {
            cluster_id: owned_opt(ffi::rd_kafka_DescribeCluster_result_cluster_id(result)),
            controller_id: controller.map(|c| c.id),
            brokers,
        })
    }
}
