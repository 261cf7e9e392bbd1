//! The kill order's query string (`KillOrder::from_query`), as any client of the snapshot
//! listener can send it. An accepted order survives a round trip through `to_query`; a rejected
//! one says why.
#![no_main]

use canary_core::KillOrder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The filter reads `:path` as a string; bytes that are not UTF-8 never reach the parser.
    let Ok(query) = std::str::from_utf8(data) else { return };
    match KillOrder::from_query(query) {
        Ok(order) => {
            let written = order.to_query();
            assert_eq!(KillOrder::from_query(&written).as_ref(), Ok(&order), "order changed through {written:?}");
        }
        Err(e) => assert!(!e.is_empty(), "empty error for {query:?}"),
    }
});
