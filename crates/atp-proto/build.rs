//! Generates the atp.v1 messages, clients and servers, plus the file
//! descriptor set that server reflection serves.
//!
//! `protoc` comes from `PROTOC`, which `.cargo/config.toml` points at
//! `tools/protoc`, a wrapper around the binary of the `protoc-bin-vendored`
//! crate (a build-dependency here only so that cargo downloads it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "../../proto/atp/v1/availability.proto",
        "../../proto/atp/v1/config.proto",
        "../../proto/atp/v1/admin.proto",
        "../../proto/atp/internal/v1/peer.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=../../proto/google/rpc/status.proto");
    tonic_prost_build::configure()
        // google.rpc.Status (ReserveBatch's per-item errors) is tonic-types'
        // own message, so `tonic_types::StatusExt` reads its details.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .file_descriptor_set_path(out_dir.join("atp_v1_descriptor.bin"))
        .compile_protos(&protos, &["../../proto"])?;
    Ok(())
}
