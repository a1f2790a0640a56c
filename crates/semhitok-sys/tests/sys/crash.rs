//! The fatal-signal reporter: a crash inside the shim prints the native stack, and the process
//! still dies of the signal (exit status and core dump unchanged).

use std::process::Command;

const CHILD: &str = "SEMHITOK_SYS_CRASH_CHILD";

/// Runs only as the child of `a_segfault_in_the_shim_prints_the_native_stack`.
#[test]
fn crash_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    semhitok_sys::install_crash_handler();
    semhitok_sys::crash_for_test();
}

#[test]
fn a_segfault_in_the_shim_prints_the_native_stack() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "sys::crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigsegv()),
        "the child must still die of SIGSEGV; status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("semhitok-sys: fatal signal 11"),
        "no report in stderr:\n{stderr}"
    );
    // backtrace_symbols_fd writes one `object(symbol+offset) [address]` line per frame; the
    // shim lives in this executable, whose symbols are not dynamic, so only the frames in shared
    // libraries (LibTorch, NCCL, libc) carry names: count frames, not names.
    let report = &stderr[stderr.find("fatal signal").unwrap()..];
    let frames = report.lines().filter(|l| l.contains("[0x")).count();
    assert!(frames >= 3, "expected a native stack, got:\n{report}");
}

fn libc_sigsegv() -> i32 {
    11
}
