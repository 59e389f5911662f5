"""Latchkey's Bazel macros: one place for the project's copts, and protoc-c."""

LK_COPTS = [
    "-std=c11",
    "-D_GNU_SOURCE",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wvla",
    "-Wimplicit-fallthrough",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
]

def lk_c_library(name, visibility = None, copts = [], **kwargs):
    """A C library built with the project's strict flags; private unless opened."""
    native.cc_library(
        name = name,
        copts = LK_COPTS + copts,
        visibility = visibility or ["//visibility:private"],
        **kwargs
    )

def lk_c_binary(name, copts = [], linkopts = [], **kwargs):
    """A C program built with the project's strict flags."""
    native.cc_binary(
        name = name,
        copts = LK_COPTS + copts,
        linkopts = linkopts,
        **kwargs
    )

def lk_c_test(name, copts = [], deps = [], **kwargs):
    """A cmocka unit test built with the project's strict flags."""
    native.cc_test(
        name = name,
        copts = LK_COPTS + copts,
        deps = deps + ["//bazel/third_party:cmocka"],
        **kwargs
    )

def lk_proto_c_library(name, srcs, deps = [], visibility = None):
    """Runs protoc-c on srcs and wraps the generated .pb-c.[ch] as a library.

    The generated headers are in hdrs, included as "latchkey/v1/NAME.pb-c.h".
    """
    outs_c = [s[:-len(".proto")] + ".pb-c.c" for s in srcs]
    outs_h = [s[:-len(".proto")] + ".pb-c.h" for s in srcs]
    # Protos import each other as "latchkey/v1/x.proto", rooted at protos/.
    pkg = native.package_name()
    proto_root = pkg.split("/")[0]
    native.genrule(
        name = name + "_gen",
        srcs = srcs,
        outs = outs_c + outs_h,
        cmd = "protoc-c --proto_path=%s --c_out=$(GENDIR)/%s " % (proto_root, proto_root) +
              " ".join(["$(location %s)" % s for s in srcs]),
    )
    native.cc_library(
        name = name,
        srcs = outs_c,
        hdrs = outs_h,
        deps = deps + ["//bazel/third_party:protobuf_c"],
        strip_include_prefix = "/" + proto_root,
        visibility = visibility,
    )

def lk_fuzz_test(name, srcs, deps = [], corpus = None, copts = [], **kwargs):
    """A fuzz target (srcs define LLVMFuzzerTestOneInput) built two ways.

    name: a cc_test that replays every file under corpus (a directory of
    this package) through tests/fuzz/regress_main.c, so the seed corpus
    runs in `bazel test //...` (gcc, --config=asan) and fails on a crash,
    a broken invariant, a leak under ASan, or an empty corpus.

    name + "_libfuzzer": the same target linked with libFuzzer, tagged
    manual; only `./dev fuzz` builds it, with clang and --config=fuzz.
    """
    if not corpus:
        fail("lk_fuzz_test %s: corpus (a directory of seed files) is required" % name)
    kwargs.setdefault("size", "small")
    native.cc_test(
        name = name,
        srcs = srcs + ["//tests/fuzz:regress_main.c"],
        copts = LK_COPTS + copts,
        deps = deps + ["//tests/fuzz:fuzz_target"],
        data = native.glob([corpus + "/**"]) + ["//bazel:lsan.supp"],
        args = [native.package_name() + "/" + corpus],
        **kwargs
    )
    native.cc_binary(
        name = name + "_libfuzzer",
        srcs = srcs,
        copts = LK_COPTS + copts,
        deps = deps + ["//tests/fuzz:fuzz_target"],
        linkopts = ["-fsanitize=fuzzer"],
        tags = ["manual"],
    )
