//! Bundles xterm.js (npm `@xterm/xterm` and `@xterm/addon-fit`, installed by scripts/setup.sh
//! into /opt/coppice-web or $COPPICE_WEB_ASSETS) into the binary for the terminal page, so the
//! page needs no CDN. Without them the build still succeeds and the page says what to install.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=COPPICE_WEB_ASSETS");
    let root = PathBuf::from(
        std::env::var("COPPICE_WEB_ASSETS").unwrap_or_else(|_| "/opt/coppice-web".into()),
    )
    .join("node_modules/@xterm");
    let files = [
        ("XTERM_JS", root.join("xterm/lib/xterm.js")),
        ("XTERM_CSS", root.join("xterm/css/xterm.css")),
        ("FIT_JS", root.join("addon-fit/lib/addon-fit.js")),
    ];
    let mut out = String::new();
    let all_there = files.iter().all(|(_, p)| p.is_file());
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        if all_there {
            out += &format!(
                "pub(crate) const {name}: Option<&[u8]> = Some(include_bytes!({:?}));\n",
                path.display().to_string()
            );
        } else {
            out += &format!("pub(crate) const {name}: Option<&[u8]> = None;\n");
        }
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("web_assets.rs");
    std::fs::write(dest, out).expect("write web_assets.rs");
}
