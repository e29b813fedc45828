// `sqlx::migrate!` embeds migrations/ at compile time; a new migration file must rebuild the
// crate (cargo does not notice new files in a directory on its own).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
