//! `codec_floor` (target/release/examples/codec_floor; a rig's tool, not part of the product):
//! the JSON and base64 work a 1 MiB `files_write` + `files_read` cannot avoid, timed in this
//! process, as a floor for rigs/mcp_overhead.py's server-side figures: parse the 1.4 MB request, decode its base64, encode the bytes again and serialize
//! the reply. No I/O, no rmcp: what any server speaking this protocol has to spend.

use std::time::Instant;

use base64::Engine;
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn main() {
    run(1 << 20, 30);
}

/// Prints `{"bytes", "samples", "p50_ms", "min_ms", "parts_p50_ms": {..}}` on stdout.
fn run(bytes: usize, samples: usize) {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    let request = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "files_write", "arguments": {
            "path": "rig/x.bin", "content": B64.encode(&data), "encoding": "base64"}},
    }))
    .expect("request");
    let mut total = Vec::with_capacity(samples);
    let mut parts = [const { Vec::new() }; 4];
    for i in 0..samples + 2 {
        let t0 = Instant::now();
        let req: Value = serde_json::from_slice(&request).expect("parse");
        let t1 = Instant::now();
        let content = req["params"]["arguments"]["content"]
            .as_str()
            .expect("content");
        let decoded = B64.decode(content).expect("base64");
        let t2 = Instant::now();
        let encoded = B64.encode(&decoded);
        let t3 = Instant::now();
        let reply = json!({"jsonrpc": "2.0", "id": 8, "result": {
            "content": [{"type": "text", "text": "1048576 bytes of binary data"}],
            "structuredContent": {"path": "/home/user/rig/x.bin", "kind": "binary",
                "size": decoded.len(), "base64": encoded},
            "isError": false}});
        let out = serde_json::to_vec(&reply).expect("serialize");
        let t4 = Instant::now();
        assert!(out.len() > bytes);
        // The first two warm the allocator and caches.
        if i >= 2 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            total.push(ms(t0, t4));
            for (p, (a, b)) in parts
                .iter_mut()
                .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
            {
                p.push(ms(a, b));
            }
        }
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = total.iter().copied().fold(f64::INFINITY, f64::min);
    let names = [
        "parse_request",
        "base64_decode",
        "base64_encode",
        "serialize_reply",
    ];
    let parts: serde_json::Map<String, Value> = names
        .iter()
        .zip(parts.iter_mut())
        .map(|(n, v)| (n.to_string(), json!(p50(v))))
        .collect();
    println!(
        "{}",
        json!({"bytes": bytes, "samples": samples, "p50_ms": p50(&mut total), "min_ms": min,
               "parts_p50_ms": parts})
    );
}
