# Sourced by the GPU host scripts. Test binaries locate fixtures and assets through the source path
# they were built at (compiled in by `env!("CARGO_MANIFEST_DIR")`), which `cargo xtask bundle`
# records in the bundle's `build_root` file: when that path does not exist on this host, make it a
# link to this checkout (the current directory).
#   link_build_root BUNDLE_DIR
link_build_root() {
  local r
  r=$(cat "$1/build_root" 2>/dev/null) || return 0
  if [ -n "$r" ] && [ ! -e "$r/Cargo.toml" ]; then mkdir -p "$(dirname "$r")" && ln -sfn "$PWD" "$r"; fi
}
