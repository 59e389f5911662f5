#!/bin/bash
# run_fuzz.sh TARGET SECONDS - builds one libFuzzer target with clang and
# runs it for SECONDS on a copy of its seed corpus (`./dev fuzz` calls this).
#
# TARGET is a tests/fuzz target with or without its "_fuzz" suffix (args,
# inject, scrub, toolcall_request, admin_request). The build is Bazel's, with
# CC=clang and --config=fuzz, in a separate output base: Bazel's
# local_config_cc reads CC when it is configured, so switching CC in the
# shared output base would reconfigure and rebuild everyone's gcc build.
# --symlink_prefix=/ keeps the workspace's bazel-* links pointing at the gcc
# build. That Bazel server exits after LATCHKEY_FUZZ_IDLE_SECS (600) idle.
#
# The run happens in a scratch directory (in /dev/shm when there is one, so
# the admin target's synced RocksDB writes stay cheap): corpus/ starts as a
# copy of tests/fuzz/corpus/<target>/ and grows, artifacts/ gets crash,
# leak, timeout and OOM inputs. On success the directory is removed (kept
# with LATCHKEY_FUZZ_KEEP=1); on a finding it is kept, the reproducer is
# printed, and the script exits non-zero.
#
# Extra libFuzzer flags can be passed in LATCHKEY_FUZZ_FLAGS (for example
# "-dict=... -max_len=8192").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${ROOT}"

FUZZ_PACKAGES=(clang libclang-rt-14-dev)

usage() {
  echo "usage: ./dev fuzz TARGET SECONDS   (TARGET: $(targets | tr '\n' ' '))" >&2
  exit 2
}

# The targets that have a seed corpus.
targets() {
  find "${ROOT}/tests/fuzz/corpus" -mindepth 1 -maxdepth 1 -type d \
    -printf '%f\n' | sort
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  else
    sudo "$@"
  fi
}

# Installs clang and its libFuzzer runtime when they are missing.
install_fuzz_deps() {
  local missing=() pkg
  for pkg in "${FUZZ_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}\n' "${pkg}" 2>/dev/null |
      grep -q '^install ok installed$'; then
      missing+=("${pkg}")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "fuzz: installing missing Debian packages: ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

[ "$#" -eq 2 ] || usage
name="${1%_fuzz}"
seconds="$2"
[[ "${seconds}" =~ ^[1-9][0-9]*$ ]] || usage
[ -d "${ROOT}/tests/fuzz/corpus/${name}" ] || {
  echo "fuzz: no target '${1}'" >&2
  usage
}

install_fuzz_deps
CLANG="$(command -v clang)"
if [ ! -f "$("${CLANG}" -print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a" ]; then
  echo "fuzz: clang has no libFuzzer runtime (install libclang-rt-dev)" >&2
  exit 1
fi

output_base="${LATCHKEY_FUZZ_OUTPUT_BASE:-${HOME}/.cache/latchkey-fuzz/$(
  printf '%s' "${ROOT}" | md5sum | cut -c1-12)}"
fuzz_bazel() {
  CC="${CLANG}" bazel --output_base="${output_base}" \
    --max_idle_secs="${LATCHKEY_FUZZ_IDLE_SECS:-600}" "$@"
}
label="//tests/fuzz:${name}_fuzz_libfuzzer"
echo "fuzz: building ${label} with ${CLANG} (output base ${output_base})"
# gold warns once per ASan-internal symbol it cannot export; drop that noise.
set +e
fuzz_bazel build --config=fuzz --symlink_prefix=/ "${label}" 2>&1 |
  grep -v "Cannot export local symbol '__asan_"
build_rc="${PIPESTATUS[0]}"
set -e
[ "${build_rc}" -eq 0 ] || {
  echo "fuzz: build failed" >&2
  exit 1
}
bin="$(fuzz_bazel info --config=fuzz bazel-bin 2>/dev/null)/tests/fuzz/${name}_fuzz_libfuzzer"
[ -x "${bin}" ] || {
  echo "fuzz: built binary not found at ${bin}" >&2
  exit 1
}

scratch_root="${TMPDIR:-/tmp}"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch_root=/dev/shm
fi
work="$(mktemp -d "${scratch_root}/latchkey-fuzz-${name}.XXXXXX")"
mkdir -p "${work}/corpus" "${work}/artifacts" "${work}/tmp"
cp -p "${ROOT}/tests/fuzz/corpus/${name}/." "${work}/corpus/" -R
seeds="$(find "${work}/corpus" -type f | wc -l)"

echo "fuzz: running ${name} for ${seconds}s on ${seeds} seeds in ${work}"
set +e
# shellcheck disable=SC2086  # LATCHKEY_FUZZ_FLAGS is a list of flags
TMPDIR="${work}/tmp" \
  ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}" \
  LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=${ROOT}/bazel/lsan.supp}" \
  "${bin}" -max_total_time="${seconds}" -timeout=30 -rss_limit_mb=4096 \
  -print_final_stats=1 -artifact_prefix="${work}/artifacts/" \
  ${LATCHKEY_FUZZ_FLAGS:-} "${work}/corpus"
rc=$?
set -e

found="$(find "${work}/artifacts" -type f | wc -l)"
total="$(find "${work}/corpus" -type f | wc -l)"
if [ "${rc}" -ne 0 ] || [ "${found}" -ne 0 ]; then
  echo "fuzz: ${name} FAILED (exit ${rc}); findings in ${work}/artifacts:"
  find "${work}/artifacts" -type f -printf '  %p\n'
  echo "fuzz: reproduce with ${bin} FILE (or bazel-bin/tests/fuzz/${name}_fuzz FILE);"
  echo "fuzz: once fixed, keep each input as tests/fuzz/corpus/${name}/regress_<what>"
  exit 1
fi
echo "fuzz: ${name} ran ${seconds}s without a finding; corpus ${seeds} -> ${total} inputs"
if [ "${LATCHKEY_FUZZ_KEEP:-0}" = "1" ]; then
  echo "fuzz: kept ${work} (corpus/ holds the grown corpus)"
else
  rm -rf "${work}"
fi
