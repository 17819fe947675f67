//! The namespace conformance suite of a raw-WASI guest: a component in the
//! text format, no Rhai and no standard library, that calls
//! `wasi:filesystem` itself (open-at with create, truncate and directory,
//! write and read at offsets, stat and stat-at, set-size, read-directory,
//! create-directory-at, remove-directory-at, unlink-file-at, rename-at over
//! an existing file, NUL and `..` refused) and answers `ok`, or the number
//! of the first check that failed. It runs as bob, through the checked
//! filesystem, on every backend.

#[cfg(test)]
mod tests {
    use crate::deployment::Deployment;
    use crate::runtime::{Allocation, Runtime};
    use crate::worker::Worker;
    use crate::{Invocation, InvocationRequest};
    use std::sync::Arc;

    /// The component but its end ([`crate::runtime::RAW_INVOCATION_EXPORT`],
    /// then `)`): world `peer`'s `invocation` export, whose `invoke` runs
    /// the checks.
    const GUEST: &str = r#"(component
      (type $types-t (instance
        (export "descriptor" (type $descriptor (sub resource)))
        (export "directory-entry-stream" (type $stream (sub resource)))
        (type $ec (enum "access" "would-block" "already" "bad-descriptor" "busy" "deadlock"
          "quota" "exist" "file-too-large" "illegal-byte-sequence" "in-progress" "interrupted"
          "invalid" "io" "is-directory" "loop" "too-many-links" "message-size" "name-too-long"
          "no-device" "no-entry" "no-lock" "insufficient-memory" "insufficient-space"
          "not-directory" "not-empty" "not-recoverable" "unsupported" "no-tty" "no-such-device"
          "overflow" "not-permitted" "pipe" "read-only" "invalid-seek" "text-file-busy"
          "cross-device"))
        (export "error-code" (type $error-code (eq $ec)))
        (type $pf (flags "symlink-follow"))
        (export "path-flags" (type $path-flags (eq $pf)))
        (type $of (flags "create" "directory" "exclusive" "truncate"))
        (export "open-flags" (type $open-flags (eq $of)))
        (type $df (flags "read" "write" "file-integrity-sync" "data-integrity-sync"
          "requested-write-sync" "mutate-directory"))
        (export "descriptor-flags" (type $descriptor-flags (eq $df)))
        (type $dt (enum "unknown" "block-device" "character-device" "directory" "fifo"
          "symbolic-link" "regular-file" "socket"))
        (export "descriptor-type" (type $descriptor-type (eq $dt)))
        (type $dt-r (record (field "seconds" u64) (field "nanoseconds" u32)))
        (export "datetime" (type $datetime (eq $dt-r)))
        (type $stat-r (record (field "type" $descriptor-type) (field "link-count" u64)
          (field "size" u64) (field "data-access-timestamp" (option $datetime))
          (field "data-modification-timestamp" (option $datetime))
          (field "status-change-timestamp" (option $datetime))))
        (export "descriptor-stat" (type $stat (eq $stat-r)))
        (type $entry-r (record (field "type" $descriptor-type) (field "name" string)))
        (export "directory-entry" (type $entry (eq $entry-r)))
        (export "[method]descriptor.open-at" (func (param "self" (borrow $descriptor))
          (param "path-flags" $path-flags) (param "path" string) (param "open-flags" $open-flags)
          (param "flags" $descriptor-flags) (result (result (own $descriptor) (error $error-code)))))
        (export "[method]descriptor.write" (func (param "self" (borrow $descriptor))
          (param "buffer" (list u8)) (param "offset" u64) (result (result u64 (error $error-code)))))
        (export "[method]descriptor.read" (func (param "self" (borrow $descriptor))
          (param "length" u64) (param "offset" u64)
          (result (result (tuple (list u8) bool) (error $error-code)))))
        (export "[method]descriptor.stat" (func (param "self" (borrow $descriptor))
          (result (result $stat (error $error-code)))))
        (export "[method]descriptor.stat-at" (func (param "self" (borrow $descriptor))
          (param "path-flags" $path-flags) (param "path" string)
          (result (result $stat (error $error-code)))))
        (export "[method]descriptor.set-size" (func (param "self" (borrow $descriptor))
          (param "size" u64) (result (result (error $error-code)))))
        (export "[method]descriptor.create-directory-at" (func (param "self" (borrow $descriptor))
          (param "path" string) (result (result (error $error-code)))))
        (export "[method]descriptor.remove-directory-at" (func (param "self" (borrow $descriptor))
          (param "path" string) (result (result (error $error-code)))))
        (export "[method]descriptor.unlink-file-at" (func (param "self" (borrow $descriptor))
          (param "path" string) (result (result (error $error-code)))))
        (export "[method]descriptor.rename-at" (func (param "self" (borrow $descriptor))
          (param "old-path" string) (param "new-descriptor" (borrow $descriptor))
          (param "new-path" string) (result (result (error $error-code)))))
        (export "[method]descriptor.read-directory" (func (param "self" (borrow $descriptor))
          (result (result (own $stream) (error $error-code)))))
        (export "[method]directory-entry-stream.read-directory-entry" (func
          (param "self" (borrow $stream)) (result (result (option $entry) (error $error-code)))))
      ))
      (import "wasi:filesystem/types@0.2.0" (instance $types (type $types-t)))
      (alias export $types "descriptor" (type $descriptor))
      (type $preopens-t (instance
        (alias outer 1 $descriptor (type $d))
        (export "descriptor" (type $dd (eq $d)))
        (export "get-directories" (func (result (list (tuple (own $dd) string)))))))
      (import "wasi:filesystem/preopens@0.2.0" (instance $preopens (type $preopens-t)))

      (core module $Libc
        (memory (export "memory") 2)
        (global $heap (mut i32) (i32.const 65536))
        (func (export "realloc") (param i32 i32 i32 i32) (result i32)
          (local $p i32)
          (local.set $p (i32.and
            (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
            (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
          (global.set $heap (i32.add (local.get $p) (local.get 3)))
          (block $room (loop $grow
            (br_if $room (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
            (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
            (br $grow)))
          (local.get $p)))
      (core instance $libc (instantiate $Libc))
      (alias core export $libc "memory" (core memory $mem))
      (alias core export $libc "realloc" (core func $realloc))
      (core func $get-directories (canon lower (func $preopens "get-directories")
        (memory $mem) (realloc $realloc)))
      (core func $open-at (canon lower (func $types "[method]descriptor.open-at") (memory $mem)))
      (core func $write (canon lower (func $types "[method]descriptor.write") (memory $mem)))
      (core func $read (canon lower (func $types "[method]descriptor.read")
        (memory $mem) (realloc $realloc)))
      (core func $stat (canon lower (func $types "[method]descriptor.stat") (memory $mem)))
      (core func $stat-at (canon lower (func $types "[method]descriptor.stat-at") (memory $mem)))
      (core func $set-size (canon lower (func $types "[method]descriptor.set-size") (memory $mem)))
      (core func $mkdir (canon lower (func $types "[method]descriptor.create-directory-at")
        (memory $mem)))
      (core func $rmdir (canon lower (func $types "[method]descriptor.remove-directory-at")
        (memory $mem)))
      (core func $unlink (canon lower (func $types "[method]descriptor.unlink-file-at")
        (memory $mem)))
      (core func $rename (canon lower (func $types "[method]descriptor.rename-at") (memory $mem)))
      (core func $read-directory (canon lower (func $types "[method]descriptor.read-directory")
        (memory $mem)))
      (core func $next-entry (canon lower
        (func $types "[method]directory-entry-stream.read-directory-entry")
        (memory $mem) (realloc $realloc)))

      (core module $Main
        (import "libc" "memory" (memory 1))
        (import "fs" "get-directories" (func $get-directories (param i32)))
        (import "fs" "open-at" (func $open-at (param i32 i32 i32 i32 i32 i32 i32)))
        (import "fs" "write" (func $write (param i32 i32 i32 i64 i32)))
        (import "fs" "read" (func $read (param i32 i64 i64 i32)))
        (import "fs" "stat" (func $stat (param i32 i32)))
        (import "fs" "stat-at" (func $stat-at (param i32 i32 i32 i32 i32)))
        (import "fs" "set-size" (func $set-size (param i32 i64 i32)))
        (import "fs" "mkdir" (func $mkdir (param i32 i32 i32 i32)))
        (import "fs" "rmdir" (func $rmdir (param i32 i32 i32 i32)))
        (import "fs" "unlink" (func $unlink (param i32 i32 i32 i32)))
        (import "fs" "rename" (func $rename (param i32 i32 i32 i32 i32 i32 i32)))
        (import "fs" "read-directory" (func $read-directory (param i32 i32)))
        (import "fs" "next-entry" (func $next-entry (param i32 i32)))

        ;; Strings, at fixed places.
        (data (i32.const 2000) "raw.txt")            ;; 7
        (data (i32.const 2010) "hello world")        ;; 11
        (data (i32.const 2030) "HELLO")              ;; 5
        (data (i32.const 2040) "!")                  ;; 1
        (data (i32.const 2050) "HELLO world!")       ;; 12
        (data (i32.const 2070) "wor")                ;; 3
        (data (i32.const 2080) "rawdir")             ;; 6
        (data (i32.const 2090) "rawdir/sub")         ;; 10
        (data (i32.const 2110) "rawdir/sub/f.txt")   ;; 16
        (data (i32.const 2130) "deep")               ;; 4
        (data (i32.const 2140) "b.txt")              ;; 5
        (data (i32.const 2150) "bee")                ;; 3
        (data (i32.const 2160) "a\00b")              ;; 3
        (data (i32.const 2170) "../x")               ;; 4
        (data (i32.const 2180) "f.txt")              ;; 5
        (data (i32.const 2190) "\"ok\"")             ;; 4: the answer is JSON
        (data (i32.const 2200) "\"check 00\"")       ;; 10: the digits at 2207

        (global $step (mut i32) (i32.const 0))
        (global $failed (mut i32) (i32.const 0))

        ;; The next check: remembered when it is the first to fail.
        (func $check (param $ok i32)
          (global.set $step (i32.add (global.get $step) (i32.const 1)))
          (if (i32.and (i32.eqz (local.get $ok)) (i32.eqz (global.get $failed)))
            (then (global.set $failed (global.get $step)))))
        ;; The last call's result (at 512) is ok.
        (func $ok (result i32) (i32.eqz (i32.load8_u (i32.const 512))))
        ;; It is the error `code`, the code `at` bytes into the result.
        (func $err (param $code i32) (param $at i32) (result i32)
          (i32.and (i32.eq (i32.load8_u (i32.const 512)) (i32.const 1))
            (i32.eq (i32.load8_u (i32.add (i32.const 512) (local.get $at))) (local.get $code))))
        ;; `n` bytes at `a` and `b` are the same.
        (func $same (param $a i32) (param $b i32) (param $n i32) (result i32)
          (block $differ (loop $next
            (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
            (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
            (local.set $a (i32.add (local.get $a) (i32.const 1)))
            (local.set $b (i32.add (local.get $b) (i32.const 1)))
            (local.set $n (i32.sub (local.get $n) (i32.const 1)))
            (br $next)))
          (i32.const 0))
        ;; The last read gave `n` bytes equal to those at `want`.
        (func $read-is (param $want i32) (param $n i32) (result i32)
          (i32.and (call $ok)
            (i32.and (i32.eq (i32.load (i32.const 520)) (local.get $n))
              (call $same (i32.load (i32.const 516)) (local.get $want) (local.get $n)))))
        ;; Opens `path` under `dir`.
        (func $open (param $dir i32) (param $path i32) (param $len i32) (param $oflags i32)
          (param $flags i32) (result i32)
          (call $open-at (local.get $dir) (i32.const 0) (local.get $path) (local.get $len)
            (local.get $oflags) (local.get $flags) (i32.const 512))
          (i32.load (i32.const 516)))

        (func (export "prepare") (param i32 i32 i64) (result i32) (i32.const 300))

        (func (export "invoke") (param i32 i32 i32 i32 i32) (result i32)
          (local $root i32) (local $i i32) (local $entry i32) (local $fd i32) (local $stream i32)
          ;; 1: the preopen "/".
          (local.set $root (i32.const -1))
          (call $get-directories (i32.const 600))
          (block $found (loop $each
            (br_if $found (i32.ge_u (local.get $i) (i32.load (i32.const 604))))
            (local.set $entry (i32.add (i32.load (i32.const 600)) (i32.mul (local.get $i) (i32.const 12))))
            (if (i32.and (i32.eq (i32.load offset=8 (local.get $entry)) (i32.const 1))
                         (i32.eq (i32.load8_u (i32.load offset=4 (local.get $entry))) (i32.const 47)))
              (then (local.set $root (i32.load (local.get $entry)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $each)))
          (call $check (i32.ne (local.get $root) (i32.const -1)))
          ;; 2-8: create (truncating), write, overwrite, append, read at offsets.
          (local.set $fd (call $open (local.get $root) (i32.const 2000) (i32.const 7) (i32.const 9) (i32.const 3)))
          (call $check (call $ok))
          (call $write (local.get $fd) (i32.const 2010) (i32.const 11) (i64.const 0) (i32.const 512))
          (call $check (i32.and (call $ok) (i64.eq (i64.load (i32.const 520)) (i64.const 11))))
          (call $write (local.get $fd) (i32.const 2030) (i32.const 5) (i64.const 0) (i32.const 512))
          (call $check (call $ok))
          (call $write (local.get $fd) (i32.const 2040) (i32.const 1) (i64.const 11) (i32.const 512))
          (call $check (call $ok))
          (call $read (local.get $fd) (i64.const 100) (i64.const 0) (i32.const 512))
          (call $check (call $read-is (i32.const 2050) (i32.const 12)))
          (call $read (local.get $fd) (i64.const 3) (i64.const 6) (i32.const 512))
          (call $check (call $read-is (i32.const 2070) (i32.const 3)))
          (call $read (local.get $fd) (i64.const 3) (i64.const 500) (i32.const 512))
          (call $check (i32.and (call $read-is (i32.const 2070) (i32.const 0))
            (i32.eq (i32.load8_u (i32.const 524)) (i32.const 1))))
          ;; 9-11: stat sizes and kinds; set-size.
          (call $stat (local.get $fd) (i32.const 512))
          (call $check (i32.and (call $ok) (i32.and
            (i32.eq (i32.load8_u (i32.const 520)) (i32.const 6))
            (i64.eq (i64.load (i32.const 536)) (i64.const 12)))))
          (call $set-size (local.get $fd) (i64.const 2) (i32.const 512))
          (call $check (call $ok))
          (call $stat (local.get $fd) (i32.const 512))
          (call $check (i32.and (call $ok) (i64.eq (i64.load (i32.const 536)) (i64.const 2))))
          ;; 12-14: nested directories; an existing one is `exist`.
          (call $mkdir (local.get $root) (i32.const 2080) (i32.const 6) (i32.const 512))
          (call $check (call $ok))
          (call $mkdir (local.get $root) (i32.const 2090) (i32.const 10) (i32.const 512))
          (call $check (call $ok))
          (call $mkdir (local.get $root) (i32.const 2080) (i32.const 6) (i32.const 512))
          (call $check (call $err (i32.const 7) (i32.const 1)))
          ;; 15-17: a file deep down; stat-at a directory.
          (local.set $fd (call $open (local.get $root) (i32.const 2110) (i32.const 16) (i32.const 1) (i32.const 3)))
          (call $check (call $ok))
          (call $write (local.get $fd) (i32.const 2130) (i32.const 4) (i64.const 0) (i32.const 512))
          (call $check (call $ok))
          (call $stat-at (local.get $root) (i32.const 0) (i32.const 2090) (i32.const 10) (i32.const 512))
          (call $check (i32.and (call $ok) (i32.eq (i32.load8_u (i32.const 520)) (i32.const 3))))
          ;; 18-21: list a directory opened as one.
          (local.set $fd (call $open (local.get $root) (i32.const 2090) (i32.const 10) (i32.const 2) (i32.const 1)))
          (call $check (call $ok))
          (call $read-directory (local.get $fd) (i32.const 512))
          (call $check (call $ok))
          (local.set $stream (i32.load (i32.const 516)))
          (call $next-entry (local.get $stream) (i32.const 512))
          (call $check (i32.and (call $ok) (i32.and
            (i32.and (i32.eq (i32.load8_u (i32.const 516)) (i32.const 1))
                     (i32.eq (i32.load8_u (i32.const 520)) (i32.const 6)))
            (i32.and (i32.eq (i32.load (i32.const 528)) (i32.const 5))
                     (call $same (i32.load (i32.const 524)) (i32.const 2180) (i32.const 5))))))
          (call $next-entry (local.get $stream) (i32.const 512))
          (call $check (i32.and (call $ok) (i32.eqz (i32.load8_u (i32.const 516)))))
          ;; 22-23: a directory with entries is not removed, nor unlinked.
          (call $rmdir (local.get $root) (i32.const 2080) (i32.const 6) (i32.const 512))
          (call $check (call $err (i32.const 25) (i32.const 1)))
          (call $unlink (local.get $root) (i32.const 2080) (i32.const 6) (i32.const 512))
          (call $check (i32.eq (i32.load8_u (i32.const 512)) (i32.const 1)))
          ;; 24-29: rename over an existing file.
          (local.set $fd (call $open (local.get $root) (i32.const 2140) (i32.const 5) (i32.const 9) (i32.const 3)))
          (call $check (call $ok))
          (call $write (local.get $fd) (i32.const 2150) (i32.const 3) (i64.const 0) (i32.const 512))
          (call $check (call $ok))
          (call $rename (local.get $root) (i32.const 2140) (i32.const 5) (local.get $root)
            (i32.const 2000) (i32.const 7) (i32.const 512))
          (call $check (call $ok))
          (local.set $fd (call $open (local.get $root) (i32.const 2000) (i32.const 7) (i32.const 0) (i32.const 1)))
          (call $check (call $ok))
          (call $read (local.get $fd) (i64.const 100) (i64.const 0) (i32.const 512))
          (call $check (call $read-is (i32.const 2150) (i32.const 3)))
          (call $stat-at (local.get $root) (i32.const 0) (i32.const 2140) (i32.const 5) (i32.const 512))
          (call $check (call $err (i32.const 20) (i32.const 8)))
          ;; 30-31: NUL and `..` are refused.
          (drop (call $open (local.get $root) (i32.const 2160) (i32.const 3) (i32.const 1) (i32.const 3)))
          (call $check (i32.eq (i32.load8_u (i32.const 512)) (i32.const 1)))
          (drop (call $open (local.get $root) (i32.const 2170) (i32.const 4) (i32.const 1) (i32.const 3)))
          (call $check (i32.eq (i32.load8_u (i32.const 512)) (i32.const 1)))
          ;; 32-36: everything removed again.
          (call $unlink (local.get $root) (i32.const 2110) (i32.const 16) (i32.const 512))
          (call $check (call $ok))
          (call $rmdir (local.get $root) (i32.const 2090) (i32.const 10) (i32.const 512))
          (call $check (call $ok))
          (call $rmdir (local.get $root) (i32.const 2080) (i32.const 6) (i32.const 512))
          (call $check (call $ok))
          (call $unlink (local.get $root) (i32.const 2000) (i32.const 7) (i32.const 512))
          (call $check (call $ok))
          (call $stat-at (local.get $root) (i32.const 0) (i32.const 2080) (i32.const 6) (i32.const 512))
          (call $check (call $err (i32.const 20) (i32.const 8)))
          ;; The answer at 256: ok("\"ok\""), or ok("\"check NN\"").
          (i32.store8 (i32.const 256) (i32.const 0))
          (if (i32.eqz (global.get $failed))
            (then
              (i32.store (i32.const 260) (i32.const 2190))
              (i32.store (i32.const 264) (i32.const 4)))
            (else
              (i32.store8 (i32.const 2207)
                (i32.add (i32.const 48) (i32.div_u (global.get $failed) (i32.const 10))))
              (i32.store8 (i32.const 2208)
                (i32.add (i32.const 48) (i32.rem_u (global.get $failed) (i32.const 10))))
              (i32.store (i32.const 260) (i32.const 2200))
              (i32.store (i32.const 264) (i32.const 10))))
          (i32.const 256)))
      (core instance $main (instantiate $Main
        (with "libc" (instance $libc))
        (with "fs" (instance
          (export "get-directories" (func $get-directories))
          (export "open-at" (func $open-at))
          (export "write" (func $write))
          (export "read" (func $read))
          (export "stat" (func $stat))
          (export "stat-at" (func $stat-at))
          (export "set-size" (func $set-size))
          (export "mkdir" (func $mkdir))
          (export "rmdir" (func $rmdir))
          (export "unlink" (func $unlink))
          (export "rename" (func $rename))
          (export "read-directory" (func $read-directory))
          (export "next-entry" (func $next-entry))))))

    "#;

    /// Runs the component as bob, his namespace on `fs`: its answer.
    fn run_as_bob(fs: &str, moto: Option<&crate::moto::Moto>) -> Result<String, String> {
        let text = format!("{GUEST}{})", crate::runtime::RAW_INVOCATION_EXPORT);
        let wasm = wat::parse_str(text).map_err(|e| format!("the raw guest: {e}"))?;
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().join("demo");
        crate::scaffold::init(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("peers/bob/peer.toml");
        let mut text = std::fs::read_to_string(&config)
            .map_err(|e| e.to_string())?
            .replace(
                "kv = \"sqlite\"\n",
                &format!("kv = \"sqlite\"\nfs = \"{fs}\"\n"),
            );
        if let Some(moto) = moto {
            std::fs::write(dir.join("peers/bob/s3.toml"), crate::moto::CREDENTIALS)
                .map_err(|e| e.to_string())?;
            text.push_str(&moto.section("raw-wasi/bob"));
        }
        text.push_str("\n[limits]\nwall_time_ms = 30000\n");
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let runtime = Runtime::with_component(&wasm, Allocation::OnDemand)
            .map_err(|e| format!("the raw guest does not load: {e}"))?;
        let worker = Worker::new(
            Deployment::load(&dir, &[]).map_err(|e| e.to_string())?,
            Arc::new(runtime),
            Arc::new(crate::client::Http),
        );
        let bob = worker.deployment.peers["bob"].clone();
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let request = InvocationRequest {
            caller: bob.caller(bob.id),
            invocation: Invocation::Script {
                script: "1".into(),
                params: serde_json::Value::Null,
            },
            depth: 0,
            deadline: None,
            trace: None,
        };
        match tokio.block_on(Worker::run(&worker, &bob, request)) {
            Ok(value) => Ok(value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned)),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    #[test]
    fn a_raw_wasi_guest_sees_the_same_filesystem_on_every_backend() {
        let moto = crate::moto::Moto::start();
        let mut backends = vec![("dir", None), ("sqlite", None)];
        if let Some(moto) = &moto {
            backends.push(("s3", Some(moto)));
        }
        for (fs, moto) in backends {
            assert_eq!(run_as_bob(fs, moto), Ok("ok".to_owned()), "on {fs}");
        }
    }
}
