//! PEM encoding of DER blobs (certificates, PKCS#8 keys) for files people read.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// `der` as a PEM block with `label` (e.g. "CERTIFICATE"), 64 columns wide.
pub fn encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
