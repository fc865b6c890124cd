//! An empty program with the same release profile: the size every store is compared with.

fn main() {
    println!("{}", std::env::args().count());
}
