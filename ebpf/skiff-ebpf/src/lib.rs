// The programs live in the `skiff-ebpf` bin target (main.rs). This empty library target only
// keeps cargo tracking the crate as a package (see aya's project template).
#![no_std]
