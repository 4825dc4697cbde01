use coppice_runtime::templates::*;
use std::time::Instant;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let store = TemplateStore::new(&dir).unwrap();
    let t = Instant::now();
    let info = store
        .build_host(
            "bench",
            &BuildOptions {
                replace: true,
                ..Default::default()
            },
        )
        .unwrap();
    println!("build {:.2}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    println!(
        "size {} {:.2}s",
        size_bytes(&info.layers[0]),
        t.elapsed().as_secs_f64()
    );
    if std::env::args().nth(2).as_deref() == Some("rm") {
        let t = Instant::now();
        store.remove("bench").unwrap();
        println!("remove {:.2}s", t.elapsed().as_secs_f64());
    }
}
