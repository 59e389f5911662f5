"""A throwaway PKI for e2e tests, made with Debian's openssl CLI in the
test's temp dir (nothing is committed): a CA, a server certificate it
issued for DNS:localhost and IP:127.0.0.1, one for DNS:cp.example.com only,
one that expired in 2020, and an unrelated "wrong" CA with a server
certificate of its own."""

import os
import shutil
import subprocess

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

# The openssl configuration of the throwaway PKI: self-signed CAs, and an
# `openssl ca` database so a certificate can be given dates in the past.
OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = issued
serial = serial
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = none
[any_name]
commonName = supplied
"""

LEAF_EXT = """\
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


class Pki:
    """CAs and server certificates made with the openssl CLI in
    <directory>/pki. Certificates are (cert, key) pairs of paths; keys are
    0600."""

    def __init__(self, directory):
        self.dir = os.path.join(directory, "pki")
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "openssl.cnf"), "w") as f:
            f.write(OPENSSL_CNF)
        self.ca = self._ca("ca", "Latchkey test CA")
        self.wrong_ca = self._ca("wrong-ca", "Unrelated CA")
        san = "DNS:localhost,IP:127.0.0.1"
        self.server = self._leaf("server", "ca", san)
        self.other_name = self._leaf("other-name", "ca", "DNS:cp.example.com")
        self.expired = self._leaf("expired", "ca", san,
                                  dates=("20200101000000Z", "20200102000000Z"))
        self.wrong_server = self._leaf("wrong-server", "wrong-ca", san)

    def path(self, name):
        return os.path.join(self.dir, name)

    def openssl(self, *args):
        out = subprocess.run([OPENSSL] + list(args), cwd=self.dir,
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError("openssl %s failed: %s"
                               % (" ".join(args), out.stderr))
        return out.stdout

    def _ca(self, name, cn):
        """A self-signed CA; returns its certificate's path."""
        os.makedirs(self.path(name + "-db/issued"))
        open(self.path(name + "-db/index.txt"), "w").close()
        with open(self.path(name + "-db/serial"), "w") as f:
            f.write("1000\n")
        self.openssl("req", "-config", "openssl.cnf", "-x509", "-newkey",
                     "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-keyout", name + ".key", "-out", name + ".pem",
                     "-days", "30", "-subj", "/CN=" + cn,
                     "-extensions", "ca_ext")
        os.chmod(self.path(name + ".key"), 0o600)
        return self.path(name + ".pem")

    def _leaf(self, name, ca, san, dates=None):
        """A server certificate for san issued by ca (valid for 30 days
        from now, or between dates); returns (cert, key)."""
        with open(self.path(name + ".ext"), "w") as f:
            f.write(LEAF_EXT.format(san=san))
        self.openssl("req", "-config", "openssl.cnf", "-new", "-newkey", "ec",
                     "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", name + ".key", "-out", name + ".csr",
                     "-subj", "/CN=" + name)
        os.chmod(self.path(name + ".key"), 0o600)
        when = (["-startdate", dates[0], "-enddate", dates[1]] if dates
                else ["-days", "30"])
        # `openssl ca` runs in the CA's database dir, as its config expects.
        db = self.path(ca + "-db")
        out = subprocess.run(
            [OPENSSL, "ca", "-config", self.path("openssl.cnf"), "-batch",
             "-notext", "-cert", self.path(ca + ".pem"),
             "-keyfile", self.path(ca + ".key"), "-in", self.path(name + ".csr"),
             "-out", self.path(name + ".pem"), "-extfile",
             self.path(name + ".ext"), "-extensions", "leaf"] + when,
            cwd=db, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError("openssl ca for %s failed: %s"
                               % (name, out.stderr))
        return self.path(name + ".pem"), self.path(name + ".key")

    def key_body_lines(self, key_path):
        """The base64 lines of a PEM key: none may appear in any log."""
        with open(key_path) as f:
            return [line.strip() for line in f
                    if line.strip() and not line.startswith("-----")]
