//! The kill order's query string (`KillOrder::from_query`), as any client of the snapshot
//! listener can send it. An accepted order survives a round trip through `to_query`; a rejected
//! one says why.
#![no_main]

use canary_core::KillOrder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The filter reads `:path` as bytes and treats one that is not UTF-8 as empty, as here.
    let query = canary_core::split::header_text(Some(data.to_vec())).unwrap_or_default();
    let query = query.as_str();
    match KillOrder::from_query(query) {
        Ok(order) => {
            let written = order.to_query();
            assert_eq!(KillOrder::from_query(&written).as_ref(), Ok(&order), "order changed through {written:?}");
        }
        Err(e) => assert!(!e.is_empty(), "empty error for {query:?}"),
    }
});
