"""The documented pip build of the Python client works from a clean copy:
without generated modules the import fails saying how to build them;
build_stubs.sh generates them from protos/ with protoc and
grpc_python_plugin; pip installs the package (offline, no build
isolation) and the installed copy imports and talks gRPC types.

    bazel test //clients/python:package_test
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.getcwd()   # the runfiles root (run_test.sh cds there)
PKG = os.path.join(ROOT, "clients", "python")
PY = "/usr/bin/python3"


def copy_sources(dst):
    """The package as a git checkout has it: no latchkey/v1."""
    os.makedirs(os.path.join(dst, "latchkey"))
    for name in ("pyproject.toml", "README.md", "build_stubs.sh"):
        shutil.copy(os.path.join(PKG, name), dst)
    for path in glob.glob(os.path.join(PKG, "latchkey", "*")):
        if os.path.isfile(path):
            shutil.copy(path, os.path.join(dst, "latchkey"))


class PackageTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.src = os.path.join(self.tmp, "src")
        copy_sources(self.src)
        self.protos = os.path.join(self.tmp, "protos")
        os.makedirs(os.path.join(self.protos, "latchkey", "v1"))
        for name in ("toolcalls.proto", "types.proto"):
            shutil.copy(os.path.join(ROOT, "protos", "latchkey", "v1", name),
                        os.path.join(self.protos, "latchkey", "v1"))
        self.env = dict(os.environ, HOME=self.tmp, PIP_NO_CACHE_DIR="1",
                        PIP_DISABLE_PIP_VERSION_CHECK="1",
                        LATCHKEY_PROTOS=self.protos)
        self.env.pop("PYTHONPATH", None)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def python(self, code, path):
        return subprocess.run([PY, "-c", code], cwd=self.tmp,
                              env=dict(self.env, PYTHONPATH=path),
                              capture_output=True, text=True)

    def test_import_without_stubs_says_how_to_build_them(self):
        out = self.python("import latchkey", self.src)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("build_stubs.sh", out.stderr)

    def test_build_stubs_then_pip_install(self):
        out = subprocess.run(["sh", os.path.join(self.src, "build_stubs.sh")],
                             env=self.env, capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        generated = sorted(os.listdir(os.path.join(self.src, "latchkey",
                                                   "v1")))
        self.assertEqual(generated, [
            "__init__.py", "toolcalls_pb2.py", "toolcalls_pb2_grpc.py",
            "types_pb2.py", "types_pb2_grpc.py"])

        site = os.path.join(self.tmp, "site")
        out = subprocess.run(
            [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
             "--no-index", "--target", site, self.src],
            cwd=self.tmp, env=self.env, capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertTrue(os.path.isfile(os.path.join(site, "latchkey",
                                                    "py.typed")))
        out = self.python(
            "import latchkey, latchkey.v1.toolcalls_pb2 as pb\n"
            "print(latchkey.__file__)\n"
            "print(latchkey.__version__)\n"
            "print(pb.ToolCallRequest(budget_id='main').budget_id)\n"
            "print(latchkey.Client('unix:/nowhere').address)\n", site)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(lines[0], os.path.join(site, "latchkey",
                                                "__init__.py"))
        with open(os.path.join(PKG, "pyproject.toml")) as f:
            self.assertIn('version = "%s"' % lines[1], f.read())
        self.assertEqual(lines[2:], ["main", "unix:/nowhere"])

    def test_build_stubs_without_protos_fails_clearly(self):
        env = dict(self.env, LATCHKEY_PROTOS=os.path.join(self.tmp, "none"))
        out = subprocess.run(["sh", os.path.join(self.src, "build_stubs.sh")],
                             env=env, capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertIn("LATCHKEY_PROTOS", out.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.src, "latchkey",
                                                     "v1")))


if __name__ == "__main__":
    sys.exit(unittest.main(verbosity=2))
