//! Raw declarations of `csrc/c10d_shim.h`.

use std::ffi::{c_char, c_int, c_void};

#[repr(C)]
pub(crate) struct ShkPg {
    _private: [u8; 0],
}

#[repr(C)]
pub(crate) struct ShkReducer {
    _private: [u8; 0],
}

extern "C" {
    pub(crate) fn shk_install_crash_handler() -> c_int;
    pub(crate) fn shk_crash_for_test();
    pub(crate) fn shk_has_backend(backend: c_int) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn shk_pg_new(
        backend: c_int,
        master_addr: *const c_char,
        master_port: c_int,
        rank: c_int,
        world_size: c_int,
        rendezvous_ms: i64,
        timeout_ms: i64,
        device_index: c_int,
        is_server: c_int,
        prefix: *const c_char,
        out: *mut *mut ShkPg,
    ) -> *mut c_char;
    pub(crate) fn shk_pg_free(pg: *mut ShkPg);
    pub(crate) fn shk_all_reduce(
        pg: *mut ShkPg,
        tensor: *mut c_void,
        op: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn shk_broadcast(
        pg: *mut ShkPg,
        tensor: *mut c_void,
        root: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn shk_all_gather(
        pg: *mut ShkPg,
        output: *mut c_void,
        input: *mut c_void,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub(crate) fn shk_barrier(pg: *mut ShkPg, timeout_ms: i64) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn shk_reducer_new(
        pg: *mut ShkPg,
        flat: *mut c_void,
        params: *const *mut c_void,
        offsets: *const i64,
        n_params: i64,
        bucket_starts: *const i64,
        n_buckets: i64,
        avg: c_int,
        timeout_ms: i64,
        out: *mut *mut ShkReducer,
    ) -> *mut c_char;
    pub(crate) fn shk_reducer_free(r: *mut ShkReducer);
    pub(crate) fn shk_reducer_set_order(
        r: *mut ShkReducer,
        order: *const i64,
        n: i64,
    ) -> *mut c_char;
    pub(crate) fn shk_reducer_arm(r: *mut ShkReducer);
    pub(crate) fn shk_reducer_finish(
        r: *mut ShkReducer,
        completion_out: *mut i64,
        n_complete: *mut i64,
    ) -> *mut c_char;
    pub(crate) fn shk_free_string(s: *mut c_char);
}

/// Takes ownership of a message returned by the shim (NULL: success).
pub(crate) fn take_error(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the shim returns NULL or a NUL-terminated malloc'd string it hands over to us.
    let s = unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `p` came from the shim's allocator and is freed exactly once.
    unsafe { shk_free_string(p) };
    Some(s)
}
