//! NVRTC and the CUDA driver API, loaded at run time (`dlopen`), so that binaries still start
//! on machines without a GPU and nothing links against CUDA at build time.
//!
//! * NVRTC (`libnvrtc.so.13`) comes with the PyTorch wheel (`nvidia/cu13/lib` next to
//!   `torch/lib`): found through the loader path first, then relative to the loaded
//!   `libtorch_cpu.so` (read from `/proc/self/maps`). It needs no GPU, so kernels compile (and
//!   their compile is tested) on CPU-only machines.
//! * The driver (`libcuda.so.1`) is the system's; launches go to the legacy default stream,
//!   the stream tch's LibTorch kernels run on, so they are ordered with them.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

/// What went wrong loading or using NVRTC / the driver (the message names the call).
#[derive(Debug, Clone)]
pub struct CudaError(pub String);

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CudaError {}

type R<T> = std::result::Result<T, CudaError>;

fn err(msg: impl Into<String>) -> CudaError {
    CudaError(msg.into())
}

struct Lib(*mut c_void);
// The handle is only passed to dlsym; the library stays loaded for the process's life.
unsafe impl Send for Lib {}
unsafe impl Sync for Lib {}

fn dlopen(name: &str) -> Option<Lib> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated path; the handle is never closed.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    (!h.is_null()).then_some(Lib(h))
}

fn sym<T: Copy>(lib: &Lib, name: &str) -> R<T> {
    let c = CString::new(name).map_err(|e| err(e.to_string()))?;
    // SAFETY: a valid handle and a NUL-terminated name.
    let p = unsafe { libc::dlsym(lib.0, c.as_ptr()) };
    if p.is_null() {
        return Err(err(format!("symbol {name} not found")));
    }
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is the function-pointer type of the named C function (size checked above).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

/// The path of a loaded library whose file name is `file`, from the process's memory map.
fn loaded_path(file: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let suffix = format!("/{file}");
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with(&suffix))
        .map(PathBuf::from)
}

/// The directory of the loaded `libtorch_cpu.so`.
fn torch_lib_dir() -> Option<PathBuf> {
    loaded_path("libtorch_cpu.so").and_then(|p| p.parent().map(|d| d.to_path_buf()))
}

type NvrtcProgram = *mut c_void;

/// The NVRTC functions used here.
pub struct Nvrtc {
    create: unsafe extern "C" fn(
        *mut NvrtcProgram,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> c_int,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    cubin_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> c_int,
    cubin: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> c_int,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> c_int,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    /// Where it was loaded from.
    pub origin: String,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvrtc")
            .field("origin", &self.origin)
            .finish()
    }
}

fn load_nvrtc() -> R<Nvrtc> {
    let mut tried = vec!["libnvrtc.so.13 (loader path)".to_string()];
    let mut found = dlopen("libnvrtc.so.13").map(|l| (l, "libnvrtc.so.13".to_string()));
    if found.is_none() {
        if let Some(dir) = torch_lib_dir() {
            let p = dir.join("../../nvidia/cu13/lib/libnvrtc.so.13");
            let s = p.display().to_string();
            found = dlopen(&s).map(|l| (l, s.clone()));
            tried.push(s);
        }
    }
    let (lib, origin) = found.ok_or_else(|| {
        err(format!(
            "NVRTC not found (tried {}); it ships with the PyTorch CUDA wheel (nvidia/cu13/lib)",
            tried.join(", ")
        ))
    })?;
    // NVRTC dlopens its builtins library by name at compile time; the loader does not look
    // next to libnvrtc for it, so load it from there first (a later dlopen by the same soname
    // finds the loaded one).
    if let Some(dir) =
        loaded_path("libnvrtc.so.13").and_then(|p| p.parent().map(|d| d.to_path_buf()))
    {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("libnvrtc-builtins.so.13") {
                    let c = CString::new(e.path().display().to_string())
                        .map_err(|e| err(e.to_string()))?;
                    // SAFETY: a NUL-terminated path; never closed.
                    unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
                }
            }
        }
    }
    Ok(Nvrtc {
        create: sym(&lib, "nvrtcCreateProgram")?,
        compile: sym(&lib, "nvrtcCompileProgram")?,
        log_size: sym(&lib, "nvrtcGetProgramLogSize")?,
        log: sym(&lib, "nvrtcGetProgramLog")?,
        cubin_size: sym(&lib, "nvrtcGetCUBINSize")?,
        cubin: sym(&lib, "nvrtcGetCUBIN")?,
        destroy: sym(&lib, "nvrtcDestroyProgram")?,
        version: sym(&lib, "nvrtcVersion")?,
        origin,
    })
}

/// The process's NVRTC (loaded once).
pub fn nvrtc() -> R<&'static Nvrtc> {
    static N: OnceLock<R<Nvrtc>> = OnceLock::new();
    N.get_or_init(load_nvrtc).as_ref().map_err(Clone::clone)
}

impl Nvrtc {
    /// (major, minor) of the loaded NVRTC.
    pub fn version(&self) -> R<(i32, i32)> {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two valid out-pointers.
        let rc = unsafe { (self.version)(&mut a, &mut b) };
        if rc != 0 {
            return Err(err(format!("nvrtcVersion failed ({rc})")));
        }
        Ok((a, b))
    }

    /// Compile CUDA C++ `source` for `sm_{arch}` into a cubin, with `-D` `defines` and `extra`
    /// NVRTC options; returns the cubin and NVRTC's log. The error holds the log.
    pub fn compile(
        &self,
        source: &str,
        name: &str,
        arch: u32,
        defines: &[String],
        extra: &[&str],
    ) -> R<(Vec<u8>, String)> {
        let src = CString::new(source).map_err(|e| err(e.to_string()))?;
        let cname = CString::new(name).map_err(|e| err(e.to_string()))?;
        let mut opts: Vec<CString> = vec![
            CString::new(format!("--gpu-architecture=sm_{arch}")).unwrap(),
            CString::new("--std=c++17").unwrap(),
            // fp32 as written: no fused contraction beyond the explicit fmaf, IEEE division.
            CString::new("--fmad=false").unwrap(),
        ];
        for d in defines {
            opts.push(CString::new(format!("-D{d}")).map_err(|e| err(e.to_string()))?);
        }
        for o in extra {
            opts.push(CString::new(*o).map_err(|e| err(e.to_string()))?);
        }
        let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: valid C strings; no headers.
        let rc = unsafe {
            (self.create)(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(err(format!("nvrtcCreateProgram({name}) failed ({rc})")));
        }
        // SAFETY: `prog` was created above; `ptrs` outlive the call.
        let rc = unsafe { (self.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
        let log = {
            let mut n = 0usize;
            // SAFETY: valid program and out-pointer; the buffer has the size NVRTC reported.
            unsafe { (self.log_size)(prog, &mut n) };
            let mut buf = vec![0u8; n.max(1)];
            unsafe { (self.log)(prog, buf.as_mut_ptr() as *mut c_char) };
            CStr::from_bytes_until_nul(&buf)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let out = if rc != 0 {
            Err(err(format!(
                "NVRTC compile of {name} for sm_{arch} failed ({rc}):\n{log}"
            )))
        } else {
            let mut n = 0usize;
            // SAFETY: as above.
            unsafe { (self.cubin_size)(prog, &mut n) };
            let mut buf = vec![0u8; n];
            let rc = unsafe { (self.cubin)(prog, buf.as_mut_ptr() as *mut c_char) };
            if rc != 0 {
                Err(err(format!("nvrtcGetCUBIN({name}) failed ({rc})")))
            } else {
                Ok((buf, log))
            }
        };
        // SAFETY: destroys the program created above.
        unsafe { (self.destroy)(&mut prog) };
        out
    }
}

type CuResult = c_int;
/// `CUfunction`, `CUmodule`, `CUcontext`: opaque driver handles.
pub type CuHandle = *mut c_void;

/// The CUDA driver functions used here.
pub struct Driver {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    ctx_get_current: unsafe extern "C" fn(*mut CuHandle) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuHandle) -> CuResult,
    primary_retain: unsafe extern "C" fn(*mut CuHandle, c_int) -> CuResult,
    device_attr: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult,
    module_load_data: unsafe extern "C" fn(*mut CuHandle, *const c_void) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut CuHandle, CuHandle, *const c_char) -> CuResult,
    launch: unsafe extern "C" fn(
        CuHandle,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Driver")
    }
}

fn load_driver() -> R<Driver> {
    let lib =
        dlopen("libcuda.so.1").ok_or_else(|| err("libcuda.so.1 not found (no NVIDIA driver)"))?;
    let d = Driver {
        init: sym(&lib, "cuInit")?,
        ctx_get_current: sym(&lib, "cuCtxGetCurrent")?,
        ctx_set_current: sym(&lib, "cuCtxSetCurrent")?,
        primary_retain: sym(&lib, "cuDevicePrimaryCtxRetain")?,
        device_attr: sym(&lib, "cuDeviceGetAttribute")?,
        module_load_data: sym(&lib, "cuModuleLoadData")?,
        module_get_function: sym(&lib, "cuModuleGetFunction")?,
        launch: sym(&lib, "cuLaunchKernel")?,
        error_string: sym(&lib, "cuGetErrorString")?,
    };
    // SAFETY: plain driver initialisation (idempotent).
    d.check(unsafe { (d.init)(0) }, "cuInit")?;
    Ok(d)
}

/// The process's CUDA driver (loaded once).
pub fn driver() -> R<&'static Driver> {
    static D: OnceLock<R<Driver>> = OnceLock::new();
    D.get_or_init(load_driver).as_ref().map_err(Clone::clone)
}

/// A kernel ready to launch.
#[derive(Debug, Clone, Copy)]
pub struct Function(pub CuHandle);
// Driver function handles are valid in every thread of the process (same context).
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

impl Driver {
    fn check(&self, rc: CuResult, what: &str) -> R<()> {
        if rc == 0 {
            return Ok(());
        }
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: out-pointer to a static string owned by the driver.
        unsafe { (self.error_string)(rc, &mut s) };
        let msg = if s.is_null() {
            String::new()
        } else {
            // SAFETY: the driver returns a NUL-terminated static string.
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        };
        Err(err(format!("{what} failed: CUDA error {rc} {msg}")))
    }

    /// Make device `ordinal`'s primary context (the one the CUDA runtime and LibTorch use)
    /// current on this thread, if no context is.
    pub fn ensure_context(&self, ordinal: i32) -> R<()> {
        let mut ctx: CuHandle = std::ptr::null_mut();
        // SAFETY: out-pointers to handles.
        self.check(
            unsafe { (self.ctx_get_current)(&mut ctx) },
            "cuCtxGetCurrent",
        )?;
        if ctx.is_null() {
            self.check(
                unsafe { (self.primary_retain)(&mut ctx, ordinal) },
                "cuDevicePrimaryCtxRetain",
            )?;
            self.check(unsafe { (self.ctx_set_current)(ctx) }, "cuCtxSetCurrent")?;
        }
        Ok(())
    }

    /// The compute capability of device `ordinal`, as `10 * major + minor`.
    pub fn compute_capability(&self, ordinal: i32) -> R<u32> {
        let (mut a, mut b) = (0, 0);
        // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR.
        self.check(
            unsafe { (self.device_attr)(&mut a, 75, ordinal) },
            "cuDeviceGetAttribute",
        )?;
        self.check(
            unsafe { (self.device_attr)(&mut b, 76, ordinal) },
            "cuDeviceGetAttribute",
        )?;
        Ok((10 * a + b) as u32)
    }

    /// Load a cubin into the current context and look up `name`.
    pub fn load(&self, cubin: &[u8], name: &str) -> R<Function> {
        let mut module: CuHandle = std::ptr::null_mut();
        // SAFETY: the image outlives the call (the driver copies it).
        self.check(
            unsafe { (self.module_load_data)(&mut module, cubin.as_ptr() as *const c_void) },
            "cuModuleLoadData",
        )?;
        let cname = CString::new(name).map_err(|e| err(e.to_string()))?;
        let mut f: CuHandle = std::ptr::null_mut();
        self.check(
            unsafe { (self.module_get_function)(&mut f, module, cname.as_ptr()) },
            &format!("cuModuleGetFunction({name})"),
        )?;
        Ok(Function(f))
    }

    /// Launch `f` on the legacy default stream (LibTorch's, so ordered with its kernels).
    ///
    /// # Safety
    /// `args` must point to values of exactly the kernel's parameter types, in order, and every
    /// device pointer among them must be valid for what the kernel reads and writes.
    pub unsafe fn launch(
        &self,
        f: Function,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut c_void],
    ) -> R<()> {
        // SAFETY: the caller's contract; a null stream = the legacy default stream.
        unsafe { self.launch_on(f, grid, block, args, std::ptr::null_mut()) }
    }

    /// Launch `f` on `stream` (a `cudaStream_t`, e.g. `semhitok_sys::current_cuda_stream`:
    /// LibTorch's current stream, which is a CUDA graph's capture stream while one captures).
    ///
    /// # Safety
    /// As [`Self::launch`], and `stream` must be null or a live stream of the current context.
    pub unsafe fn launch_on(
        &self,
        f: Function,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut c_void],
        stream: *mut c_void,
    ) -> R<()> {
        // SAFETY: the caller's contract.
        let rc = unsafe {
            (self.launch)(
                f.0,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                0,
                stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        self.check(rc, "cuLaunchKernel")
    }
}
