//! The `nargate` command line.

fn main() {
    println!("nargate {}", env!("CARGO_PKG_VERSION"));
}
