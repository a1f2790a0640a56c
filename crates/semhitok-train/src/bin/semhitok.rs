//! `semhitok`: train / eval / encode / decode (launched by `cargo xtask train|eval|encode|decode`).
fn main() -> anyhow::Result<()> {
    Ok(())
}
