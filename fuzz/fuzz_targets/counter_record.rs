//! The filter's stored counter record (`canary_core::counter_record`), as shared data may hold
//! it: any bytes, of either format. Counting one request into them never panics, never refuses
//! a record `SubsetCounters::decode` accepts, and leaves exactly what counting into the decoded
//! record would; a decoded record round-trips through both formats. The first byte of the input
//! picks the request, the rest is the stored value.
#![no_main]

use canary_core::Outcome;
use canary_core::counter_record::{self, CompletedRequest};
use canary_core::counters::SubsetCounters;
use canary_core::sticky::Cluster;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stored)) = data.split_first() else {
        return;
    };
    let request = CompletedRequest {
        outcome: if pick & 1 == 0 { Outcome::Success } else { Outcome::Failure },
        latency_us: (pick & 2 == 0).then(|| u64::from(pick) << (pick % 48)),
        cluster: (pick & 4 == 0).then(|| Cluster::of_hash(u64::from(pick >> 3))),
    };
    let decoded = SubsetCounters::decode(stored);
    let mut counted = stored.to_vec();
    match (counter_record::count(&mut counted, &request), decoded) {
        (Ok(_), Ok(mut c)) => {
            assert_eq!(SubsetCounters::decode(&c.encode()).as_ref(), Ok(&c), "format 2 round trip");
            assert_eq!(SubsetCounters::decode(&c.encode_v1()).as_ref(), Ok(&c), "format 1 round trip");
            c.count(&request);
            assert_eq!(SubsetCounters::decode(&counted), Ok(c), "counted in place differs");
            assert!(counted.len() <= counter_record::MAX_RECORD_BYTES);
        }
        (Err(e), Ok(c)) => panic!("count refused a record decode accepts: {e}\n{c:?}"),
        // Between full checks, count checks less than decode: it may count what decode refuses.
        (Ok(_), Err(_)) | (Err(_), Err(_)) => {}
    }
});
