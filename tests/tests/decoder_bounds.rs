//! The vendored kafka-protocol decoder reserves memory by what the frame
//! can hold, not by a count off the wire: an answer claiming a million
//! groups in a 1 MiB frame, whose first group does not even decode, makes
//! the decoder reserve at most about the frame's size (unpatched it
//! reserved a million elements: ~1,000 × the frame, and a count of 2³¹
//! reserved hundreds of GB and aborted the process). Measured with a
//! counting allocator, in this test's own process.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::DescribeGroupsResponse;
use kafka_protocol::protocol::Decodable;
use kollector_tests::counting_alloc::{peak_bytes, reset_peak, Counting};

#[global_allocator]
static A: Counting = Counting;

const FRAME: usize = 1 << 20;

/// A DescribeGroups v0 answer body: `count` groups, then a first group whose
/// error code is followed by a group id of length −2 (not a string), then
/// zeros to fill `FRAME`.
fn hostile(count: i32) -> Bytes {
    let mut b = BytesMut::with_capacity(FRAME);
    b.put_i32(count);
    b.put_i16(0);
    b.put_i16(-2);
    b.resize(FRAME, 0);
    b.freeze()
}

#[test]
fn a_hostile_array_count_reserves_at_most_about_the_frame() {
    for count in [1_000_000, i32::MAX] {
        let mut body = hostile(count);
        reset_peak();
        let before = peak_bytes();
        let decoded = DescribeGroupsResponse::decode(&mut body, 0);
        let reserved = peak_bytes() - before;
        assert!(decoded.is_err(), "the first group does not decode");
        assert!(reserved <= 2 * FRAME as isize, "count {count}: {reserved} bytes reserved for a {FRAME}-byte frame");
    }
}
