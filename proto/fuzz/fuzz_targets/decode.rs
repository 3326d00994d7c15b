//! Feeds arbitrary bytes to the frame decoder as a stream, in the pieces the first byte chooses,
//! and to the message decoders directly. Any panic is a bug: peer bytes may only produce errors.
#![no_main]

use edge_proto::{FrameDecoder, NodeMsg, OrchMsg, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<NodeMsg>(data);
    let _ = decode::<OrchMsg>(data);
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step.max(1));
    let mut dec = FrameDecoder::new();
    for piece in rest.chunks(step) {
        dec.push(piece);
        loop {
            match dec.next_msg::<NodeMsg>() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = dec.finish();
});
