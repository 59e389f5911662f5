/*
 * fuzz_target.h - the one entry point every tests/fuzz target defines.
 *
 * Why: each parser of untrusted input gets a target that runs in two
 * harnesses from the same source: libFuzzer (the `*_libfuzzer` binaries,
 * built with clang by `./dev fuzz`) and regress_main.c (the `*_fuzz`
 * cc_tests that replay the checked-in corpus under `bazel test`). Both call
 * this function, so a crash found by either is reproducible by the other.
 *
 * Contract for targets: never keep ownership of anything past the call (no
 * leaks under ASan); state created once on first use (a temp store, a
 * scrubber) is allowed and is released at exit; a broken invariant ends
 * the process with __builtin_trap() so both harnesses report it as a crash.
 */
#ifndef LK_FUZZ_TARGET_H
#define LK_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>

/* Runs the target on the size bytes at data (libFuzzer's signature);
 * returns 0, or traps when the code under test breaks an invariant. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
