//! `memcpy` for the x86_64 musl build of the node.
//!
//! musl's x86_64 `memcpy` copies every size with `rep movsq` plus a `movsb` loop for the
//! ends. Those string instructions start slowly, which costs little on a large copy and a
//! lot on the many small ones Rust code makes: moving a future or a result of a few hundred
//! bytes, copying a header name of a dozen. Under `perf`, a cache hit through the node's
//! proxy spent 15% of its cycles in musl's `memcpy` (about 35 calls per request, 4.6 KB in
//! all), where a glibc build spends little, and the musl build served 16 KiB hits at
//! 0.92x nginx's rate where the glibc build served 1.17x (`benches/proxy.sh`).
//!
//! This crate holds a `memcpy` in assembly, by size:
//! - 0 to 16 bytes: two loads and two stores of the widest size that fits, overlapping in
//!   the middle (no loop, no string instruction);
//! - 17 to 64 bytes: two or four 16-byte SSE2 loads and stores, overlapping likewise;
//! - 65 bytes to 2 KiB: 64-byte blocks forwards, with the last 64 bytes loaded first and
//!   stored last;
//! - larger: `rep movsb`, which modern x86_64 cores run at full speed for such sizes.
//!
//! It is linked into the node only for `x86_64-unknown-linux-musl` (see `edge-node`'s
//! `main.rs`), where it defines `memcpy` and `__memcpy_fwd`. musl's `memmove` jumps to
//! `__memcpy_fwd` when the destination lies below the source or apart from it, so that copy
//! must be correct for a destination below an overlapping source. Every path here reads
//! each block before it writes it and goes forwards, which is. Defining both symbols keeps
//! musl's own `memcpy.o` out of the link: nothing else is taken from it.
//!
//! On every other target the crate defines only [`copy`]'s symbol `edge_memcpy`, on x86_64,
//! for its tests. aarch64 and armv7 musl have optimised `memcpy`s of their own.
//!
//! The only unsafe code in the workspace: `tests/tests/tidy.rs` rule 6 allows it here alone.

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod asm {
    // SysV x86_64: rdi = destination, rsi = source, rdx = length; returns the destination
    // in rax. rcx, r8-r11 and every xmm register are the caller's to lose; the direction
    // flag is clear on entry.
    core::arch::global_asm!(
        ".text",
        ".p2align 4",
        ".globl edge_memcpy",
        ".type edge_memcpy, @function",
        "edge_memcpy:",
        "    mov rax, rdi",
        "    cmp rdx, 16",
        "    ja 20f",
        "    cmp rdx, 8",
        "    jae 8f",
        "    cmp rdx, 4",
        "    jae 4f",
        "    cmp rdx, 1",
        "    ja 2f",
        "    jb 0f",
        // 1 byte.
        "    movzx ecx, byte ptr [rsi]",
        "    mov byte ptr [rdi], cl",
        "0:",
        "    ret",
        // 2 or 3 bytes: the first two and the last two.
        "2:",
        "    movzx ecx, word ptr [rsi]",
        "    movzx r8d, word ptr [rsi + rdx - 2]",
        "    mov word ptr [rdi], cx",
        "    mov word ptr [rdi + rdx - 2], r8w",
        "    ret",
        // 4 to 7 bytes.
        "4:",
        "    mov ecx, dword ptr [rsi]",
        "    mov r8d, dword ptr [rsi + rdx - 4]",
        "    mov dword ptr [rdi], ecx",
        "    mov dword ptr [rdi + rdx - 4], r8d",
        "    ret",
        // 8 to 16 bytes.
        "8:",
        "    mov rcx, qword ptr [rsi]",
        "    mov r8, qword ptr [rsi + rdx - 8]",
        "    mov qword ptr [rdi], rcx",
        "    mov qword ptr [rdi + rdx - 8], r8",
        "    ret",
        // 17 to 32 bytes.
        "20:",
        "    cmp rdx, 32",
        "    ja 40f",
        "    movups xmm0, xmmword ptr [rsi]",
        "    movups xmm1, xmmword ptr [rsi + rdx - 16]",
        "    movups xmmword ptr [rdi], xmm0",
        "    movups xmmword ptr [rdi + rdx - 16], xmm1",
        "    ret",
        // 33 to 64 bytes.
        "40:",
        "    cmp rdx, 64",
        "    ja 80f",
        "    movups xmm0, xmmword ptr [rsi]",
        "    movups xmm1, xmmword ptr [rsi + 16]",
        "    movups xmm2, xmmword ptr [rsi + rdx - 32]",
        "    movups xmm3, xmmword ptr [rsi + rdx - 16]",
        "    movups xmmword ptr [rdi], xmm0",
        "    movups xmmword ptr [rdi + 16], xmm1",
        "    movups xmmword ptr [rdi + rdx - 32], xmm2",
        "    movups xmmword ptr [rdi + rdx - 16], xmm3",
        "    ret",
        // 65 bytes to 2 KiB: the last 64 bytes read first, then 64-byte blocks forwards while
        // more than 64 bytes are left, then the last 64 written.
        "80:",
        "    cmp rdx, 2048",
        "    jae 100f",
        "    movups xmm4, xmmword ptr [rsi + rdx - 64]",
        "    movups xmm5, xmmword ptr [rsi + rdx - 48]",
        "    movups xmm6, xmmword ptr [rsi + rdx - 32]",
        "    movups xmm7, xmmword ptr [rsi + rdx - 16]",
        "    lea r8, [rdi + rdx - 64]",
        "    mov rcx, rdi",
        "81:",
        "    movups xmm0, xmmword ptr [rsi]",
        "    movups xmm1, xmmword ptr [rsi + 16]",
        "    movups xmm2, xmmword ptr [rsi + 32]",
        "    movups xmm3, xmmword ptr [rsi + 48]",
        "    movups xmmword ptr [rcx], xmm0",
        "    movups xmmword ptr [rcx + 16], xmm1",
        "    movups xmmword ptr [rcx + 32], xmm2",
        "    movups xmmword ptr [rcx + 48], xmm3",
        "    add rsi, 64",
        "    add rcx, 64",
        "    sub rdx, 64",
        "    cmp rdx, 64",
        "    ja 81b",
        "    movups xmmword ptr [r8], xmm4",
        "    movups xmmword ptr [r8 + 16], xmm5",
        "    movups xmmword ptr [r8 + 32], xmm6",
        "    movups xmmword ptr [r8 + 48], xmm7",
        "    ret",
        // 2 KiB and more.
        "100:",
        "    mov rcx, rdx",
        "    rep movsb",
        "    ret",
        ".size edge_memcpy, . - edge_memcpy",
    );

    // The names musl's libc.a asks for, on the one target where this replaces its own.
    #[cfg(target_env = "musl")]
    core::arch::global_asm!(
        ".globl memcpy",
        ".type memcpy, @function",
        ".set memcpy, edge_memcpy",
        ".globl __memcpy_fwd",
        ".hidden __memcpy_fwd",
        ".type __memcpy_fwd, @function",
        ".set __memcpy_fwd, edge_memcpy",
    );

    unsafe extern "C" {
        pub fn edge_memcpy(dst: *mut u8, src: *const u8, len: usize) -> *mut u8;
    }
}

/// Copies `src` to the start of `dst` with this crate's `memcpy`, returning how many bytes
/// it copied: `src.len()`. The safe way in, for the tests.
///
/// # Panics
/// If `dst` is shorter than `src`.
#[cfg(target_arch = "x86_64")]
pub fn copy(dst: &mut [u8], src: &[u8]) -> usize {
    assert!(
        dst.len() >= src.len(),
        "destination shorter than the source"
    );
    // SAFETY: both ranges are valid for `src.len()` bytes, and a `&mut` and a `&` never
    // overlap.
    #[allow(unsafe_code)]
    unsafe {
        asm::edge_memcpy(dst.as_mut_ptr(), src.as_ptr(), src.len());
    }
    src.len()
}

/// Copies `len` bytes of `buf` from `from` down to `to` (`to` <= `from`; the two ranges may
/// overlap), as musl's `memmove` asks `__memcpy_fwd` to.
///
/// # Panics
/// If `to` > `from` or a range leaves `buf`.
#[cfg(target_arch = "x86_64")]
pub fn copy_down(buf: &mut [u8], from: usize, to: usize, len: usize) {
    assert!(to <= from, "not a copy downwards");
    assert!(
        from.checked_add(len).is_some_and(|end| end <= buf.len()),
        "range leaves the buffer"
    );
    let base = buf.as_mut_ptr();
    // SAFETY: both ranges lie in `buf` (checked above), and the copy reads each block before
    // it writes over it, going forwards, so a destination below an overlapping source is
    // copied correctly (see the module docs).
    #[allow(unsafe_code)]
    unsafe {
        asm::edge_memcpy(base.add(to), base.add(from), len);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// A recognisable byte for each position, never zero.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    /// Every length up to 4200 (past each size class and the `rep movsb` threshold), at
    /// every source and destination misalignment up to 16: the bytes land, and not one byte
    /// around them changes.
    #[test]
    fn copies_every_length_at_every_alignment_and_nothing_else() {
        let lengths = (0..=300)
            .chain((301..=4200).step_by(7))
            .chain([2047, 2048, 2049]);
        for len in lengths {
            for src_off in [0, 1, 3, 8, 15] {
                for dst_off in [0, 1, 7, 9, 16] {
                    let src = pattern(src_off + len + 16, 5);
                    let mut dst = vec![0u8; dst_off + len + 32];
                    let copied = copy(&mut dst[dst_off..], &src[src_off..src_off + len]);
                    assert_eq!(copied, len);
                    assert_eq!(
                        &dst[dst_off..dst_off + len],
                        &src[src_off..src_off + len],
                        "len {len}, src +{src_off}, dst +{dst_off}"
                    );
                    assert!(
                        dst[..dst_off].iter().all(|&b| b == 0),
                        "wrote before: len {len}"
                    );
                    assert!(
                        dst[dst_off + len..].iter().all(|&b| b == 0),
                        "wrote after: len {len}"
                    );
                }
            }
        }
    }

    /// What musl's `memmove` relies on: a copy to a lower address that overlaps its source,
    /// by any distance, comes out as if copied through a buffer.
    #[test]
    fn copies_downwards_over_its_own_source() {
        let lengths = (0..=200).chain([255, 256, 257, 1000, 2047, 2048, 2049, 5000]);
        for len in lengths {
            for distance in [1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100] {
                let mut buf = pattern(len + distance + 8, 9);
                let want = buf[distance..distance + len].to_vec();
                let after = buf[len..].to_vec();
                copy_down(&mut buf, distance, 0, len);
                assert_eq!(&buf[..len], &want[..], "len {len}, distance {distance}");
                // What lies past the destination and was not part of it is the source's
                // tail, untouched.
                assert_eq!(&buf[len..], &after[..], "len {len}, distance {distance}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "destination shorter")]
    fn refuses_a_short_destination() {
        copy(&mut [0u8; 3], &[1, 2, 3, 4]);
    }

    #[test]
    #[should_panic(expected = "range leaves the buffer")]
    fn refuses_a_range_outside_the_buffer() {
        copy_down(&mut [0u8; 8], 4, 0, 5);
    }
}
