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
    depth = len(pkg.split("/")) - 1
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
        includes = ["/".join([".."] * depth)],
        visibility = visibility,
    )
