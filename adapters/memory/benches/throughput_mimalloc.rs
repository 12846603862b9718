//! The in-memory throughput bench (`throughput.rs`) on mimalloc, the `topiq` binary's
//! allocator: `cargo bench -p topiq-memory --bench throughput_mimalloc`.

#![allow(missing_docs)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "throughput.rs"]
mod throughput;

fn main() {
    throughput::run("mimalloc");
}
