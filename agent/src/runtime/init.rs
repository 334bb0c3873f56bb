//! `skiff-agent init`: turns the shim's child into the container. The shim forked it into
//! the container's PID namespace already; it joins the pod's cgroups and the sandbox's
//! network, UTS and IPC namespaces, makes its own mount namespace on an overlay of the
//! image (with a /proc of its PID namespace), pivots into it and execs the container command.
//! Failures are written to `start-error` (and stderr, which is the container log) so the
//! agent can report them as the container's waiting/terminated reason.
//!
//! This runs in the child, after the fork, and calls the kernel directly (setns, unshare,
//! mount, pivot_root, exec): it is what [`super::edge::RuntimeEdge`]'s real implementation
//! sets in motion, not something the agent's logic calls, so it is not behind the trait
//! (youki keeps its container-side code the same way).

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::shim::START_ERROR_FILE;
use super::spec::{ContainerSpec, read_json};

pub fn run(spec_path: &Path) -> i32 {
    let spec: ContainerSpec = match read_json(spec_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skiff init: {e}");
            return 128;
        }
    };
    let err = match prepare(&spec) {
        Ok(argv) => exec(&spec, &argv),
        Err(e) => e,
    };
    eprintln!("skiff init: {}", err.message);
    let _ = std::fs::write(spec.instance_dir.join(START_ERROR_FILE), &err.message);
    err.code
}

struct InitError {
    code: i32,
    message: String,
}

fn fail(what: impl std::fmt::Display) -> InitError {
    InitError {
        code: 128,
        message: what.to_string(),
    }
}

fn prepare(spec: &ContainerSpec) -> Result<Vec<String>, InitError> {
    for cg in &spec.cgroups {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| fail(format!("joining cgroup {}: {e}", cg.display())))?;
    }
    join_sandbox(spec)?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail(format!("unshare(mount): {e}")))?;
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail(format!("making / private: {e}")))?;
    let root = spec.instance_dir.join("rootfs");
    let (upper, work) = (
        spec.instance_dir.join("upper"),
        spec.instance_dir.join("work"),
    );
    for d in [&root, &upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| fail(format!("creating {}: {e}", d.display())))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.image_rootfs.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| fail(format!("mounting the overlay rootfs ({opts}): {e}")))?;
    mount_system(&root)?;
    for (host, inside) in &spec.bind_files {
        let target = inside_path(&root, inside);
        file_mount_point(&target, inside)?;
        bind(host, &target, false)?;
    }
    for (host, inside, read_only) in &spec.bind_dirs {
        let target = inside_path(&root, inside);
        // A subPath may pick one file of a volume: then the mount point is a file.
        if host.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(|e| fail(format!("creating {inside}: {e}")))?;
        } else {
            file_mount_point(&target, inside)?;
        }
        bind(host, &target, *read_only)?;
    }
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting it leaves
    // only the container's tree, with no path back to the host's.
    std::env::set_current_dir(&root).map_err(|e| fail(format!("chdir rootfs: {e}")))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail(format!("pivot_root: {e}")))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail(format!("detaching the old root: {e}")))?;
    let wd = if spec.working_dir.is_empty() {
        "/"
    } else {
        spec.working_dir.as_str()
    };
    let _ = std::fs::create_dir_all(wd);
    std::env::set_current_dir(wd).map_err(|e| fail(format!("chdir {wd}: {e}")))?;
    if spec.gid != 0 || spec.uid != 0 {
        let gid = nix::unistd::Gid::from_raw(spec.gid);
        nix::unistd::setgroups(&[gid]).map_err(|e| fail(format!("setgroups: {e}")))?;
        nix::unistd::setgid(gid).map_err(|e| fail(format!("setgid: {e}")))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(spec.uid))
            .map_err(|e| fail(format!("setuid: {e}")))?;
    }
    if spec.argv.is_empty() {
        return Err(fail("no command specified"));
    }
    Ok(spec.argv.clone())
}

fn join_sandbox(spec: &ContainerSpec) -> Result<(), InitError> {
    let mut kinds = vec![("ipc", CloneFlags::CLONE_NEWIPC)];
    if !spec.host_network {
        kinds.push(("uts", CloneFlags::CLONE_NEWUTS));
        kinds.push(("net", CloneFlags::CLONE_NEWNET));
    }
    // Open all first: once in the pod's namespaces, /proc still shows the host's pids, but
    // failing halfway would leave a process in a mix of namespaces.
    let mut files = Vec::new();
    for (name, flag) in kinds {
        let path = format!("/proc/{}/ns/{name}", spec.sandbox_pid);
        let f = File::open(&path)
            .map_err(|e| fail(format!("opening {path} (is the pod sandbox running?): {e}")))?;
        files.push((f, flag, name));
    }
    for (f, flag, name) in files {
        setns(&f, flag)
            .map_err(|e| fail(format!("joining the sandbox's {name} namespace: {e}")))?;
    }
    Ok(())
}

fn inside_path(root: &Path, inside: &str) -> PathBuf {
    root.join(inside.trim_start_matches('/'))
}

/// An (empty) file at `target` to mount a file on, its directories made.
fn file_mount_point(target: &Path, inside: &str) -> Result<(), InitError> {
    if let Some(parent) = target.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if !target.exists() {
        File::create(target).map_err(|e| fail(format!("creating {inside}: {e}")))?;
    }
    Ok(())
}

fn bind(from: &Path, to: &Path, read_only: bool) -> Result<(), InitError> {
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        fail(format!(
            "bind-mounting {} on {}: {e}",
            from.display(),
            to.display()
        ))
    })?;
    if read_only {
        mount(
            None::<&str>,
            to,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| fail(format!("making {} read-only: {e}", to.display())))?;
    }
    Ok(())
}

/// /proc, /sys (read-only), and a private /dev with the usual device nodes, /dev/pts, /dev/shm.
fn mount_system(root: &Path) -> Result<(), InitError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(|e| fail(format!("creating /proc: {e}")))?;
    mount(Some("proc"), &proc_dir, Some("proc"), nosuid, None::<&str>)
        .map_err(|e| fail(format!("mounting /proc: {e}")))?;
    let sys = root.join("sys");
    if std::fs::create_dir_all(&sys).is_ok() {
        // Not every sandbox may mount sysfs (it is tied to the network namespace); it is
        // optional for containers, so a failure is not fatal.
        let _ = mount(
            Some("sysfs"),
            &sys,
            Some("sysfs"),
            nosuid | MsFlags::MS_RDONLY,
            None::<&str>,
        );
    }
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(|e| fail(format!("creating /dev: {e}")))?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755,size=65536k"),
    )
    .map_err(|e| fail(format!("mounting /dev: {e}")))?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        File::create(&target).map_err(|e| fail(format!("creating /dev/{node}: {e}")))?;
        bind(&Path::new("/dev").join(node), &target, false)?;
    }
    let pts = dev.join("pts");
    let _ = std::fs::create_dir_all(&pts);
    let _ = mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    let shm = dev.join("shm");
    let _ = std::fs::create_dir_all(&shm);
    let _ = mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid,
        Some("mode=1777,size=65536k"),
    );
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
    Ok(())
}

fn exec(spec: &ContainerSpec, argv: &[String]) -> InitError {
    // Rust's runtime ignores SIGPIPE in this process, and an ignored signal stays ignored
    // across execve: without this a container's `yes | head` would never end.
    // SAFETY: SIG_DFL installs no handler code; this process is single-threaded here.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let path_var = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let program = &argv[0];
    let resolved = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        path_var
            .split(':')
            .map(|d| Path::new(d).join(program))
            .find(|p| {
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    };
    let Some(resolved) = resolved else {
        return InitError {
            code: 127,
            message: format!("exec: \"{program}\": executable file not found in $PATH"),
        };
    };
    let to_c = |s: &str| {
        CString::new(s.as_bytes()).map_err(|_| fail(format!("{s:?} contains a NUL byte")))
    };
    let args: Result<Vec<CString>, InitError> = argv.iter().map(|a| to_c(a)).collect();
    let env: Result<Vec<CString>, InitError> = spec.env.iter().map(|a| to_c(a)).collect();
    let path = to_c(&resolved.to_string_lossy());
    match (path, args, env) {
        (Ok(path), Ok(args), Ok(env)) => {
            let e = nix::unistd::execve(&path, &args, &env).unwrap_err();
            InitError {
                code: if e == nix::errno::Errno::ENOENT {
                    127
                } else {
                    126
                },
                message: format!("exec {}: {e}", resolved.display()),
            }
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => e,
    }
}

/// `skiff-agent exec-in --pid P [--tty] -- CMD…`: run a command inside a running container
/// (its mount, network, UTS, IPC and PID namespaces, its environment), for exec probes and
/// `kubectl exec`. With `tty`, stdin is a pseudo-terminal the command gets as its controlling
/// terminal, in a session of its own, so the shell gets job control and ^C.
pub fn exec_in(pid: i32, tty: bool, argv: &[String]) -> i32 {
    if argv.is_empty() {
        eprintln!("skiff exec-in: no command");
        return 126;
    }
    let env: Vec<String> = std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect()
        })
        .unwrap_or_default();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| PathBuf::from("/"));
    if let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        // Join the container's cgroup v2 so the command is accounted (and load-balanced)
        // like the container itself.
        if let (Some(rel), Some(root)) = (
            cg.lines().find_map(|l| l.strip_prefix("0::")),
            super::cgroup::mounts().v2,
        ) {
            let _ = std::fs::write(
                root.join(rel.trim_start_matches('/')).join("cgroup.procs"),
                std::process::id().to_string(),
            );
        }
    }
    if let Err(e) = join_container(pid) {
        eprintln!("skiff exec-in: {e}");
        return 126;
    }
    // A joined PID namespace holds only this process's children: the command runs in a
    // child (so `ps` and /proc show the container's view), this process reports its end.
    // SAFETY: exec-in is single-threaded (it runs before any thread is started).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => return exit_of(child),
        Ok(nix::unistd::ForkResult::Child) => {
            // The agent ends an exec by killing exec-in; the command must not outlive it.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
        }
        Err(e) => {
            eprintln!("skiff exec-in: fork: {e}");
            return 126;
        }
    }
    let _ = std::env::set_current_dir(&cwd);
    if tty && let Err(e) = controlling_terminal() {
        eprintln!("skiff exec-in: {e}");
        return 126;
    }
    let spec = ContainerSpec {
        env,
        ..Default::default()
    };
    let err = exec(&spec, argv);
    eprintln!("skiff exec-in: {}", err.message);
    err.code
}

/// Enter the namespaces of the container process `pid`: IPC, UTS, network, PID (for the
/// children to come) and mount. All are opened first: the mount namespace changes /proc.
fn join_container(pid: i32) -> Result<(), String> {
    let mut files = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let f = File::open(format!("/proc/{pid}/ns/{name}"))
            .map_err(|e| format!("container process {pid}: {e}"))?;
        files.push((f, flag, name));
    }
    for (f, flag, name) in files {
        setns(&f, flag).map_err(|e| format!("setns({name}): {e}"))?;
    }
    Ok(())
}

/// Wait for the command and exit as it did: its status, or 128 + the signal that ended it.
fn exit_of(child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                eprintln!("skiff exec-in: waiting for the command: {e}");
                return 126;
            }
        }
    }
}

/// A new session whose controlling terminal is stdin.
fn controlling_terminal() -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // SAFETY: fd 0 is this process's stdin; TIOCSCTTY takes an int argument (0: do not
    // steal the terminal from another session) and no memory.
    let rc = unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0_i32) };
    if rc != 0 {
        return Err(format!("TIOCSCTTY: {}", nix::errno::Errno::last()));
    }
    Ok(())
}
